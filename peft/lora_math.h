/* lora_math: the adapter path inside one LoRA-targeted Linear, forward and backward, on any
 * kernels backend. model.c calls it after the base projection y = x W^T (+ b):
 *
 *   u  = dropout(x) A^T                 [T, r]     (kept by the caller for the backward)
 *   y += scaling * u B^T                [T, out]
 *
 * and in the backward, from dy [T, out]:
 *
 *   dB += scaling * dy^T u              [out, r]
 *   du  = scaling * dy B                [T, r]
 *   dA += du^T dropout(x)               [r, in]
 *   dx += dropout_mask(du A)            [T, in]   (only when dx is wanted)
 *
 * The dropout mask is never stored: kernels->dropout is counter-based, so the backward
 * redraws the identical mask from (seed, offset). Matches peft's
 * lora_B(lora_A(dropout(x))) * scaling to float32 rounding.
 *
 * Mixed precision (half != NULL): every product above takes 16-bit operands (gemm_half, fp32
 * sums, fp32 results), as peft's adapters run under torch.autocast: dropout(x), A, B, u, dy
 * and du are rounded to the format where they enter a product (A and B through their 16-bit
 * copies, which AdamW keeps or, fused, which sit inside the base weight's copy; x and dy
 * through the base Linear's rounded copies when there is no dropout). The adapters' master
 * weights, gradients and u stay fp32. lora_fused_u / lora_fused_backward are the pieces left
 * when the base GEMMs take the adapter in (train/model_internal.h).
 * Does not own: the adapter tensors (model.h arenas) or the activation buffers. */
#ifndef CTUNE_LORA_MATH_H
#define CTUNE_LORA_MATH_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/kernels.h"

/* The 16-bit side of an adapter in mixed precision. */
typedef struct lora_half {
    kernels_half_format fmt;
    const uint16_t *a, *b; /* A's and B's 16-bit copies, rows lda and ldb apart */
    int lda, ldb;
    bool b_scaled;         /* b holds scaling * B (the fused layout: train/model_internal.h) */
    int ldx;               /* row stride of the 16-bit input hx the caller passes */
    uint16_t *in;          /* scratch [T, in] for dropout(x) rounded (NULL without dropout) */
    uint16_t *r;           /* scratch [T, r] for u or du rounded */
} lora_half;

typedef struct lora_apply {
    const kernels *k;
    const float *a;  /* A [r, in] */
    const float *b;  /* B [out, r] */
    const lora_half *half; /* NULL: fp32 products */
    float *da, *db;  /* gradients (accumulated); NULL when frozen */
    bool overwrite_da, overwrite_db; /* write the gradient instead of adding to it (its first
                                      * write of a step: model_zero_grads is lazy) */
    int in, out, r;
    float scaling;
    float dropout;   /* probability of dropping an input element */
    uint64_t seed, offset; /* the dropout stream of this (layer, module) */
} lora_apply;

/* y [T,out] += scaling * (dropout(x) A^T) B^T and u [T,r] = dropout(x) A^T.
 * Dropout only when train; x_scratch [T,in] holds dropout(x) when it applies in fp32 (mixed
 * precision writes only its rounding, into half->in, with dropout_half: x_scratch may be
 * NULL). hx: x rounded to 16 bits (mixed precision; read only without dropout), else NULL. */
void lora_forward(const lora_apply *l, float *y, float *u, const float *x, const uint16_t *hx,
                  int n_tokens, bool train, float *x_scratch);

/* Accumulates da, db (when non-NULL; writes them where overwrite_da, overwrite_db say so) and,
 * when dx is non-NULL, adds the adapter's input gradient into dx. du [T,r] and scratch [T,in]
 * (used only under dropout: NULL otherwise) are caller-provided scratch. train must equal the
 * forward's. Mixed precision: hdy is dy rounded and hx x rounded (read only without dropout
 * and when da is wanted). */
void lora_backward(const lora_apply *l, float *dx, const float *dy, const uint16_t *hdy,
                   const float *x, const uint16_t *hx, const float *u, int n_tokens, bool train,
                   float *du, float *scratch);

/* The adapter inside its base Linear's GEMMs (train/model_internal.h; mixed precision,
 * half->b_scaled). lora_fused_u: u [T,r] = dropout(x) A^T, as lora_forward computes it (from
 * hx, rows half->ldx apart, without dropout), kept in fp32 for the backward, and its rounding
 * written into hu (rows half->ldx apart: the columns of x's copy that the base GEMM reads
 * after x). */
void lora_fused_u(const lora_apply *l, float *u, const float *x, const uint16_t *hx, uint16_t *hu, int n_tokens,
                  bool train, float *x_scratch);

/* Without dropout, from dy's 16-bit copy hdy (rows ldy >= out + r apart): dB += scaling dy^T u (when
 * trainable; u's rounding read from hu, rows half->ldx apart, as lora_fused_u wrote it, or
 * with hu NULL rounded here) and, when dA is trainable or want_du, du = dy (scaling B) rounded
 * into hdy's columns out..out+r, then dA += du^T x from hx (rows half->ldx apart). du is fp32
 * scratch [T, r]. The caller's GEMM [dy | du] [W ; A] then adds du A into dx. */
void lora_fused_backward(const lora_apply *l, uint16_t *hdy, int ldy, const uint16_t *hx, const float *u,
                         const uint16_t *hu, int n_tokens, bool want_du, float *du);

#endif
