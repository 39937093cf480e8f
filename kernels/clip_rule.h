/* clip_rule: the arithmetic of gradient-norm clipping, defined once for the host
 * (optim/zero.c's zero_step, optim/clip.c), the CPU backend and the CUDA kernels, so that a
 * clipping factor decided on a GPU (kernels.clip_factor) is the bits the host decides from
 * the same block sums.
 *
 * The norm's order of additions: the block sums are cut into groups of KERNELS_NORM_GROUP,
 * each group is added in order from 0.0, and the groups' totals are added in order from 0.0
 * (a GPU adds the groups side by side, then the totals in one thread). */
#ifndef CTUNE_CLIP_RULE_H
#define CTUNE_CLIP_RULE_H

#include <math.h>
#include <stddef.h>

#include "kernels/kernels.h"

#ifdef __CUDACC__
#define CLIP_RULE_FN static inline __host__ __device__
#else
#define CLIP_RULE_FN static inline
#endif

/* Sum of sums[first, first + n) in order. */
CLIP_RULE_FN double clip_rule_run_sum(const double *sums, size_t first, size_t n) {
    double total = 0.0;
    for (size_t b = first; b < first + n; b++) total += sums[b];
    return total;
}

/* The grouped total of n_blocks block sums (above). */
CLIP_RULE_FN double clip_rule_grouped_total(const double *sums, size_t n_blocks) {
    double total = 0.0;
    for (size_t g = 0; g < n_blocks; g += KERNELS_NORM_GROUP)
        total += clip_rule_run_sum(sums, g, n_blocks - g < KERNELS_NORM_GROUP ? n_blocks - g : KERNELS_NORM_GROUP);
    return total;
}

/* max_norm / (norm + 1e-6) when that is below 1, as torch.nn.utils.clip_grad_norm_; 1 when
 * max_norm <= 0 (no clipping) or the norm is not finite (an overflow: scaling would turn every
 * gradient into NaN or 0, so the caller skips the step or stops). */
CLIP_RULE_FN double clip_rule_coefficient(double norm, double max_norm) {
    if (max_norm <= 0.0 || !isfinite(norm)) return 1.0;
    double coef = max_norm / (norm + 1e-6);
    return coef < 1.0 ? coef : 1.0;
}

/* kernels.clip_factor's results from the grouped total of the squares. */
CLIP_RULE_FN void clip_rule_apply(double total, double max_norm, double loss_scale, double *norm, float *factor) {
    *norm = sqrt(total) / loss_scale;
    *factor = isfinite(*norm) ? (float)(clip_rule_coefficient(*norm, max_norm) / loss_scale) : (float)NAN;
}

#endif
