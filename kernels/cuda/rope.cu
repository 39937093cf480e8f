// RoPE, rotate_half convention (transformers' Llama), in place on [n_tokens, n_heads*d],
// mirroring kernels/cpu/rope.c: for j < d/2, angle = pos[t] * inv_freq[j] in fp32,
//   x'[j] = x[j] c - x[j+d/2] s;   x'[j+d/2] = x[j+d/2] c + x[j] s,
// and the backward is the rotation by -angle. cosf/sinf are CUDA's full-range versions
// (within 2 ulp, with Payne-Hanek reduction for large angles), never __cosf/__sinf: the
// backend is built without --use_fast_math. The products are rounded separately
// (__fmul_rn) as on the CPU, so only cos/sin rounding can differ from the CPU backend.
// One thread per (token, j): it computes the angle once and rotates every head.
#include <stdint.h>

#include "kernels/cuda/cuda_common.cuh"

__global__ void rope_kernel(float *x, const int32_t *positions, const float *inv_freq,
                            int n_tokens, int n_heads, int head_dim, float direction) {
    const int half = head_dim / 2;
    const size_t total = (size_t)n_tokens * half, width = (size_t)n_heads * head_dim;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t t = i / half;
        const int j = (int)(i % half);
        float angle = (float)positions[t] * inv_freq[j];
        float c = cosf(angle), s = direction * sinf(angle);
        float *row = x + t * width;
        for (int h = 0; h < n_heads; h++) {
            float *pair = row + (size_t)h * head_dim;
            float lo = pair[j], hi = pair[j + half];
            pair[j] = __fmul_rn(lo, c) - __fmul_rn(hi, s);
            pair[j + half] = __fmul_rn(hi, c) + __fmul_rn(lo, s);
        }
    }
}

static void rope_launch(float *x, const int32_t *positions, const float *inv_freq, int n_tokens,
                        int n_heads, int head_dim, float direction) {
    if (n_tokens <= 0 || n_heads <= 0 || head_dim < 2) return;
    rope_kernel<<<cuda_grid_for((size_t)n_tokens * (head_dim / 2)), CUDA_THREADS>>>(
        x, positions, inv_freq, n_tokens, n_heads, head_dim, direction);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_rope_fwd(float *x, const int32_t *positions, const float *inv_freq,
                              int n_tokens, int n_heads, int head_dim) {
    rope_launch(x, positions, inv_freq, n_tokens, n_heads, head_dim, 1.0f);
}

extern "C" void cuda_rope_bwd(float *dx, const int32_t *positions, const float *inv_freq,
                              int n_tokens, int n_heads, int head_dim) {
    rope_launch(dx, positions, inv_freq, n_tokens, n_heads, head_dim, -1.0f);
}
