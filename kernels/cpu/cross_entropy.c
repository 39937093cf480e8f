/* Cross-entropy over a chunk of rows, forward and backward fused:
 *   loss_r = logsumexp(z_r) - z_r[t_r],   dz_r = (softmax(z_r) - onehot(t_r)) * grad_scale.
 * logsumexp subtracts the row max before exponentiating (no overflow) and sums the
 * exponentials in double (vocabularies reach 150k entries). Rows with a negative target
 * are ignored (loss 0, zero gradient). A target >= vocab is a caller bug the kernel
 * cannot report: it yields a NaN loss rather than reading out of bounds, so it surfaces.
 * Each row takes three vectorised passes over its logits (max; exponentials and their sum,
 * stored in place when a gradient is wanted; the scaling), with the row resident in cache
 * after the first, and exp(z - max) is computed once per logit (cpu_expf).
 * Rows are independent: parallel over rows. */
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/half_round.h"

static float row_max(const float *z, int vocab) {
    float zmax = -INFINITY;
#pragma omp simd reduction(max : zmax)
    for (int i = 0; i < vocab; i++) zmax = z[i] > zmax ? z[i] : zmax;
    return zmax;
}

static double row_exp_sum(const float *z, int vocab, float zmax) {
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int i = 0; i < vocab; i++) sum += cpu_expf(z[i] - zmax);
    return sum;
}

/* Kept relative to the max: z - zmax is exact for the large entries, whereas z - lse rounded
 * at |z| ~ 1000 would lose 6e-5 of every probability. z_target: read before any store. */
static float row_loss(float zmax, float z_target, double sum) {
    return (float)(((double)zmax - z_target) + log(sum));
}

void cpu_cross_entropy(float *logits, float *loss, const int32_t *targets, int n_rows, int vocab,
                       float grad_scale) {
#pragma omp parallel for if ((size_t)n_rows * vocab >= CPU_PARALLEL_MIN) schedule(static)
    for (int r = 0; r < n_rows; r++) {
        float *z = logits + (size_t)r * vocab;
        int32_t target = targets[r];
        if (target < 0) {
            loss[r] = 0.0f;
            if (grad_scale != 0.0f) memset(z, 0, (size_t)vocab * sizeof(float));
            continue;
        }
        const float zmax = row_max(z, vocab);
        const float z_target = target < vocab ? z[target] : NAN;
        double sum = 0.0;
        if (grad_scale == 0.0f) {
            sum = row_exp_sum(z, vocab, zmax);
        } else { /* one pass: each exponential stored for the scaling below */
#pragma omp simd reduction(+ : sum)
            for (int i = 0; i < vocab; i++) {
                float e = cpu_expf(z[i] - zmax);
                z[i] = e;
                sum += e;
            }
        }
        loss[r] = row_loss(zmax, z_target, sum);
        if (grad_scale == 0.0f) continue;
        const float scale_over_sum = (float)(grad_scale / sum);
#pragma omp simd
        for (int i = 0; i < vocab; i++) z[i] *= scale_over_sum;
        if (target < vocab) z[target] -= grad_scale;
    }
}

#define CE_HALF_BLOCK 512

/* The same rows with the gradient written only as 16-bit values: the max and the double sum
 * as above (no store), then each exp(z - max) recomputed (cpu_expf is a pure function, so
 * the same bits), scaled and rounded; the loss is the same expression on the same values. */
void cpu_cross_entropy_half(kernels_half_format fmt, uint16_t *dlogits_half, const float *logits,
                            float *loss, const int32_t *targets, int n_rows, int vocab,
                            float grad_scale) {
#pragma omp parallel for if ((size_t)n_rows * vocab >= CPU_PARALLEL_MIN) schedule(static)
    for (int r = 0; r < n_rows; r++) {
        const float *z = logits + (size_t)r * vocab;
        uint16_t *dz = dlogits_half + (size_t)r * vocab;
        int32_t target = targets[r];
        if (target < 0) {
            loss[r] = 0.0f;
            if (grad_scale != 0.0f) memset(dz, 0, (size_t)vocab * sizeof(uint16_t));
            continue;
        }
        const float zmax = row_max(z, vocab);
        const double sum = row_exp_sum(z, vocab, zmax);
        loss[r] = row_loss(zmax, target < vocab ? z[target] : NAN, sum);
        if (grad_scale == 0.0f) continue;
        const float scale_over_sum = (float)(grad_scale / sum);
        float block[CE_HALF_BLOCK]; /* vectorisable exp, then the rounding */
        for (int i0 = 0; i0 < vocab; i0 += CE_HALF_BLOCK) {
            const int len = vocab - i0 < CE_HALF_BLOCK ? vocab - i0 : CE_HALF_BLOCK;
#pragma omp simd
            for (int i = 0; i < len; i++) block[i] = cpu_expf(z[i0 + i] - zmax) * scale_over_sum;
            /* two roundings, as "z *= s" then "z[t] -= grad_scale" */
            if (target >= i0 && target < i0 + len) block[target - i0] -= grad_scale;
            for (int i = 0; i < len; i++) dz[i0 + i] = cpu_half_from_float(block[i], fmt);
        }
    }
}
