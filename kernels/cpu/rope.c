/* RoPE, rotate_half convention (transformers' Llama), in place on [n_tokens, n_heads*d]:
 * for j < d/2, angle = pos[t] * inv_freq[j] (fp32), c = cos(angle), s = sin(angle):
 *   x'[j] = x[j] c - x[j+d/2] s;   x'[j+d/2] = x[j+d/2] c + x[j] s.
 * The rotation is orthogonal, so the backward is the same rotation by -angle.
 * inv_freq carries any rope scaling (llama3 etc.); the kernel only rotates. The 16-bit
 * variants write the rotated values' roundings instead (mixed precision: q and k as
 * attention reads them, dq and dk as their projections' GEMMs do). */
#include <math.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/half_round.h"

/* Rotates x [n_tokens, n_heads*head_dim] by direction * angle into out (x itself for the
 * in-place ops), or, with out NULL, into out_half's rows ld_half apart as 16-bit values of
 * fmt. Each pair is read before it is written, so out may be x. */
static void rope_rotate(const float *x, float *out, uint16_t *out_half, int ld_half, kernels_half_format fmt,
                        const int32_t *positions, const float *inv_freq, int n_tokens, int n_heads, int head_dim,
                        float direction) {
    int half = head_dim / 2;
    size_t width = (size_t)n_heads * head_dim;
#pragma omp parallel for if ((size_t)n_tokens * width >= CPU_PARALLEL_MIN) schedule(static)
    for (int t = 0; t < n_tokens; t++) {
        const float *row = x + (size_t)t * width;
        float *orow = out ? out + (size_t)t * width : NULL;
        uint16_t *hrow = out ? NULL : out_half + (size_t)t * ld_half;
        float pos = (float)positions[t];
        for (int j = 0; j < half; j++) {
            float angle = pos * inv_freq[j];
            float c = cosf(angle), s = direction * sinf(angle);
            for (int h = 0; h < n_heads; h++) {
                const size_t at = (size_t)h * head_dim;
                float lo = row[at + j], hi = row[at + j + half];
                float new_lo = lo * c - hi * s, new_hi = hi * c + lo * s;
                if (orow) {
                    orow[at + j] = new_lo;
                    orow[at + j + half] = new_hi;
                } else {
                    hrow[at + j] = cpu_half_from_float(new_lo, fmt);
                    hrow[at + j + half] = cpu_half_from_float(new_hi, fmt);
                }
            }
        }
    }
}

void cpu_rope_fwd(float *x, const int32_t *positions, const float *inv_freq, int n_tokens,
                  int n_heads, int head_dim) {
    rope_rotate(x, x, NULL, 0, KERNELS_BF16, positions, inv_freq, n_tokens, n_heads, head_dim, 1.0f);
}

void cpu_rope_bwd(float *dx, const int32_t *positions, const float *inv_freq, int n_tokens,
                  int n_heads, int head_dim) {
    rope_rotate(dx, dx, NULL, 0, KERNELS_BF16, positions, inv_freq, n_tokens, n_heads, head_dim, -1.0f);
}

void cpu_rope_fwd_half(kernels_half_format fmt, uint16_t *out_half, int ld_half, const float *x,
                       const int32_t *positions, const float *inv_freq, int n_tokens, int n_heads, int head_dim) {
    rope_rotate(x, NULL, out_half, ld_half, fmt, positions, inv_freq, n_tokens, n_heads, head_dim, 1.0f);
}

void cpu_rope_bwd_half(kernels_half_format fmt, uint16_t *out_half, int ld_half, const float *dx,
                       const int32_t *positions, const float *inv_freq, int n_tokens, int n_heads, int head_dim) {
    rope_rotate(dx, NULL, out_half, ld_half, fmt, positions, inv_freq, n_tokens, n_heads, head_dim, -1.0f);
}
