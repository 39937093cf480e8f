// RoPE, rotate_half convention (transformers' Llama), in place on [n_tokens, n_heads*d],
// mirroring kernels/cpu/rope.c: for j < d/2, angle = pos[t] * inv_freq[j] in fp32,
//   x'[j] = x[j] c - x[j+d/2] s;   x'[j+d/2] = x[j+d/2] c + x[j] s,
// and the backward is the rotation by -angle. cosf/sinf are CUDA's full-range versions
// (within 2 ulp, with Payne-Hanek reduction for large angles), never __cosf/__sinf: the
// backend is built without --use_fast_math. The products are rounded separately
// (__fmul_rn) as on the CPU, so only cos/sin rounding can differ from the CPU backend.
// One thread per (token, j): it computes the angle once and rotates every head.
// rope_fwd_half / rope_bwd_half are the same kernel with another store (half_bits.cuh):
// x is only read and each rotated value is rounded to 16 bits (to_half's rounding) into
// rows ld_half apart, so out_half is to_half(rope_fwd's x') bit for bit. The in-place ops
// store into x itself: each thread reads its pair before writing it, and no other thread
// touches that pair.
#include <stdint.h>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/half_bits.cuh"

// Store: f32_store on x (in place, rows n_heads*d apart) or half_store<F> with no fp32
// output, taking (token, column, rotated value).
template <class Store>
__global__ void rope_kernel(Store store, const float *x, const int32_t *positions,
                            const float *inv_freq, int n_tokens, int n_heads, int head_dim,
                            float direction) {
    const int half = head_dim / 2;
    const size_t total = (size_t)n_tokens * half, width = (size_t)n_heads * head_dim;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t t = i / half;
        const int j = (int)(i % half);
        float angle = (float)positions[t] * inv_freq[j];
        float c = cosf(angle), s = direction * sinf(angle);
        const float *row = x + t * width;
        for (int h = 0; h < n_heads; h++) {
            const int at = h * head_dim;
            float lo = row[at + j], hi = row[at + j + half];
            store(t, at + j, __fmul_rn(lo, c) - __fmul_rn(hi, s));
            store(t, at + j + half, __fmul_rn(hi, c) + __fmul_rn(lo, s));
        }
    }
}

template <class Store>
static void rope_launch(Store store, const float *x, const int32_t *positions,
                        const float *inv_freq, int n_tokens, int n_heads, int head_dim,
                        float direction) {
    if (n_tokens <= 0 || n_heads <= 0 || head_dim < 2) return;
    CUDA_LAUNCH(cuda_grid_for((size_t)n_tokens * (head_dim / 2)), CUDA_THREADS, 0, rope_kernel<Store>)(
        store, x, positions, inv_freq, n_tokens, n_heads, head_dim, direction);
    CUDA_CHECK_LAUNCH();
}

static void rope_half(const char *op, kernels_half_format fmt, uint16_t *out_half, int ld_half,
                      const float *x, const int32_t *positions, const float *inv_freq,
                      int n_tokens, int n_heads, int head_dim, float direction) {
    if (!cuda_known_half_format(fmt, op, __FILE__, __LINE__)) return;
    if (fmt == KERNELS_BF16)
        rope_launch(half_store<KERNELS_BF16>{out_half, ld_half, NULL, 0}, x, positions, inv_freq,
                    n_tokens, n_heads, head_dim, direction);
    else
        rope_launch(half_store<KERNELS_FP16>{out_half, ld_half, NULL, 0}, x, positions, inv_freq,
                    n_tokens, n_heads, head_dim, direction);
}

extern "C" void cuda_rope_fwd(float *x, const int32_t *positions, const float *inv_freq,
                              int n_tokens, int n_heads, int head_dim) {
    rope_launch(f32_store{x, n_heads * head_dim}, x, positions, inv_freq, n_tokens, n_heads,
                head_dim, 1.0f);
}

extern "C" void cuda_rope_bwd(float *dx, const int32_t *positions, const float *inv_freq,
                              int n_tokens, int n_heads, int head_dim) {
    rope_launch(f32_store{dx, n_heads * head_dim}, dx, positions, inv_freq, n_tokens, n_heads,
                head_dim, -1.0f);
}

extern "C" void cuda_rope_fwd_half(kernels_half_format fmt, uint16_t *out_half, int ld_half,
                                   const float *x, const int32_t *positions,
                                   const float *inv_freq, int n_tokens, int n_heads,
                                   int head_dim) {
    rope_half("rope_fwd_half", fmt, out_half, ld_half, x, positions, inv_freq, n_tokens, n_heads,
              head_dim, 1.0f);
}

extern "C" void cuda_rope_bwd_half(kernels_half_format fmt, uint16_t *out_half, int ld_half,
                                   const float *dx, const int32_t *positions,
                                   const float *inv_freq, int n_tokens, int n_heads,
                                   int head_dim) {
    rope_half("rope_bwd_half", fmt, out_half, ld_half, dx, positions, inv_freq, n_tokens, n_heads,
              head_dim, -1.0f);
}
