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
 * Does not own: the adapter tensors (model.h arenas) or the activation buffers. */
#ifndef CTUNE_LORA_MATH_H
#define CTUNE_LORA_MATH_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/kernels.h"

typedef struct lora_apply {
    const kernels *k;
    const float *a;  /* A [r, in] */
    const float *b;  /* B [out, r] */
    float *da, *db;  /* gradients (accumulated); NULL when frozen */
    int in, out, r;
    float scaling;
    float dropout;   /* probability of dropping an input element */
    uint64_t seed, offset; /* the dropout stream of this (layer, module) */
} lora_apply;

/* y [T,out] += scaling * (dropout(x) A^T) B^T and u [T,r] = dropout(x) A^T.
 * Dropout only when train; x_scratch [T,in] holds dropout(x) when it applies. */
void lora_forward(const lora_apply *l, float *y, float *u, const float *x, int n_tokens,
                  bool train, float *x_scratch);

/* Accumulates da, db (when non-NULL) and, when dx is non-NULL, adds the adapter's input
 * gradient into dx. du [T,r], scratch1 and scratch2 [T,in] are caller-provided scratch.
 * train must equal the forward's. */
void lora_backward(const lora_apply *l, float *dx, const float *dy, const float *x,
                   const float *u, int n_tokens, bool train, float *du, float *scratch1,
                   float *scratch2);

#endif
