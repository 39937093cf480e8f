/* model_internal: what model.c (parameters, arenas, reservation) and model_graph.c (the
 * forward/backward pass) share. Not part of the public model.h contract. */
#ifndef CTUNE_MODEL_INTERNAL_H
#define CTUNE_MODEL_INTERNAL_H

#include "train/model.h"

/* LoRA inside the base GEMMs (mixed precision, unless lora_unfused).
 * An adapted Linear's base weight has as its 16-bit copy the padded matrix
 *
 *                 columns 0..in   in..u_col   u_col..u_col+r   ..ld
 *     rows 0..out      W            0         scaling * B        0
 *     rows out..+r     A            0         0                  0
 *
 * with row stride ld = ld_input of its input (every Linear's copy in a group sharing an input
 * has that stride, adapted or not, so that q's, k's and v's copies, consecutive in the 16-bit
 * arena, read as one matrix: model_graph.c's q/k/v input gradient in one GEMM)
 * (the adapters themselves have no other 16-bit copy; model_refresh_half writes A and
 * scaling * B there after every optimizer step). The Linear's input x reaches its GEMM as a
 * 16-bit copy with room beside it (rows ld_input apart, written by RMSNorm, SwiGLU or a
 * strided rounding), u's rounding is written at column u_col, and the forward is one GEMM
 *     u = x A^T;  y = [x | u] [W | scaling B]^T            (K = u_col + r)
 * (u = dropout(x) A^T under adapter dropout). Without dropout (concat_dy; dropout's backward
 * masks du A) dy's 16-bit copy has room too (a strided rounding, or SwiGLU's backward for
 * gate and up: rows ld_mlp_dy apart), and the input gradient is
 *     du = dy (scaling B);  dx = [dy | du] [W ; A]         (K = out + r)
 * Each replaces a GEMM that read and rewrote an fp32 [T, out] or [T, in] tensor. Linears
 * sharing an input (q, k, v; gate, up) take consecutive slots u_col = in + slot * r; the
 * zero columns make the earlier adapters' u (already written) contribute nothing. The
 * backward reads u's rounding back from a saved input copy rather than rounding u again. */
typedef struct model_lora_layout {
    int slot[LINEAR_KIND_COUNT];     /* adapter's column slot beside its input; -1: none */
    int ld_input[LINEAR_KIND_COUNT]; /* row stride of each Linear's 16-bit input copy */
    int ld_mlp_dy;                   /* row stride of gate's and up's 16-bit dy (SwiGLU's) */
} model_lora_layout;

/* The layout for cfg with adapters lora run fused (NULL: none fused: every ld_input is the
 * input width, every slot -1). */
void model_lora_layout_of(const model_config *cfg, const lora_settings *lora, model_lora_layout *out);

/* One Linear of a decoder layer: its base weight (and bias), and its adapter when targeted. */
typedef struct model_linear {
    model_param *weight;
    model_param *bias;   /* NULL: no bias */
    model_param *lora_a; /* NULL: not adapted */
    model_param *lora_b;
    model_param *magnitude; /* DoRA's m [out] (lora.use_dora), else NULL */
    /* DoRA, for the current weights: ||W + scaling B A|| per output row and m / that (backend
     * [out] each, in the reservation; written at the start of each forward of the layer). */
    float *dora_norm, *dora_scale;
    int in, out;
    /* Fused LoRA (above); u_col 0 when the adapter is not fused (or there is none). */
    int u_col;
    bool concat_dy;
} model_linear;

struct model_layer {
    int param_begin, param_end;   /* its parameters: params[param_begin, param_end) */
    size_t grad_lo, grad_hi;      /* their flat trainable range */
    float *grads;                 /* where the gradient of flat value grad_lo is */
    model_param *input_norm, *post_norm;
    model_param *q_norm, *k_norm; /* NULL unless qk_norm */
    model_linear lin[LINEAR_KIND_COUNT];
};

/* Saved activations of one decoder layer (pointers into the activation arena), T tokens. */
typedef struct layer_acts {
    float *x_norm1, *rstd1;        /* input RMSNorm output [T,H], 1/rms [T] */
    float *q_pre, *rstd_q;         /* qk_norm only: projection before the norm, [T*nh] */
    float *k_pre, *rstd_k;
    float *q, *k, *v;              /* attention inputs after norm and RoPE (mixed: scratch) */
    float *att, *lse;              /* attention output [T,nh*d] (mixed: NULL unless adapter
                                    * dropout reads it), log-sum-exp [T*nh] */
    float *x_mid;                  /* residual stream after attention [T,H] */
    float *x_norm2, *rstd2;
    float *gate, *up, *act;        /* [T,I]; act = silu(gate) * up (mixed: see below) */
    float *lora_u[LINEAR_KIND_COUNT]; /* dropout(x) A^T [T,r] of adapted linears */
    /* DoRA: the output before its magnitude scale, x W^T + scaling u B^T [T,out] (under
     * dropout dropout(x) W^T + ...): the magnitude's gradient reads it */
    float *dora_z[LINEAR_KIND_COUNT];
    /* Mixed precision without adapter dropout: the backward reads x_norm1, x_norm2 and act
     * only as GEMM operands, so the layer keeps only their 16-bit roundings, written by
     * RMSNorm and SwiGLU themselves (x_norm1, x_norm2, act NULL). NULL otherwise. */
    uint16_t *h_norm1, *h_norm2, *h_act;
    /* Mixed precision: gate and up as the 16-bit values SwiGLU reads in both directions (as
     * under torch.autocast); gate and up then point at shared fp32 scratch. NULL in fp32. */
    uint16_t *h_gate, *h_up;
    /* Mixed precision: attention's 16-bit inputs (q, k, v rounded after RoPE; the fp32
     * values live in scratch from their GEMMs to the rounding) and its 16-bit output, rows
     * ld_input[LINEAR_O] apart, which the o projection and the attention backward read.
     * NULL in fp32. */
    uint16_t *h_q, *h_k, *h_v, *h_att;
} layer_acts;

typedef struct model_state {
    float *inv_freq;        /* backend [head_dim/2] */
    /* ---- everything below exists once model_reserve has run ---- */
    int reserved_tokens;    /* batch*seq the buffers hold */
    int logits_rows;        /* rows of one vocabulary-projection chunk */
    float *float_arena;     /* backend: all float buffers below */
    int32_t *int_arena;     /* backend: ids, targets, positions, doc_ids, id_order */
    layer_acts *acts;       /* host array [num_hidden_layers] */
    float *resid;           /* residual stream [(L+1), T, H]; slice l is layer l's input */
    float *x_norm_final, *rstd_final;
    float *logits;          /* [logits_rows, V] */
    float *loss;            /* [T] */
    float *ones;            /* [T] of 1.0: bias broadcast and bias gradients as GEMMs */
    float *d_resid, *d_h1, *d_h2;          /* backward scratch [T,H] */
    float *d_w1, *d_w2, *d_w3, *d_w4;      /* [T, max(I, nh*d, H)] */
    float *lora_du;      /* [T,r] */
    float *lora_scratch; /* [T,max_in] under LoRA dropout only: dropout(x) in fp32, the masked dx product */
    /* DoRA: every adapted Linear's norm and scale ([out] each, model_linear.dora_norm), the
     * combined weight W + scaling B A [max out x in], the scaled output gradient and dy
     * widened to fp32 [T, max width] */
    float *dora_norms, *dora_combined, *dora_g, *dora_dy;
    uint16_t *half_x, *half_dy; /* mixed precision: 16-bit GEMM input [T, max width] and output
                                 * gradient [max(T x max width, logits rows x V)] */
    size_t half_dy_numel;       /* half_dy's capacity in values */
    uint16_t *half_ones;        /* mixed: [T] of 1.0, for bias gradients of 16-bit-only dy */
    uint16_t *half_dgate, *half_dup; /* mixed: the MLP's 16-bit gradients [T,I], rows
                                      * ld_mlp_dy apart (in d_w2, d_w3) */
    uint16_t *half_lora_in;     /* mixed LoRA with dropout: the dropped input, [T, max width] */
    uint16_t *half_lora_r;      /* mixed LoRA: u or du rounded, [T, r] */
    int ld_input[LINEAR_KIND_COUNT]; /* mixed: row stride of each Linear's 16-bit input copy
                                      * (wider than the input for fused LoRA's u) */
    int ld_mlp_dy;                   /* mixed: row stride of half_dgate / half_dup */
    int32_t *ids, *targets, *positions, *doc_ids;
    int32_t *id_order;        /* token indices sorted by (id, t), for a trainable embedding */
    uint64_t *host_id_keys;   /* host [T], the sort's (id << 32 | t) keys */
    int32_t *host_positions;  /* host [T], for batches without positions (and the id order) */
    float *host_loss;         /* host [T] */
    /* model_step_queued's per-token losses, slot a at a * stride, until model_collect_losses
     * fetches them all at once: allocated by model_reserve_loss_slots, kept when the
     * reservation above is redone. One allocation (block, host_block) holds a double first
     * (model_loss_slots_scalar) and the slots after it, so one download fetches both. */
    struct model_loss_slots {
        void *block, *host_block;
        float *device, *host; /* the slots inside block and host_block */
        int *tokens; /* tokens written to each slot */
        int n, stride;
    } slots;
    /* Generation's KV cache (model_cache_*): every layer's keys, then its values, each
     * [capacity, n_kv_heads*head_dim] after RoPE, fp32 or (mixed precision) the 16-bit values
     * attention reads, in one allocation of backend memory; len tokens held. Kept when the
     * reservation above is redone. */
    struct model_kv_cache {
        void *block;
        size_t elem_bytes;
        int capacity, len;
        /* DoRA's column scales (model_linear.dora_scale) are those of the weights the
         * cached sequence runs on: set by an append, cleared by reset, reserve and a new
         * activation arena (where the scales live) */
        bool dora_scales_held;
    } cache;
} model_state;

/* DoRA: lin's norm = ||W + scaling B A|| per output row and scale = m / norm (backend [out]
 * each), from the current weights, with backend scratch combined [out x in]. */
void model_dora_norms(const model *m, const model_linear *lin, float *combined, float *norm, float *scale);

/* Re-rounds the 16-bit weight copies marked stale (model_weights_changed) from fp32. */
void model_refresh_half(model *m);
/* model_settle_grads for the parameters [begin, end) only (a layer's, once its backward is done). */
void model_settle_param_grads(model *m, int begin, int end);

/* Dropout stream offset of one (layer, module): disjoint ranges of 2^40 elements. */
static inline uint64_t model_dropout_offset(int layer, int kind) {
    return ((uint64_t)layer * 8u + (uint64_t)kind) << 40;
}

#endif
