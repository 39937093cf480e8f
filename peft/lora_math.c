/* lora_math: LoRA settings helpers (peft/lora.h, the non-I/O part) and the adapter math of
 * one targeted Linear (peft/lora_math.h). See those headers for the formulas. */
#include "peft/lora_math.h"

#include <math.h>
#include <string.h>

#include "peft/lora.h"

static const char *const kind_names[LINEAR_KIND_COUNT] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
};

const char *linear_kind_name(linear_kind kind) {
    return kind >= 0 && kind < LINEAR_KIND_COUNT ? kind_names[kind] : "?";
}

const char *linear_kind_block(linear_kind kind) {
    return kind <= LINEAR_O ? "self_attn" : "mlp";
}

/* peft computes the scaling in Python double precision; the product with an fp32 tensor
 * then uses its float32 rounding, which is what we return. */
float lora_scaling(const lora_settings *s) {
    double r = s->r > 0 ? (double)s->r : 1.0;
    return (float)((double)s->alpha / (s->use_rslora ? sqrt(r) : r));
}

int lora_parse_targets(lora_settings *s, const char *const *names, int n_names, ct_error *err) {
    if (n_names <= 0) return ct_fail(err, "lora target_modules: empty list (name at least one module)");
    bool targets[LINEAR_KIND_COUNT] = {false};
    for (int i = 0; i < n_names; i++) {
        const char *name = names[i] ? names[i] : "";
        if (strcmp(name, "all-linear") == 0) {
            for (int k = 0; k < LINEAR_KIND_COUNT; k++) targets[k] = true;
            continue;
        }
        int found = -1;
        for (int k = 0; k < LINEAR_KIND_COUNT; k++)
            if (strcmp(name, kind_names[k]) == 0) found = k;
        if (found < 0)
            return ct_fail(err,
                           "lora target_modules: unknown module '%s' (expected q_proj, k_proj, "
                           "v_proj, o_proj, gate_proj, up_proj, down_proj or all-linear)",
                           name);
        targets[found] = true;
    }
    memcpy(s->targets, targets, sizeof targets);
    return 0;
}

/* C = alpha op(A) op(B) + beta C, with A and B (fp32) or their 16-bit copies ha, hb. */
static void adapter_gemm(const lora_apply *l, bool ta, bool tb, int m, int n, int k, float alpha, const float *a,
                         const uint16_t *ha, int lda, const float *b, const uint16_t *hb, int ldb, float beta,
                         float *c, int ldc) {
    if (l->half)
        l->k->gemm_half(l->half->fmt, ta, tb, m, n, k, alpha, ha, lda, hb, ldb, beta, c, ldc);
    else
        l->k->gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/* The adapter input as a product reads it: dropout(x) in x_scratch when it applies (fp32),
 * and in mixed precision its 16-bit rounding, written by dropout_half without the fp32 values
 * (hx itself without dropout; the fp32 input returned is then NULL: no product reads it). */
static const float *adapter_input(const lora_apply *l, const float *x, const uint16_t *hx, int T, bool drop,
                                  float *x_scratch, const uint16_t **hxd) {
    *hxd = hx;
    if (!drop) return x;
    if (l->half) {
        l->k->dropout_half(l->half->fmt, l->half->in, x, l->dropout, l->seed, l->offset, (size_t)T * l->in);
        *hxd = l->half->in;
        return NULL;
    }
    l->k->dropout(x_scratch, x, l->dropout, l->seed, l->offset, (size_t)T * l->in);
    return x_scratch;
}

/* The beta of the products into da and db: 0 where they are written, not added to. */
static float da_beta(const lora_apply *l) { return l->overwrite_da ? 0.0f : 1.0f; }
static float db_beta(const lora_apply *l) { return l->overwrite_db ? 0.0f : 1.0f; }

/* Row strides of the operands as a product reads them: the 16-bit copies of A and B (and
 * of x, unless it is the contiguous dropout scratch) in mixed precision, else the fp32
 * tensors' own. */
static int lda_of(const lora_apply *l) { return l->half ? l->half->lda : l->in; }
static int ldb_of(const lora_apply *l) { return l->half ? l->half->ldb : l->r; }
static int ldx_of(const lora_apply *l, bool drop) { return l->half && !drop ? l->half->ldx : l->in; }
/* The factor a product with B's copy takes: scaling, unless the copy already holds it. */
static float b_alpha(const lora_apply *l) { return l->half && l->half->b_scaled ? 1.0f : l->scaling; }

/* The 16-bit rounding of a [T, r] value (u or du) in mixed precision, else NULL. */
static const uint16_t *rounded_r(const lora_apply *l, const float *x, int T) {
    if (!l->half) return NULL;
    l->k->to_half(l->half->r, x, (size_t)T * l->r, l->half->fmt);
    return l->half->r;
}

void lora_forward(const lora_apply *l, float *y, float *u, const float *x, const uint16_t *hx,
                  int n_tokens, bool train, float *x_scratch) {
    const int T = n_tokens;
    const uint16_t *hxd;
    const bool drop = train && l->dropout > 0.0f;
    const float *xd = adapter_input(l, x, hx, T, drop, x_scratch, &hxd);
    const uint16_t *ha = l->half ? l->half->a : NULL, *hb = l->half ? l->half->b : NULL;
    adapter_gemm(l, false, true, T, l->r, l->in, 1.0f, xd, hxd, ldx_of(l, drop), l->a, ha, lda_of(l), 0.0f, u,
                 l->r);
    const uint16_t *hu = rounded_r(l, u, T);
    adapter_gemm(l, false, true, T, l->out, l->r, b_alpha(l), u, hu, l->r, l->b, hb, ldb_of(l), 1.0f, y, l->out);
}

void lora_backward(const lora_apply *l, float *dx, const float *dy, const uint16_t *hdy,
                   const float *x, const uint16_t *hx, const float *u, int n_tokens, bool train,
                   float *du, float *scratch) {
    const kernels *k = l->k;
    const int T = n_tokens;
    const bool drop = train && l->dropout > 0.0f;
    const uint16_t *ha = l->half ? l->half->a : NULL, *hb = l->half ? l->half->b : NULL;
    if (l->db) {
        const uint16_t *hu = rounded_r(l, u, T);
        adapter_gemm(l, true, false, l->out, l->r, T, l->scaling, dy, hdy, l->out, u, hu, l->r, db_beta(l), l->db,
                     l->r);
    }
    if (!l->da && !dx) return;
    adapter_gemm(l, false, false, T, l->r, l->out, b_alpha(l), dy, hdy, l->out, l->b, hb, ldb_of(l), 0.0f, du,
                 l->r);
    const uint16_t *hdu = rounded_r(l, du, T);
    if (l->da) {
        const uint16_t *hxd;
        const float *xd = adapter_input(l, x, hx, T, drop, scratch, &hxd);
        adapter_gemm(l, true, false, l->r, l->in, T, 1.0f, du, hdu, l->r, xd, hxd, ldx_of(l, drop), da_beta(l),
                     l->da, l->in);
    }
    if (dx) {
        if (drop) {
            /* The mask's backward is the same mask (with the same 1/(1-p)) on the gradient,
             * added to dx in the same pass. */
            adapter_gemm(l, false, false, T, l->in, l->r, 1.0f, du, hdu, l->r, l->a, ha, lda_of(l), 0.0f, scratch,
                         l->in);
            k->dropout_add(dx, scratch, l->dropout, l->seed, l->offset, (size_t)T * l->in);
        } else {
            adapter_gemm(l, false, false, T, l->in, l->r, 1.0f, du, hdu, l->r, l->a, ha, lda_of(l), 1.0f, dx, l->in);
        }
    }
}

void lora_fused_u(const lora_apply *l, float *u, const float *x, const uint16_t *hx, uint16_t *hu, int n_tokens,
                  bool train, float *x_scratch) {
    const lora_half *h = l->half;
    const bool drop = train && l->dropout > 0.0f;
    const uint16_t *hxd;
    adapter_input(l, x, hx, n_tokens, drop, x_scratch, &hxd);
    l->k->gemm_half(h->fmt, false, true, n_tokens, l->r, l->in, 1.0f, hxd, ldx_of(l, drop), h->a, h->lda, 0.0f, u,
                    l->r);
    l->k->to_half_2d(h->fmt, hu, h->ldx, u, l->r, n_tokens, l->r, 1.0f);
}

void lora_fused_backward(const lora_apply *l, uint16_t *hdy, int ldy, const uint16_t *hx, const float *u,
                         const uint16_t *hu, int n_tokens, bool want_du, float *du) {
    const lora_half *h = l->half;
    const int T = n_tokens;
    if (l->db) {
        const int ldu = hu ? h->ldx : l->r;
        if (!hu) hu = rounded_r(l, u, T);
        l->k->gemm_half(h->fmt, true, false, l->out, l->r, T, l->scaling, hdy, ldy, hu, ldu, db_beta(l), l->db,
                        l->r);
    }
    if (!l->da && !want_du) return;
    l->k->gemm_half(h->fmt, false, false, T, l->r, l->out, 1.0f, hdy, ldy, h->b, h->ldb, 0.0f, du, l->r);
    uint16_t *hdu = hdy + l->out;
    l->k->to_half_2d(h->fmt, hdu, ldy, du, l->r, T, l->r, 1.0f);
    if (l->da)
        l->k->gemm_half(h->fmt, true, false, l->r, l->in, T, 1.0f, hdu, ldy, hx, h->ldx, da_beta(l), l->da, l->in);
}
