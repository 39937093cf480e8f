/* RoPE, rotate_half convention (transformers' Llama), in place on [n_tokens, n_heads*d]:
 * for j < d/2, angle = pos[t] * inv_freq[j] (fp32), c = cos(angle), s = sin(angle):
 *   x'[j] = x[j] c - x[j+d/2] s;   x'[j+d/2] = x[j+d/2] c + x[j] s.
 * The rotation is orthogonal, so the backward is the same rotation by -angle.
 * inv_freq carries any rope scaling (llama3 etc.); the kernel only rotates. */
#include <math.h>

#include "kernels/cpu/cpu_ops.h"

static void rope_rotate(float *x, const int32_t *positions, const float *inv_freq, int n_tokens,
                        int n_heads, int head_dim, float direction) {
    int half = head_dim / 2;
    size_t width = (size_t)n_heads * head_dim;
#pragma omp parallel for if ((size_t)n_tokens * width >= CPU_PARALLEL_MIN) schedule(static)
    for (int t = 0; t < n_tokens; t++) {
        float *row = x + (size_t)t * width;
        float pos = (float)positions[t];
        for (int j = 0; j < half; j++) {
            float angle = pos * inv_freq[j];
            float c = cosf(angle), s = direction * sinf(angle);
            for (int h = 0; h < n_heads; h++) {
                float *pair = row + (size_t)h * head_dim;
                float lo = pair[j], hi = pair[j + half];
                pair[j] = lo * c - hi * s;
                pair[j + half] = hi * c + lo * s;
            }
        }
    }
}

void cpu_rope_fwd(float *x, const int32_t *positions, const float *inv_freq, int n_tokens,
                  int n_heads, int head_dim) {
    rope_rotate(x, positions, inv_freq, n_tokens, n_heads, head_dim, 1.0f);
}

void cpu_rope_bwd(float *dx, const int32_t *positions, const float *inv_freq, int n_tokens,
                  int n_heads, int head_dim) {
    rope_rotate(dx, positions, inv_freq, n_tokens, n_heads, head_dim, -1.0f);
}
