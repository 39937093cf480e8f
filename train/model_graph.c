/* model_graph: the forward and backward pass of LlamaForCausalLM (Qwen2 biases, Qwen3 q/k
 * norms) over the kernels table, with LoRA adapters inside the targeted Linears.
 *
 * Per decoder layer, T tokens, residual stream x [T,H]:
 *   h  = RMSNorm(x) ;  q, k, v = h Wq^T, h Wk^T, h Wv^T (+ biases, + LoRA)
 *   (qwen3: q, k = RMSNorm per head) ; q, k = RoPE(q, k)
 *   x' = x + o_proj(attention(q, k, v))
 *   out = x' + down(silu(gate(RMSNorm(x'))) * up(RMSNorm(x')))
 * then logits = RMSNorm(x_L) W_vocab^T, W_vocab = lm_head or (tied) embed_tokens.
 *
 * The vocabulary projection and cross-entropy run in chunks of logits_rows rows, fused with
 * their backward, so [T, V] logits never exist at once. Everything the backward needs is
 * kept by the forward in the activation arena (model_reserve), or, with activation
 * checkpointing, recomputed layer by layer from the residual stream; LoRA dropout masks are
 * recomputed from their seed instead of stored. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "peft/lora_math.h"
#include "train/model_internal.h"

/* The adapter of a Linear; in mixed precision its 16-bit side is filled into *half, with
 * ldx the row stride of the 16-bit input copy the caller passes. Fused (model_internal.h):
 * A and scaling * B are read inside the base weight's padded copy. */
static lora_apply adapter_of(const model *m, const model_linear *lin, int layer, int kind, uint64_t seed,
                             int ldx, lora_half *half) {
    const model_state *s = m->state;
    *half = (lora_half){.fmt = model_half_format(m->precision), .a = lin->lora_a->half, .b = lin->lora_b->half,
                        .lda = lin->in, .ldb = m->lora.r, .ldx = ldx, .in = s->half_lora_in, .r = s->half_lora_r};
    if (lin->u_col) {
        const int ld = lin->weight->half_ld;
        half->a = lin->weight->half + (size_t)lin->out * ld;
        half->b = lin->weight->half + lin->u_col;
        half->lda = half->ldb = ld;
        half->b_scaled = true;
    }
    lora_apply la = {
        .k = m->k, .a = lin->lora_a->data, .b = lin->lora_b->data,
        .half = m->precision == MODEL_FP32 ? NULL : half,
        .da = lin->lora_a->grad, .db = lin->lora_b->grad,
        .in = lin->in, .out = lin->out, .r = m->lora.r,
        .scaling = lora_scaling(&m->lora), .dropout = m->lora.dropout,
        .seed = seed, .offset = model_dropout_offset(layer, kind),
    };
    return la;
}

/* C = alpha op(A) op(B) + beta C with A an activation (or its gradient) and B a weight, in
 * the model's precision: fp32 operands, or (mixed) the 16-bit copies ha / the weight's half.
 * The fp32 output and everything around it do not depend on the precision. */
static void weight_gemm(const model *m, bool trans_a, bool trans_b, int M, int N, int K, const float *a,
                        const uint16_t *ha, int lda, const model_param *w, float beta, float *c, int ldc) {
    if (m->precision == MODEL_FP32)
        m->k->gemm(trans_a, trans_b, M, N, K, 1.0f, a, lda, w->data, (int)w->shape[1], beta, c, ldc);
    else
        m->k->gemm_half(model_half_format(m->precision), trans_a, trans_b, M, N, K, 1.0f, ha, lda,
                        w->half, w->half_ld, beta, c, ldc);
}

/* The beta of the next product into a gradient: 0 (overwrite) for its first write after
 * model_zero_grads, whose stale values count as zero (0 + x and x are the same bits, up to
 * the sign of a zero), else 1. */
static float grad_beta(model_param *p) {
    const bool first = p->grad_stale;
    p->grad_stale = false;
    return first ? 0.0f : 1.0f;
}

/* Before a writer that can only add (a scatter, RMSNorm's weight reduction): a stale gradient
 * becomes zeros. p or its gradient may be NULL (frozen). */
static void grad_settle(const model *m, model_param *p) {
    if (!p || !p->grad || !p->grad_stale) return;
    m->k->zero(p->grad, p->numel * sizeof(float));
    p->grad_stale = false;
}

/* dW += dy^T x for a weight of shape [out, in], from [T,out] dy and [T,in] x (or their
 * 16-bit copies in mixed precision, rows ldhy and ldhx apart). */
static void weight_grad_gemm(const model *m, model_param *w, int T, const float *dy,
                             const uint16_t *hdy, int ldhy, const float *x, const uint16_t *hx, int ldhx) {
    const int out = (int)w->shape[0], in = (int)w->shape[1];
    const float beta = grad_beta(w);
    if (m->precision == MODEL_FP32)
        m->k->gemm(true, false, out, in, T, 1.0f, dy, out, x, in, beta, w->grad, in);
    else
        m->k->gemm_half(model_half_format(m->precision), true, false, out, in, T, 1.0f, hdy, ldhy, hx,
                        ldhx, beta, w->grad, in);
}

/* The 16-bit copy of a [rows, cols] activation for the next GEMMs (into buf, rows ld apart:
 * room for the fused adapters' u or du beside it), or NULL in fp32, where the GEMMs read x
 * itself. */
static uint16_t *half_of(const model *m, uint16_t *buf, int ld, const float *x, int rows, int cols) {
    if (m->precision == MODEL_FP32) return NULL;
    if (ld == cols) m->k->to_half(buf, x, (size_t)rows * cols, model_half_format(m->precision));
    else m->k->to_half_2d(model_half_format(m->precision), buf, ld, x, cols, rows, cols, 1.0f);
    return buf;
}

/* The K of a Linear's forward GEMM over hx: its input width, or with a fused adapter the
 * columns through u's, once u is written beside x (lora_fused_u; la and half filled for an
 * adapted Linear). */
static int linear_forward_k(const model *m, int layer, int kind, const float *x, uint16_t *hx, int ldx, int T,
                            bool train, uint64_t seed, lora_apply *la, lora_half *half) {
    const model_linear *lin = &m->layers[layer].lin[kind];
    if (lin->lora_a) *la = adapter_of(m, lin, layer, kind, seed, ldx, half);
    if (!(lin->u_col && hx)) return lin->in;
    /* y = [x | u] [W | scaling B]^T */
    const model_state *s = m->state;
    lora_fused_u(la, s->acts[layer].lora_u[kind], x, hx, hx + lin->u_col, T, train, s->lora_scratch);
    return lin->u_col + m->lora.r;
}

/* Whether a Linear's forward is one 16-bit GEMM (mixed precision: hx given; no bias; its
 * adapter, if any, fused), so that its output can be written as 16-bit values alone. */
static bool linear_one_gemm(const model_linear *lin, const uint16_t *hx) {
    return hx && !lin->bias && !lin->magnitude && (!lin->lora_a || lin->u_col);
}

/* linear_forward where linear_one_gemm holds and the output is read only as a 16-bit GEMM
 * operand: y_half [T,out] = its rounding, written by the GEMM (gemm_half_to_half), the fp32
 * values never stored. */
static void linear_forward_half(const model *m, int layer, int kind, uint16_t *y_half, const float *x, uint16_t *hx,
                                int ldx, int T, bool train, uint64_t seed) {
    const model_linear *lin = &m->layers[layer].lin[kind];
    lora_half half;
    lora_apply la;
    const int K = linear_forward_k(m, layer, kind, x, hx, ldx, T, train, seed, &la, &half);
    m->k->gemm_half_to_half(model_half_format(m->precision), false, true, T, lin->out, K, hx, ldx, lin->weight->half,
                            lin->weight->half_ld, y_half, lin->out);
}

/* A DoRA Linear's forward (lin->magnitude; peft's DoraLinearLayer with use_dora), into y
 * [T,out] before its bias: with c = m / ||W + scaling B A|| per output column (dora_scale,
 * written at the layer's start), z = x W^T + scaling u B^T is kept for the magnitude's
 * gradient and y = c z. Under dropout, peft's form: z = dropout(x) W^T + scaling u B^T and
 * y = x W^T - dropout(x) W^T + c z (its (c - 1) dropout(x) W^T + c scaling u B^T added to the
 * base output). */
static void dora_forward(const model *m, int layer, int kind, float *y, const float *x, uint16_t *hx, int ldx,
                         int T, bool train, uint64_t seed) {
    const kernels *k = m->k;
    const model_state *s = m->state;
    const model_linear *lin = &m->layers[layer].lin[kind];
    float *z = s->acts[layer].dora_z[kind];
    lora_half half;
    lora_apply la = adapter_of(m, lin, layer, kind, seed, ldx, &half);
    const bool dropout = train && m->lora.dropout > 0.0f;
    if (!dropout) {
        weight_gemm(m, false, true, T, lin->out, lin->in, x, hx, hx ? ldx : lin->in, lin->weight, 0.0f, z, lin->out);
        lora_forward(&la, z, s->acts[layer].lora_u[kind], x, hx, T, train, s->lora_scratch);
        k->scale_cols(y, z, lin->dora_scale, 0.0f, T, lin->out, false);
        return;
    }
    weight_gemm(m, false, true, T, lin->out, lin->in, x, hx, hx ? ldx : lin->in, lin->weight, 0.0f, y, lin->out);
    const size_t n_in = (size_t)T * lin->in;
    if (m->precision == MODEL_FP32) {
        k->dropout(s->lora_scratch, x, m->lora.dropout, seed, la.offset, n_in);
        k->gemm(false, true, T, lin->out, lin->in, 1.0f, s->lora_scratch, lin->in, lin->weight->data, lin->in, 0.0f, z,
                lin->out);
    } else {
        const kernels_half_format fmt = model_half_format(m->precision);
        k->dropout_half(fmt, s->half_lora_in, x, m->lora.dropout, seed, la.offset, n_in);
        k->gemm_half(fmt, false, true, T, lin->out, lin->in, 1.0f, s->half_lora_in, lin->in, lin->weight->half,
                     lin->weight->half_ld, 0.0f, z, lin->out);
    }
    k->axpy(y, -1.0f, z, (size_t)T * lin->out);
    lora_forward(&la, z, s->acts[layer].lora_u[kind], x, hx, T, train, s->lora_scratch);
    k->scale_cols(y, z, lin->dora_scale, 0.0f, T, lin->out, true);
}

/* y [T,out] = x W^T (+ b) (+ LoRA) (+ residual [T,out], unless NULL); hx is x's 16-bit copy
 * in mixed precision (rows ldx apart; else NULL). A fused adapter (u_col) writes its u into
 * hx's columns u_col.. Where the output is one 16-bit GEMM (no bias, no separate adapter),
 * the residual joins it in the GEMM's pass (gemm_half_add: the same bits). */
static void linear_forward(const model *m, int layer, int kind, float *y, const float *x, uint16_t *hx,
                           int ldx, int T, bool train, uint64_t seed, const float *residual) {
    const kernels *k = m->k;
    const model_state *s = m->state;
    const model_linear *lin = &m->layers[layer].lin[kind];
    lora_half half;
    lora_apply la;
    const bool fused = lin->u_col && hx;
    if (lin->magnitude) {
        dora_forward(m, layer, kind, y, x, hx, ldx, T, train, seed);
        if (lin->bias)
            k->gemm(false, false, T, lin->out, 1, 1.0f, s->ones, 1, lin->bias->data, lin->out, 1.0f, y, lin->out);
        if (residual) k->add(y, y, residual, (size_t)T * lin->out);
        return;
    }
    const int K = linear_forward_k(m, layer, kind, x, hx, ldx, T, train, seed, &la, &half);
    if (residual && linear_one_gemm(lin, hx)) {
        k->gemm_half_add(model_half_format(m->precision), false, true, T, lin->out, K, hx, ldx, lin->weight->half,
                         lin->weight->half_ld, residual, y, lin->out);
        return;
    }
    weight_gemm(m, false, true, T, lin->out, K, x, hx, hx ? ldx : lin->in, lin->weight, 0.0f, y, lin->out);
    if (lin->bias) /* y += ones[T,1] b[1,out] */
        k->gemm(false, false, T, lin->out, 1, 1.0f, s->ones, 1, lin->bias->data, lin->out, 1.0f, y,
                lin->out);
    if (lin->lora_a && !fused) lora_forward(&la, y, s->acts[layer].lora_u[kind], x, hx, T, train, s->lora_scratch);
    if (residual) k->add(y, y, residual, (size_t)T * lin->out);
}

/* Row stride of the 16-bit dy copy a Linear's backward reads: room for du beside dy when
 * its adapter joins the input-gradient GEMM (concat_dy, model_internal.h). */
static int dy_half_ld(const model *m, const model_linear *lin) {
    return lin->lora_a && lin->concat_dy ? lin->out + m->lora.r : lin->out;
}

/* RMSNorm's backward into the residual stream's gradient s->d_resid (written, or added to),
 * from dout = d loss / d norm output. In mixed precision it also writes d_resid's 16-bit
 * rounding for `next`, the Linear whose backward reads d_resid next (o or down: rows its
 * dy_half_ld apart in the output-gradient scratch, as half_of would), and returns it; else
 * (fp32, or next NULL) NULL. */
static uint16_t *resid_norm_backward(const model *m, const model_linear *next, model_param *norm, const float *dout,
                                     const float *x, const float *rstd, int T, bool add) {
    const kernels *k = m->k;
    model_state *s = m->state;
    const int H = m->cfg.hidden_size;
    grad_settle(m, norm);
    if (m->precision == MODEL_FP32 || !next) {
        k->rmsnorm_bwd(s->d_resid, norm->grad, dout, x, norm->data, rstd, T, H, add);
        return NULL;
    }
    k->rmsnorm_bwd_half(model_half_format(m->precision), s->half_dy, dy_half_ld(m, next), s->d_resid, norm->grad,
                        dout, x, norm->data, rstd, T, H, add);
    return s->half_dy;
}

/* linear_backward of a DoRA Linear (its base frozen: LoRA): from dy (fp32, or only its 16-bit
 * copy hdy, widened here), db += ones^T dy, dm += colsum(dy z) / norm, and with
 * g = c dy the adapter's backward (lora_backward) and dx = g W (+ the adapter's path). Under
 * dropout dx = dy W + mask((c - 1) dy W) + mask(the adapter's du A): peft's form (dora_forward). */
static void dora_backward(const model *m, int layer, int kind, float *dx, float dx_beta, const float *dy,
                          const uint16_t *hdy, const float *x, const uint16_t *hx, int ldx, int T, uint64_t seed) {
    const kernels *k = m->k;
    const model_state *s = m->state;
    const model_linear *lin = &m->layers[layer].lin[kind];
    const size_t n_out = (size_t)T * lin->out;
    if (!dy) { /* only the 16-bit gradient exists (SwiGLU's, RoPE's): its exact fp32 values. Its
                * rows are contiguous: unfused, no room for du beside dy. */
        k->from_half(s->dora_dy, hdy, n_out, model_half_format(m->precision));
        dy = s->dora_dy;
    }
    if (lin->bias && lin->bias->grad)
        k->gemm(true, false, 1, lin->out, T, 1.0f, s->ones, 1, dy, lin->out, grad_beta(lin->bias), lin->bias->grad,
                lin->out);
    if (lin->magnitude->grad) {
        const bool accumulate = grad_beta(lin->magnitude) != 0.0f;
        k->dora_magnitude_grad(lin->magnitude->grad, dy, s->acts[layer].dora_z[kind], lin->dora_norm, T, lin->out,
                               accumulate);
    }
    lora_half half;
    lora_apply la = adapter_of(m, lin, layer, kind, seed, ldx, &half);
    la.overwrite_da = la.da && grad_beta(lin->lora_a) == 0.0f;
    la.overwrite_db = la.db && grad_beta(lin->lora_b) == 0.0f;
    const bool dropout = m->lora.dropout > 0.0f;
    float *g = s->dora_g;
    if (dropout && dx) {
        weight_gemm(m, false, false, T, lin->in, lin->out, dy, half_of(m, s->half_dy, lin->out, dy, T, lin->out),
                    lin->out, lin->weight, dx_beta, dx, lin->in);
        k->scale_cols(g, dy, lin->dora_scale, -1.0f, T, lin->out, false);
        weight_gemm(m, false, false, T, lin->in, lin->out, g, half_of(m, s->half_dy, lin->out, g, T, lin->out),
                    lin->out, lin->weight, 0.0f, s->lora_scratch, lin->in);
        k->dropout_add(dx, s->lora_scratch, m->lora.dropout, seed, la.offset, (size_t)T * lin->in);
    }
    k->scale_cols(g, dy, lin->dora_scale, 0.0f, T, lin->out, false);
    uint16_t *hg = half_of(m, s->half_dy, lin->out, g, T, lin->out);
    if (!dropout && dx) weight_gemm(m, false, false, T, lin->in, lin->out, g, hg, lin->out, lin->weight, dx_beta, dx, lin->in);
    lora_backward(&la, dx, g, hg, x, hx, s->acts[layer].lora_u[kind], T, true, s->lora_du, s->lora_scratch);
}

/* From dy [T,out]: dW += dy^T x, db += ones^T dy (skipped when frozen), adapter grads, and
 * dx = dy W (+ adapter path), written (dx_beta 0) or added (dx_beta 1); dx NULL skips it.
 * Mixed precision: hx is x's 16-bit copy (needed only when the weight trains, or an adapter
 * without dropout reads it: needs_half_input), rows ldx apart; dy's is given as hdy (rows
 * ldhy apart, with room for du when concat_dy) when its producer wrote one, else dy is
 * rounded here. With hdy given, dy is NULL where only the rounding exists (every product, the
 * bias gradient too, reads the 16-bit values, as torch.autocast's bf16 backward does), or the
 * fp32 values the rounding was made from (the residual stream's gradient: what reads dy in
 * fp32 reads it as before). */
static void linear_backward(const model *m, int layer, int kind, float *dx, float dx_beta,
                            const float *dy, uint16_t *hdy, int ldhy, const float *x, const uint16_t *hx, int ldx,
                            int T, uint64_t seed) {
    const kernels *k = m->k;
    const model_state *s = m->state;
    const model_linear *lin = &m->layers[layer].lin[kind];
    if (lin->magnitude) {
        dora_backward(m, layer, kind, dx, dx_beta, dy, hdy, x, hx, ldx, T, seed);
        return;
    }
    /* Fused (concat_dy, mixed precision only): dy's copy has room for du beside it, and
     * dx = [dy | du] [W ; A]. */
    const bool fused = lin->lora_a && lin->concat_dy;
    const int ldy = hdy ? ldhy : dy_half_ld(m, lin);
    if (!hdy && (dx || lin->weight->grad || lin->lora_a)) hdy = half_of(m, s->half_dy, ldy, dy, T, lin->out);
    lora_half half;
    lora_apply la;
    if (lin->lora_a) { /* lora_backward and lora_fused_backward write every non-NULL gradient */
        la = adapter_of(m, lin, layer, kind, seed, ldx, &half);
        la.overwrite_da = la.da && grad_beta(lin->lora_a) == 0.0f;
        la.overwrite_db = la.db && grad_beta(lin->lora_b) == 0.0f;
    }
    if (fused) {
        /* u's rounding sits beside x in the input copy the forward saved (not in a copy
         * rounded again for this backward, which is contiguous: ldx == in) */
        const uint16_t *hu = ldx == s->ld_input[kind] ? hx + lin->u_col : NULL;
        lora_fused_backward(&la, hdy, ldy, hx, s->acts[layer].lora_u[kind], hu, T, dx != NULL, s->lora_du);
    }
    if (dx)
        weight_gemm(m, false, false, T, lin->in, fused ? lin->out + m->lora.r : lin->out, dy, hdy, ldy, lin->weight,
                    dx_beta, dx, lin->in);
    if (lin->weight->grad) weight_grad_gemm(m, lin->weight, T, dy, hdy, ldy, x, hx, ldx);
    if (lin->bias && lin->bias->grad) {
        const float beta = grad_beta(lin->bias);
        if (dy)
            k->gemm(true, false, 1, lin->out, T, 1.0f, s->ones, 1, dy, lin->out, beta, lin->bias->grad, lin->out);
        else
            k->gemm_half(model_half_format(m->precision), true, false, 1, lin->out, T, 1.0f, s->half_ones, 1, hdy,
                         ldy, beta, lin->bias->grad, lin->out);
    }
    if (lin->lora_a && !fused)
        lora_backward(&la, dx, dy, hdy, x, hx, s->acts[layer].lora_u[kind], T, true, s->lora_du, s->lora_scratch);
}

/* RMSNorm whose output feeds Linears: out [rows, dim] (NULL: not kept) and rstd, and in mixed
 * precision the 16-bit copy the GEMMs read (rows ld apart), written by the norm itself into
 * saved (the layer's copy) or else scratch. Returns that copy (NULL in fp32). */
static uint16_t *norm_for_linears(const model *m, uint16_t *saved, int ld, float *out, float *rstd, const float *x,
                                  const float *weight, int rows, int dim, float eps) {
    if (m->precision == MODEL_FP32) {
        m->k->rmsnorm_fwd(out, rstd, x, weight, rows, dim, eps);
        return NULL;
    }
    const model_state *s = m->state;
    uint16_t *h = saved ? saved : s->half_x;
    m->k->rmsnorm_fwd_half(model_half_format(m->precision), h, ld, out, rstd, x, weight, rows, dim, eps);
    return h;
}

/* Layer l's keys (which 0) or values (1) in the KV cache: [capacity, n_kv*head_dim]. */
static void *cache_rows(const model *m, int l, int which) {
    const model_state *s = m->state;
    const struct model_kv_cache *cache = &s->cache;
    const size_t layer_bytes = (size_t)cache->capacity * (size_t)m->cfg.num_key_value_heads *
                               (size_t)m->cfg.head_dim * cache->elem_bytes;
    return (char *)cache->block + (2 * (size_t)l + (size_t)which) * layer_bytes;
}

/* Decoder layer l: reads resid slice l, writes slice l + 1 and the layer's saved activations.
 * With cached (generation: batch 1, no training), the seq new tokens' keys and values go into
 * the KV cache after its cache.len tokens, and attention reads the cache (the first tokens
 * of a sequence, with nothing cached yet, run the plain attention: the same bits). */
static void layer_forward(model *m, int l, int batch, int seq, const int32_t *doc_ids, bool train,
                          uint64_t seed, bool cached) {
    const kernels *k = m->k;
    const model_config *c = &m->cfg;
    model_state *s = m->state;
    const int T = batch * seq, H = c->hidden_size, I = c->intermediate_size;
    const int nh = c->num_attention_heads, nkv = c->num_key_value_heads, d = c->head_dim;
    const float eps = (float)c->rms_norm_eps, scale = (float)(1.0 / sqrt((double)d));
    const model_layer *layer = &m->layers[l];
    layer_acts *a = &s->acts[l];
    float *x = s->resid + (size_t)l * T * H, *out = x + (size_t)T * H;
    const int *ld = s->ld_input;
    /* DoRA's column scales from this step's weights (again in a checkpointed recomputation:
     * the same weights, the same values). Tokens appended to a KV cache keep the ones an
     * earlier append computed (cache.dora_scales_held): the weights are frozen while a cache
     * holds a sequence, and recomputing (W + scaling B A per Linear) cost r times a token's
     * own forward. */
    const bool dora_scales_held = cached && s->cache.dora_scales_held;
    for (int kind = 0; kind < LINEAR_KIND_COUNT && !dora_scales_held; kind++)
        if (layer->lin[kind].magnitude)
            model_dora_norms(m, &layer->lin[kind], s->dora_combined, layer->lin[kind].dora_norm,
                             layer->lin[kind].dora_scale);
    uint16_t *hx = norm_for_linears(m, a->h_norm1, ld[LINEAR_Q], a->x_norm1, a->rstd1, x, layer->input_norm->data,
                                    T, H, eps);
    linear_forward(m, l, LINEAR_Q, c->qk_norm ? a->q_pre : a->q, a->x_norm1, hx, ld[LINEAR_Q], T, train, seed, NULL);
    linear_forward(m, l, LINEAR_K, c->qk_norm ? a->k_pre : a->k, a->x_norm1, hx, ld[LINEAR_K], T, train, seed, NULL);
    /* v is read only as attention's 16-bit operand in mixed precision: written so by its GEMM
     * where that is one (else rounded after it, below). */
    const bool v_half = linear_one_gemm(&layer->lin[LINEAR_V], hx);
    if (v_half)
        linear_forward_half(m, l, LINEAR_V, a->h_v, a->x_norm1, hx, ld[LINEAR_V], T, train, seed);
    else
        linear_forward(m, l, LINEAR_V, a->v, a->x_norm1, hx, ld[LINEAR_V], T, train, seed, NULL);
    if (c->qk_norm) {
        k->rmsnorm_fwd(a->q, a->rstd_q, a->q_pre, layer->q_norm->data, T * nh, d, eps);
        k->rmsnorm_fwd(a->k, a->rstd_k, a->k_pre, layer->k_norm->data, T * nkv, d, eps);
    }
    const int n_past = cached ? s->cache.len : 0;
    const size_t kv_row_bytes = (size_t)nkv * d * s->cache.elem_bytes;
    char *cache_k = cached ? cache_rows(m, l, 0) : NULL, *cache_v = cached ? cache_rows(m, l, 1) : NULL;
    if (m->precision == MODEL_FP32) {
        k->rope_fwd(a->q, s->positions, s->inv_freq, T, nh, d);
        k->rope_fwd(a->k, s->positions, s->inv_freq, T, nkv, d);
        if (cached) {
            k->copy(cache_k + n_past * kv_row_bytes, a->k, T * kv_row_bytes);
            k->copy(cache_v + n_past * kv_row_bytes, a->v, T * kv_row_bytes);
        }
        if (n_past > 0)
            k->attention_cached(a->att, a->q, (const float *)(void *)cache_k, (const float *)(void *)cache_v, T,
                                n_past, nh, nkv, d, scale);
        else
            k->attention_fwd(a->att, a->lse, a->q, a->k, a->v, doc_ids, batch, seq, nh, nkv, d, scale);
    } else { /* 16-bit products as flash attention in bf16/fp16 (tensor cores on a GPU), on q, k,
              * v rounded once (by RoPE itself for q and k) and kept so; the output only in 16
              * bits unless dropout */
        const kernels_half_format fmt = model_half_format(m->precision);
        k->rope_fwd_half(fmt, a->h_q, nh * d, a->q, s->positions, s->inv_freq, T, nh, d);
        k->rope_fwd_half(fmt, a->h_k, nkv * d, a->k, s->positions, s->inv_freq, T, nkv, d);
        if (!v_half) k->to_half(a->h_v, a->v, (size_t)T * nkv * d, fmt);
        if (cached) {
            k->copy(cache_k + n_past * kv_row_bytes, a->h_k, T * kv_row_bytes);
            k->copy(cache_v + n_past * kv_row_bytes, a->h_v, T * kv_row_bytes);
        }
        if (n_past > 0)
            k->attention_cached_half(fmt, a->h_att, ld[LINEAR_O], a->att, a->h_q, (const uint16_t *)(void *)cache_k,
                                     (const uint16_t *)(void *)cache_v, T, n_past, nh, nkv, d, scale);
        else
            k->attention_fwd_half(fmt, a->h_att, ld[LINEAR_O], a->att, a->lse, a->h_q, a->h_k, a->h_v, doc_ids,
                                  batch, seq, nh, nkv, d, scale);
    }
    hx = a->h_att;
    linear_forward(m, l, LINEAR_O, a->x_mid, a->att, hx, ld[LINEAR_O], T, train, seed, x); /* x_mid = x + o(att) */
    hx = norm_for_linears(m, a->h_norm2, ld[LINEAR_GATE], a->x_norm2, a->rstd2, a->x_mid, layer->post_norm->data,
                          T, H, eps);
    /* gate and up are read only as 16-bit values (SwiGLU's both ways): written so by their
     * GEMMs where both are one, else rounded by SwiGLU from fp32 */
    const bool mlp_half = linear_one_gemm(&layer->lin[LINEAR_GATE], hx) && linear_one_gemm(&layer->lin[LINEAR_UP], hx);
    if (mlp_half) {
        linear_forward_half(m, l, LINEAR_GATE, a->h_gate, a->x_norm2, hx, ld[LINEAR_GATE], T, train, seed);
        linear_forward_half(m, l, LINEAR_UP, a->h_up, a->x_norm2, hx, ld[LINEAR_UP], T, train, seed);
    } else {
        linear_forward(m, l, LINEAR_GATE, a->gate, a->x_norm2, hx, ld[LINEAR_GATE], T, train, seed, NULL);
        linear_forward(m, l, LINEAR_UP, a->up, a->x_norm2, hx, ld[LINEAR_UP], T, train, seed, NULL);
    }
    if (m->precision == MODEL_FP32) {
        k->swiglu_fwd(a->act, a->gate, a->up, (size_t)T * I);
    } else { /* gate and up rounded (and kept so) unless already, act's 16-bit copy written with act */
        uint16_t *h_act = a->h_act ? a->h_act : s->half_x;
        k->swiglu_fwd_half(model_half_format(m->precision), h_act, ld[LINEAR_DOWN], a->act, a->h_gate, a->h_up,
                           mlp_half ? NULL : a->gate, mlp_half ? NULL : a->up, T, I);
        hx = h_act;
    }
    linear_forward(m, l, LINEAR_DOWN, out, a->act, hx, ld[LINEAR_DOWN], T, train, seed, a->x_mid);
}

/* Sets *h_final to the final norm's 16-bit copy [T,H] for the vocabulary projection (mixed
 * precision; in scratch that nothing else writes before the logits chunks), else NULL. Fails
 * only where ZeRO 3's gathering of a layer's weights fails. */
static int forward(model *m, int batch, int seq, bool use_doc_ids, bool train, uint64_t seed, bool cached,
                   const uint16_t **h_final, ct_error *err) {
    const model_config *c = &m->cfg;
    model_state *s = m->state;
    const int T = batch * seq, H = c->hidden_size;
    model_refresh_half(m);
    const model_param *embed = &m->params[0];
    if (embed->data)
        m->k->embedding_fwd(s->resid, embed->data, s->ids, T, H);
    else /* a frozen table kept only in 16 bits (model.c: half_only) */
        m->k->embedding_fwd_half(model_half_format(m->precision), s->resid, embed->half, embed->half_ld, s->ids, T, H);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        if (model_layer_weights(m, l, err)) return -1;
        layer_forward(m, l, batch, seq, use_doc_ids ? s->doc_ids : NULL, train, seed, cached);
    }
    const model_param *final_norm = model_find_param(m, "model.norm.weight");
    *h_final = norm_for_linears(m, NULL, H, s->x_norm_final, s->rstd_final,
                                s->resid + (size_t)c->num_hidden_layers * T * H, final_norm->data, T, H,
                                (float)c->rms_norm_eps);
    return 0;
}

/* Whether a base weight of linears first..last (in linear_kind order) trains: only then does
 * the backward need the layer input's 16-bit copy. */
static bool weights_train(const model_layer *layer, int first, int last) {
    for (int kind = first; kind <= last; kind++)
        if (layer->lin[kind].weight->grad) return true;
    return false;
}

/* Mixed precision: whether the backward of Linears [first, last] reads their input's 16-bit
 * copy (a trainable weight's gradient, or an adapter's dA without dropout). */
static bool needs_half_input(const model *m, const model_layer *layer, int first, int last) {
    if (weights_train(layer, first, last)) return true;
    if (m->lora.dropout > 0.0f) return false; /* the adapters round dropout(x) themselves */
    for (int kind = first; kind <= last; kind++)
        if (layer->lin[kind].lora_a && layer->lin[kind].lora_a->grad) return true;
    return false;
}

/* The 16-bit copy of the input x [T, width] of Linears [first, last] for their backward: the
 * one the forward saved (layer_acts.h_norm1, ...; rows s->ld_input apart), else x rounded
 * into scratch (contiguous) when a gradient reads it, else NULL (fp32, or nothing reads it).
 * *ld: its row stride. */
static const uint16_t *backward_input(const model *m, const model_layer *layer, int first, int last,
                                      const uint16_t *saved, const float *x, int T, int width, int *ld) {
    const model_state *s = m->state;
    *ld = saved ? s->ld_input[first] : width;
    if (saved) return saved;
    return needs_half_input(m, layer, first, last) ? half_of(m, s->half_x, width, x, T, width) : NULL;
}

static bool layer_has_trainable(const model *m, int l) {
    const model_layer *layer = &m->layers[l];
    if (layer->input_norm->trainable || layer->post_norm->trainable) return true;
    if (layer->q_norm && (layer->q_norm->trainable || layer->k_norm->trainable)) return true;
    for (int kind = 0; kind < LINEAR_KIND_COUNT; kind++) {
        const model_linear *lin = &layer->lin[kind];
        if (lin->weight->trainable || (lin->bias && lin->bias->trainable) || lin->lora_a) return true;
    }
    return false;
}

/* Mixed precision, q, k and v's 16-bit output gradients produced here (no q/k norm): whether
 * their input gradient can be one GEMM, dx = [dq (du_q) | dk (du_k) | dv (du_v)] [Wq (Aq);
 * Wk (Ak); Wv (Av)], over the three weight copies stacked as they lie in the 16-bit arena
 * (consecutive, one row stride: model.c gives a group sharing an input one) with every
 * adapter inside its base GEMMs (no dropout), and the three dy blocks side by side in the
 * output-gradient scratch (total columns *k_total). One GEMM with K = the sum instead of three
 * (two of them with K = a key/value width, 512 at Llama-3.2-1B, run far from the GPU's peak). */
static bool qkv_stacked(const model *m, const model_layer *layer, int T, int *k_total) {
    const model_linear *q = &layer->lin[LINEAR_Q], *k = &layer->lin[LINEAR_K], *v = &layer->lin[LINEAR_V];
    const model_param *wq = q->weight, *wk = k->weight, *wv = v->weight;
    if (m->precision == MODEL_FP32 || m->cfg.qk_norm) return false;
    for (int i = 0; i < 3; i++) {
        const model_linear *lin = &layer->lin[LINEAR_Q + i];
        if (lin->lora_a && !lin->concat_dy) return false;
    }
    if (wk->half_ld != wq->half_ld || wv->half_ld != wq->half_ld) return false;
    if (wk->half != wq->half + (size_t)wq->half_rows * wq->half_ld ||
        wv->half != wk->half + (size_t)wk->half_rows * wk->half_ld)
        return false;
    const int total = (int)(wq->half_rows + wk->half_rows + wv->half_rows);
    const model_state *s = m->state;
    if ((size_t)T * (size_t)total > s->half_dy_numel) return false; /* model.c sizes it for this */
    *k_total = total;
    return true;
}

/* Whether q, k and v's weight gradients are one matrix as well: all three trained (full
 * fine-tuning), no biases or adapters (nothing else a Linear's backward does), and their
 * gradients consecutive in the gradient arena, as their 16-bit copies are in theirs. */
static bool qkv_weight_grads_stacked(const model_layer *layer) {
    const model_param *w[3];
    for (int i = 0; i < 3; i++) {
        const model_linear *lin = &layer->lin[LINEAR_Q + i];
        if (!lin->weight->grad || lin->bias || lin->lora_a) return false;
        w[i] = lin->weight;
    }
    return w[1]->grad == w[0]->grad + w[0]->numel && w[2]->grad == w[1]->grad + w[1]->numel;
}

/* q, k and v's backward as qkv_stacked allows: dq, dk (RoPE's backward) and dv rounded side by
 * side in the output-gradient scratch, each with room for its du; every Linear's own backward
 * (weight, bias, adapter: du written into its room) without its input gradient, or where the
 * three weight gradients are one matrix, dW_qkv += [dq | dk | dv]^T x in one GEMM; then the
 * input gradient for all three in one GEMM into dh (unless NULL). */
static void qkv_backward_stacked(const model *m, int l, int k_total, const float *dq, const float *dk,
                                 const float *dv, float *dh, const float *x, const uint16_t *hx, int ldx, int T,
                                 uint64_t seed) {
    const kernels *k = m->k;
    const model_state *s = m->state;
    const model_config *c = &m->cfg;
    const model_layer *layer = &m->layers[l];
    const int nh = c->num_attention_heads, nkv = c->num_key_value_heads, d = c->head_dim;
    bool needed = dh != NULL;
    for (int i = 0; i < 3; i++) {
        const model_linear *lin = &layer->lin[LINEAR_Q + i];
        needed |= lin->weight->grad || (lin->bias && lin->bias->grad) || lin->lora_a;
    }
    if (!needed) return;
    const kernels_half_format fmt = model_half_format(m->precision);
    const model_param *wq = layer->lin[LINEAR_Q].weight, *wk = layer->lin[LINEAR_K].weight;
    const int off[3] = {0, (int)wq->half_rows, (int)(wq->half_rows + wk->half_rows)};
    k->rope_bwd_half(fmt, s->half_dy + off[0], k_total, dq, s->positions, s->inv_freq, T, nh, d);
    k->rope_bwd_half(fmt, s->half_dy + off[1], k_total, dk, s->positions, s->inv_freq, T, nkv, d);
    k->to_half_2d(fmt, s->half_dy + off[2], k_total, dv, nkv * d, T, nkv * d, 1.0f);
    if (qkv_weight_grads_stacked(layer)) {
        model_param *w[3] = {layer->lin[LINEAR_Q].weight, layer->lin[LINEAR_K].weight, layer->lin[LINEAR_V].weight};
        float beta = 0.0f; /* one product for three gradients: overwrite only when all are stale */
        if (!w[0]->grad_stale || !w[1]->grad_stale || !w[2]->grad_stale) {
            for (int i = 0; i < 3; i++) grad_settle(m, w[i]);
            beta = 1.0f;
        }
        for (int i = 0; i < 3; i++) w[i]->grad_stale = false;
        k->gemm_half(fmt, true, false, k_total, c->hidden_size, T, 1.0f, s->half_dy, k_total, hx, ldx, beta,
                     w[0]->grad, c->hidden_size);
    } else
        for (int i = 0; i < 3; i++)
            linear_backward(m, l, LINEAR_Q + i, NULL, 0.0f, NULL, s->half_dy + off[i], k_total, x, hx, ldx, T,
                            seed);
    if (dh)
        k->gemm_half(fmt, false, false, T, c->hidden_size, k_total, 1.0f, s->half_dy, k_total, wq->half, wq->half_ld,
                     0.0f, dh, c->hidden_size);
}

/* Layer l's gradients are final: what its backward did not write becomes zeros, and
 * grads_ready takes them (with buckets, before the layer two below reuses the bucket). */
static int layer_grads_done(model *m, int l, ct_error *err) {
    const model_layer *layer = &m->layers[l];
    model_settle_param_grads(m, layer->param_begin, layer->param_end);
    if (!m->grads_ready) return 0;
    return m->grads_ready(m->grads_ready_ctx, m, l, layer->grad_lo, layer->grad_hi, layer->grads, err);
}

/* Backward from s->d_h1 = d loss / d x_norm_final (already scaled by grad_scale). Layers
 * from the top down to *next_done + 1 are done (layer_grads_done) when it returns; the
 * caller finishes the rest, which trains nothing below a frozen bottom. */
static int backward(model *m, int batch, int seq, bool use_doc_ids, uint64_t seed, int *next_done, ct_error *err) {
    const kernels *k = m->k;
    const model_config *c = &m->cfg;
    model_state *s = m->state;
    const int T = batch * seq, H = c->hidden_size, I = c->intermediate_size, L = c->num_hidden_layers;
    const int nh = c->num_attention_heads, nkv = c->num_key_value_heads, d = c->head_dim;
    const float scale = (float)(1.0 / sqrt((double)d));
    const int32_t *doc_ids = use_doc_ids ? s->doc_ids : NULL;
    const size_t TH = (size_t)T * H;
    model_param *embed = &m->params[0];
    model_param *final_norm = model_find_param(m, "model.norm.weight");

    /* The gradient into layer l's input is needed only if something below it trains. */
    int first_trainable = L;
    for (int l = L - 1; l >= 0; l--)
        if (layer_has_trainable(m, l)) first_trainable = l;

    /* d_resid's 16-bit rounding, when the norm that left it wrote one for down's backward */
    const bool top_runs = embed->trainable || first_trainable <= L - 1; /* layer L-1's backward, below */
    uint16_t *h_resid = resid_norm_backward(m, top_runs ? &m->layers[L - 1].lin[LINEAR_DOWN] : NULL, final_norm,
                                            s->d_h1, s->resid + (size_t)L * TH, s->rstd_final, T, false);
    for (int l = L - 1; l >= 0; l--) {
        const model_layer *layer = &m->layers[l];
        const layer_acts *a = &s->acts[l];
        const float *x = s->resid + (size_t)l * TH;
        const bool need_input_grad = embed->trainable || l > first_trainable;
        if (!need_input_grad && l < first_trainable) break;
        if (model_layer_weights(m, l, err)) return -1;
        /* Checkpointed: the shared buffers hold the top layer's activations from the forward;
         * every other layer is recomputed from its saved input, with the same dropout masks. */
        if (m->activation_checkpointing && l < L - 1) layer_forward(m, l, batch, seq, doc_ids, true, seed, false);

        /* MLP: d_resid holds d out; out = x_mid + down(act). */
        float *d_act = s->d_w1, *d_gate = s->d_w2, *d_up = s->d_w3;
        int ldx;
        const uint16_t *hx = backward_input(m, layer, LINEAR_DOWN, LINEAR_DOWN, a->h_act, a->act, T, I, &ldx);
        linear_backward(m, l, LINEAR_DOWN, d_act, 0.0f, s->d_resid, h_resid, dy_half_ld(m, &layer->lin[LINEAR_DOWN]),
                        a->act, hx, ldx, T, seed);
        uint16_t *hd_gate = NULL, *hd_up = NULL;
        if (m->precision == MODEL_FP32) {
            k->swiglu_bwd(d_gate, d_up, d_act, a->gate, a->up, (size_t)T * I);
        } else { /* on the 16-bit gate and up the forward used; gradients only in 16 bits */
            k->swiglu_bwd_half(model_half_format(m->precision), s->half_dgate, s->half_dup, s->ld_mlp_dy, d_act,
                               a->h_gate, a->h_up, T, I);
            hd_gate = s->half_dgate, hd_up = s->half_dup, d_gate = d_up = NULL;
        }
        hx = backward_input(m, layer, LINEAR_GATE, LINEAR_UP, a->h_norm2, a->x_norm2, T, H, &ldx);
        linear_backward(m, l, LINEAR_GATE, s->d_h1, 0.0f, d_gate, hd_gate, s->ld_mlp_dy, a->x_norm2, hx, ldx, T,
                        seed);
        linear_backward(m, l, LINEAR_UP, s->d_h1, 1.0f, d_up, hd_up, s->ld_mlp_dy, a->x_norm2, hx, ldx, T, seed);
        /* the norm's input gradient joins the residual stream's in the same pass */
        h_resid = resid_norm_backward(m, &layer->lin[LINEAR_O], layer->post_norm, s->d_h1, a->x_mid, a->rstd2, T,
                                      true);

        /* Attention: d_resid holds d x_mid; x_mid = x + o(att). */
        float *d_att = s->d_w1, *dq = s->d_w2, *dk = s->d_w3, *dv = s->d_w4;
        hx = backward_input(m, layer, LINEAR_O, LINEAR_O, a->h_att, a->att, T, nh * d, &ldx);
        linear_backward(m, l, LINEAR_O, d_att, 0.0f, s->d_resid, h_resid, dy_half_ld(m, &layer->lin[LINEAR_O]), a->att,
                        hx, ldx, T, seed);
        if (m->precision == MODEL_FP32)
            k->attention_bwd(dq, dk, dv, d_att, a->q, a->k, a->v, a->att, a->lse, doc_ids, batch, seq,
                             nh, nkv, d, scale);
        else
            k->attention_bwd_half(model_half_format(m->precision), dq, dk, dv, d_att, a->h_q, a->h_k, a->h_v,
                                  a->h_att, s->ld_input[LINEAR_O], a->lse, doc_ids, batch, seq, nh, nkv, d, scale);
        const bool need_dh = need_input_grad || layer->input_norm->trainable;
        float *dh = need_dh ? s->d_h1 : NULL;
        const float *q_in = a->x_norm1;
        hx = backward_input(m, layer, LINEAR_Q, LINEAR_V, a->h_norm1, q_in, T, H, &ldx);
        int k_total = 0;
        if (qkv_stacked(m, layer, T, &k_total)) {
            qkv_backward_stacked(m, l, k_total, dq, dk, dv, dh, q_in, hx, ldx, T, seed);
        } else if (m->precision != MODEL_FP32 && !c->qk_norm) {
            /* dq and dk are read only by their projections' GEMMs: RoPE's backward writes their
             * 16-bit roundings (with room for du where the adapter is fused), one at a time
             * into the output-gradient scratch */
            const kernels_half_format fmt = model_half_format(m->precision);
            const struct { int kind, heads; const float *grad; } qk[2] = {{LINEAR_Q, nh, dq}, {LINEAR_K, nkv, dk}};
            for (int i = 0; i < 2; i++) {
                const model_linear *lin = &layer->lin[qk[i].kind];
                const int ldy = dy_half_ld(m, lin);
                if (dh || lin->weight->grad || (lin->bias && lin->bias->grad) || lin->lora_a)
                    k->rope_bwd_half(fmt, s->half_dy, ldy, qk[i].grad, s->positions, s->inv_freq, T, qk[i].heads, d);
                linear_backward(m, l, qk[i].kind, dh, i == 0 ? 0.0f : 1.0f, NULL, s->half_dy, ldy, q_in, hx, ldx, T,
                                seed);
            }
        } else {
            k->rope_bwd(dq, s->positions, s->inv_freq, T, nh, d);
            k->rope_bwd(dk, s->positions, s->inv_freq, T, nkv, d);
            if (c->qk_norm) { /* d_att is free again: it takes d q_pre; dq's buffer takes d k_pre */
                grad_settle(m, layer->q_norm);
                grad_settle(m, layer->k_norm);
                k->rmsnorm_bwd(d_att, layer->q_norm->grad, dq, a->q_pre, layer->q_norm->data, a->rstd_q, T * nh, d,
                               false);
                k->rmsnorm_bwd(dq, layer->k_norm->grad, dk, a->k_pre, layer->k_norm->data, a->rstd_k, T * nkv, d,
                               false);
                dk = dq;
                dq = d_att;
            }
            linear_backward(m, l, LINEAR_Q, dh, 0.0f, dq, NULL, 0, q_in, hx, ldx, T, seed);
            linear_backward(m, l, LINEAR_K, dh, 1.0f, dk, NULL, 0, q_in, hx, ldx, T, seed);
        }
        if (!k_total) linear_backward(m, l, LINEAR_V, dh, 1.0f, dv, NULL, 0, q_in, hx, ldx, T, seed);
        /* into the residual stream's gradient when it goes on (rounded for the layer below's
         * down), else only dweight counts */
        if (need_input_grad) {
            h_resid = resid_norm_backward(m, l > 0 ? &m->layers[l - 1].lin[LINEAR_DOWN] : NULL, layer->input_norm,
                                          s->d_h1, x, a->rstd1, T, true);
        } else if (need_dh) {
            grad_settle(m, layer->input_norm);
            k->rmsnorm_bwd(s->d_h2, layer->input_norm->grad, s->d_h1, x, layer->input_norm->data, a->rstd1, T, H,
                           false);
        }
        if (layer_grads_done(m, l, err)) return -1;
        *next_done = l - 1;
    }
    grad_settle(m, embed);
    if (embed->trainable) k->embedding_bwd(embed->grad, s->d_resid, s->ids, s->id_order, T, H);
    return 0;
}

static int compare_keys(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* The tokens sorted by (id, t), for the embedding backward (kernels.h): keys are unique, so
 * qsort's instability cannot matter. Uses host_positions, free again once uploaded. */
static void upload_id_order(model *m, const int32_t *ids, int T) {
    model_state *s = m->state;
    for (int t = 0; t < T; t++) s->host_id_keys[t] = (uint64_t)(uint32_t)ids[t] << 32 | (uint32_t)t;
    qsort(s->host_id_keys, (size_t)T, sizeof *s->host_id_keys, compare_keys);
    for (int t = 0; t < T; t++) s->host_positions[t] = (int32_t)(s->host_id_keys[t] & 0xffffffffu);
    m->k->upload(s->id_order, s->host_positions, (size_t)T * sizeof(int32_t));
}

/* Host-side checks and upload of one batch's integer inputs. b->positions may be
 * s->host_positions: they are uploaded before that scratch is reused. */
static int upload_batch(model *m, const model_batch *b, ct_error *err) {
    model_state *s = m->state;
    const int T = b->batch * b->seq, V = m->cfg.vocab_size;
    for (int t = 0; t < T; t++) {
        if (b->input_ids[t] < 0 || b->input_ids[t] >= V)
            return ct_fail(err, "model_step: input_ids[%d] = %d is outside the vocabulary [0, %d)", t,
                           b->input_ids[t], V);
        if (b->targets && b->targets[t] >= V)
            return ct_fail(err, "model_step: targets[%d] = %d is outside the vocabulary [0, %d)", t,
                           b->targets[t], V);
        if (b->positions && b->positions[t] < 0)
            return ct_fail(err, "model_step: positions[%d] = %d is negative", t, b->positions[t]);
    }
    const int32_t *positions = b->positions;
    if (!positions) {
        for (int t = 0; t < T; t++) s->host_positions[t] = t % b->seq;
        positions = s->host_positions;
    }
    const size_t bytes = (size_t)T * sizeof(int32_t);
    m->k->upload(s->ids, b->input_ids, bytes);
    m->k->upload(s->positions, positions, bytes);
    if (m->params[0].trainable) upload_id_order(m, b->input_ids, T);
    if (b->doc_ids) m->k->upload(s->doc_ids, b->doc_ids, bytes);
    if (b->targets) {
        m->k->upload(s->targets, b->targets, bytes);
    } else {
        for (int t = 0; t < T; t++) s->host_positions[t] = -1; /* no targets: no loss */
        m->k->upload(s->targets, s->host_positions, bytes);
    }
    return 0;
}

static model_param *vocab_weight(model *m) {
    return m->cfg.tie_word_embeddings ? &m->params[0] : model_find_param(m, "lm_head.weight");
}

/* model_step up to the per-token losses in s->loss (on the backend, not yet fetched). */
static int run_step(model *m, const model_batch *batch, bool backward_pass, float grad_scale,
                    uint64_t dropout_seed, long *n_loss_tokens, ct_error *err) {
    model_state *s = m->state;
    if (!batch || batch->batch <= 0 || batch->seq <= 0 || !batch->input_ids)
        return ct_fail(err, "model_step: empty batch");
    if (!s || !s->float_arena) return ct_fail(err, "model_step: call model_reserve first");
    if (backward_pass && m->grad_buckets && !m->grads_ready)
        return ct_fail(err, "model_step: gradient buckets need a grads_ready callback to take each layer's gradients");
    if ((int64_t)batch->batch * batch->seq > s->reserved_tokens)
        return ct_fail(err, "model_step: batch %d x %d exceeds the %d tokens reserved by model_reserve",
                       batch->batch, batch->seq, s->reserved_tokens);
    if (upload_batch(m, batch, err)) return -1;
    const kernels *k = m->k;
    const int T = batch->batch * batch->seq, H = m->cfg.hidden_size, V = m->cfg.vocab_size;
    const bool use_doc_ids = batch->doc_ids != NULL;
    const uint16_t *h_final;
    if (forward(m, batch->batch, batch->seq, use_doc_ids, backward_pass, dropout_seed, false, &h_final, err))
        return -1;

    /* A zero scale contributes nothing: skip the backward rather than add zeros. */
    const bool do_backward = backward_pass && grad_scale != 0.0f;
    model_param *w = vocab_weight(m);
    long count = 0;
    for (int r0 = 0; r0 < T; r0 += s->logits_rows) {
        const int n = T - r0 < s->logits_rows ? T - r0 : s->logits_rows;
        int valid = 0;
        for (int r = r0; batch->targets && r < r0 + n; r++) valid += batch->targets[r] >= 0;
        count += valid;
        if (valid == 0) { /* nothing to score: zero loss and zero gradient rows */
            k->zero(s->loss + r0, (size_t)n * sizeof(float));
            if (do_backward) k->zero(s->d_h1 + (size_t)r0 * H, (size_t)n * H * sizeof(float));
            continue;
        }
        const float *xn = s->x_norm_final + (size_t)r0 * H;
        const uint16_t *hxn = h_final ? h_final + (size_t)r0 * H : NULL;
        weight_gemm(m, false, true, n, V, H, xn, hxn, H, w, 0.0f, s->logits, V);
        if (!do_backward || !h_final) {
            k->cross_entropy(s->logits, s->loss + r0, s->targets + r0, n, V, do_backward ? grad_scale : 0.0f);
            if (!do_backward) continue;
        } else { /* the logits' gradient only in 16 bits: the GEMMs below are all that read it */
            k->cross_entropy_half(model_half_format(m->precision), s->half_dy, s->logits, s->loss + r0,
                                  s->targets + r0, n, V, grad_scale);
        }
        const uint16_t *hdl = h_final ? s->half_dy : NULL;
        weight_gemm(m, false, false, n, H, V, s->logits, hdl, V, w, 0.0f, s->d_h1 + (size_t)r0 * H, H);
        if (w->grad) weight_grad_gemm(m, w, n, s->logits, hdl, V, xn, hxn, H);
    }
    /* The backward is queued before the losses are fetched: on a GPU the download waits for
     * the device, and waiting here, not between forward and backward, keeps it busy. */
    int next_done = m->cfg.num_hidden_layers - 1;
    if (do_backward && count > 0 && backward(m, batch->batch, batch->seq, use_doc_ids, dropout_seed, &next_done, err))
        return -1;
    /* every layer's callbacks on every rank, whatever its batch held (ZeRO 3's gathering of
     * the layer's weights too, as the backward would have asked for them) */
    for (; backward_pass && next_done >= 0; next_done--)
        if (model_layer_weights(m, next_done, err) || layer_grads_done(m, next_done, err)) return -1;
    model_settle_grads(m); /* what the backward did not write: zeros, as if zeroed eagerly */
    if (n_loss_tokens) *n_loss_tokens = count;
    return 0;
}

/* The loss sum of n per-token losses: one double sum in token order, whichever way they
 * were fetched. */
static double sum_losses(const float *loss, int n) {
    double sum = 0.0;
    for (int t = 0; t < n; t++) sum += loss[t];
    return sum;
}

int model_step(model *m, const model_batch *batch, bool backward_pass, float grad_scale,
               uint64_t dropout_seed, double *loss_sum, long *n_loss_tokens, ct_error *err) {
    if (run_step(m, batch, backward_pass, grad_scale, dropout_seed, n_loss_tokens, err)) return -1;
    model_state *s = m->state;
    const int T = batch->batch * batch->seq;
    m->k->download(s->host_loss, s->loss, (size_t)T * sizeof(float));
    if (loss_sum) *loss_sum = sum_losses(s->host_loss, T);
    return 0;
}

int model_step_queued(model *m, const model_batch *batch, float grad_scale, uint64_t dropout_seed, int slot,
                      long *n_loss_tokens, ct_error *err) {
    model_state *s = m->state;
    if (!s || slot < 0 || slot >= s->slots.n)
        return ct_fail(err, "model_step_queued: slot %d outside the %d reserved by model_reserve_loss_slots", slot,
                       s ? s->slots.n : 0);
    if (batch && (int64_t)batch->batch * batch->seq > s->slots.stride)
        return ct_fail(err, "model_step_queued: batch %d x %d exceeds a loss slot's %d tokens", batch->batch,
                       batch->seq, s->slots.stride);
    if (run_step(m, batch, true, grad_scale, dropout_seed, n_loss_tokens, err)) return -1;
    const int T = batch->batch * batch->seq;
    m->k->copy(s->slots.device + (size_t)slot * s->slots.stride, s->loss, (size_t)T * sizeof(float));
    s->slots.tokens[slot] = T;
    return 0;
}

void model_collect_losses(model *m, int n_slots, double *sums, double *scalar) {
    model_state *s = m->state;
    if (n_slots > s->slots.n) n_slots = s->slots.n;
    if (n_slots < 0) n_slots = 0;
    if (!n_slots && !scalar) return;
    m->k->download(s->slots.host_block, s->slots.block,
                   sizeof(double) + (size_t)n_slots * s->slots.stride * sizeof(float));
    if (scalar) memcpy(scalar, s->slots.host_block, sizeof *scalar);
    for (int a = 0; a < n_slots; a++) sums[a] = sum_losses(s->slots.host + (size_t)a * s->slots.stride, s->slots.tokens[a]);
}

/* The logits of rows [first, n) of the forward just run into host logits [n - first, V], a
 * chunk of logits_rows at a time. */
static void project_logits(model *m, const uint16_t *h_final, int first, int n, float *logits) {
    const model_state *s = m->state;
    const int H = m->cfg.hidden_size, V = m->cfg.vocab_size;
    for (int r0 = first; r0 < n; r0 += s->logits_rows) {
        const int rows = n - r0 < s->logits_rows ? n - r0 : s->logits_rows;
        const float *xn = s->x_norm_final + (size_t)r0 * H;
        weight_gemm(m, false, true, rows, V, H, xn, h_final ? h_final + (size_t)r0 * H : NULL, H,
                    vocab_weight(m), 0.0f, s->logits, V);
        m->k->download(logits + (size_t)(r0 - first) * V, s->logits, (size_t)rows * V * sizeof(float));
    }
}

int model_logits(model *m, const int32_t *ids, int n, int first, float *logits, ct_error *err) {
    if (n <= 0 || !ids) return ct_fail(err, "model_logits: empty sequence");
    if (first < 0 || first >= n) return ct_fail(err, "model_logits: first position %d outside [0, %d)", first, n);
    model_state *s = m->state;
    if (!s->float_arena || s->reserved_tokens < n) {
        /* Grows the reservation (an allocation): generation runs outside the step loop. */
        if (model_reserve(m, 1, n, err)) return -1;
    }
    model_batch b = {.input_ids = ids, .targets = NULL, .positions = NULL, .doc_ids = NULL,
                     .batch = 1, .seq = n};
    if (upload_batch(m, &b, err)) return -1;
    const uint16_t *h_final;
    if (forward(m, 1, n, false, false, 0, false, &h_final, err)) return -1;
    project_logits(m, h_final, first, n, logits);
    return 0;
}

int model_cache_append(model *m, const int32_t *ids, int n, float *logits, ct_error *err) {
    model_state *s = m->state;
    struct model_kv_cache *cache = &s->cache;
    if (!cache->block) return ct_fail(err, "model_cache_append: no KV cache (model_cache_reserve first)");
    if (n <= 0 || !ids) return ct_fail(err, "model_cache_append: no tokens");
    if (n > cache->capacity - cache->len)
        return ct_fail(err, "model_cache_append: %d more tokens do not fit the KV cache (%d of %d held)", n,
                       cache->len, cache->capacity);
    if (!s->float_arena || s->reserved_tokens < n) {
        if (model_reserve(m, 1, n, err)) return -1;
    }
    for (int t = 0; t < n; t++) s->host_positions[t] = cache->len + t;
    model_batch b = {.input_ids = ids, .targets = NULL, .positions = s->host_positions, .doc_ids = NULL, .batch = 1,
                     .seq = n};
    if (upload_batch(m, &b, err)) return -1;
    const uint16_t *h_final;
    if (forward(m, 1, n, false, false, 0, true, &h_final, err)) return -1;
    cache->len += n;
    cache->dora_scales_held = true;
    project_logits(m, h_final, n - 1, n, logits);
    return 0;
}

int model_last_logits(model *m, const int32_t *ids, int n, float *logits, ct_error *err) {
    return model_logits(m, ids, n, n - 1, logits, err); /* model_logits refuses n <= 0 first */
}
