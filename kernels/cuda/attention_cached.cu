// Attention of new tokens against a KV cache (kernels.h: attention_cached /
// attention_cached_half): generation's attention once the prompt is cached, one query row
// per layer and step. The work is reading the cache, so the kernel is laid out for that.
//
// One block per (query row i, head h), CACHED_WARPS warps. Warp w takes the keys w,
// w + CACHED_WARPS, ... up to n_past + i; lane c holds columns c, c + 32, ... of the query
// and of its accumulator (head_dim <= CACHED_MAX_D), so a key's row is read by the 32
// lanes in consecutive addresses. A key's score is the lanes' partial dots summed with
// shuffles (every lane ends with it); each warp keeps its own online softmax (running max
// m and sum l, the accumulator rescaled by exp(m_old - m_new) when a key raises m). The
// warps' states are merged through shared memory at the end: M = max m_w,
// out = sum_w exp(m_w - M) acc_w / sum_w exp(m_w - M) l_w. fp32 throughout (16-bit q, k, v
// widened exactly), so results agree with the CPU reference to rounding, not bits.
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "kernels/cuda/attention_dims.cuh"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/half_bits.cuh"

#define CACHED_WARPS 4
#define CACHED_MAX_D 256
#define CACHED_COLS (CACHED_MAX_D / 32) // columns per lane

// fp32 (HALF false) or 16-bit of F elements read as fp32.
template <bool HALF, kernels_half_format F>
__device__ __forceinline__ float cached_load(const void *p, size_t i) {
    if (HALF) return half_widen<F>(((const uint16_t *)p)[i]);
    return ((const float *)p)[i];
}

template <bool HALF, kernels_half_format F>
__global__ void __launch_bounds__(CACHED_WARPS * 32)
    attention_cached_kernel(float *out, uint16_t *out_half, int ld_out, const void *q, const void *k, const void *v,
                            int n_past, attention_dims sh) {
    __shared__ float warp_m[CACHED_WARPS], warp_l[CACHED_WARPS];
    __shared__ float warp_acc[CACHED_WARPS][CACHED_MAX_D];
    const int i = (int)blockIdx.x, h = (int)blockIdx.y, d = sh.d;
    const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
    const size_t q_at = (size_t)i * sh.q_stride + (size_t)h * d;
    const size_t kv_at = (size_t)(h / sh.group) * d;
    float q_cols[CACHED_COLS], acc[CACHED_COLS];
#pragma unroll
    for (int t = 0; t < CACHED_COLS; t++) {
        const int c = lane + 32 * t;
        q_cols[t] = c < d ? cached_load<HALF, F>(q, q_at + c) : 0.0f;
        acc[t] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int j = warp; j <= n_past + i; j += CACHED_WARPS) {
        const size_t row = (size_t)j * sh.kv_stride + kv_at;
        float s = 0.0f;
#pragma unroll
        for (int t = 0; t < CACHED_COLS; t++) {
            const int c = lane + 32 * t;
            if (c < d) s += q_cols[t] * cached_load<HALF, F>(k, row + c);
        }
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffffu, s, offset);
        s *= sh.scale;
        if (s > m) { // exp(-inf) is 0: the warp's first key starts from nothing
            const float r = expf(m - s);
            l *= r;
#pragma unroll
            for (int t = 0; t < CACHED_COLS; t++) acc[t] *= r;
            m = s;
        }
        const float p = expf(s - m);
        l += p;
#pragma unroll
        for (int t = 0; t < CACHED_COLS; t++) {
            const int c = lane + 32 * t;
            if (c < d) acc[t] += p * cached_load<HALF, F>(v, row + c);
        }
    }
    if (lane == 0) {
        warp_m[warp] = m;
        warp_l[warp] = l;
    }
#pragma unroll
    for (int t = 0; t < CACHED_COLS; t++) {
        const int c = lane + 32 * t;
        if (c < d) warp_acc[warp][c] = acc[t];
    }
    __syncthreads();
    float top = warp_m[0];
    for (int w = 1; w < CACHED_WARPS; w++) top = fmaxf(top, warp_m[w]);
    float sum = 0.0f, weights[CACHED_WARPS];
    for (int w = 0; w < CACHED_WARPS; w++) { // a warp that saw no key: m = -inf, weight 0
        weights[w] = expf(warp_m[w] - top);
        sum += weights[w] * warp_l[w];
    }
    const float inv = 1.0f / sum;
    for (int c = (int)threadIdx.x; c < d; c += CACHED_WARPS * 32) {
        float y = 0.0f;
        for (int w = 0; w < CACHED_WARPS; w++) y += weights[w] * warp_acc[w][c];
        y *= inv;
        if (out) out[q_at + c] = y;
        if (HALF) out_half[(size_t)i * ld_out + (size_t)h * d + c] = half_bits<F>(y);
    }
}

static bool cached_shape(attention_dims *sh, int n_new, int n_past, int n_heads, int n_kv_heads, int head_dim,
                         float scale) {
    if (n_new <= 0) return false;
    if (n_past < 0 || !attention_dims_valid(1, n_past + n_new, n_heads, n_kv_heads, head_dim, CACHED_MAX_D)) {
        ctune_cuda_record(__FILE__, __LINE__, "attention_cached",
                          "unsupported shape (needs n_past >= 0, 0 < head_dim <= 256, n_heads a multiple of "
                          "n_kv_heads, n_heads <= 65535)");
        return false;
    }
    attention_dims_fill(sh, NULL, 1, n_past + n_new, n_heads, n_kv_heads, head_dim, scale);
    return true;
}

extern "C" void cuda_attention_cached(float *out, const float *q, const float *k, const float *v, int n_new,
                                      int n_past, int n_heads, int n_kv_heads, int head_dim, float scale) {
    attention_dims sh;
    if (!cached_shape(&sh, n_new, n_past, n_heads, n_kv_heads, head_dim, scale)) return;
    const dim3 grid((unsigned)n_new, (unsigned)n_heads);
    CUDA_LAUNCH(grid, CACHED_WARPS * 32, 0, attention_cached_kernel<false, KERNELS_BF16>)(out, NULL, 0, q, k, v,
                                                                                          n_past, sh);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_attention_cached_half(kernels_half_format fmt, uint16_t *out_half, int ld_out, float *out,
                                           const uint16_t *q, const uint16_t *k, const uint16_t *v, int n_new,
                                           int n_past, int n_heads, int n_kv_heads, int head_dim, float scale) {
    if (!cuda_known_half_format(fmt, "attention_cached_half", __FILE__, __LINE__)) return;
    attention_dims sh;
    if (!cached_shape(&sh, n_new, n_past, n_heads, n_kv_heads, head_dim, scale)) return;
    if (ld_out < n_heads * head_dim) {
        ctune_cuda_record(__FILE__, __LINE__, "attention_cached_half", "ld_out below n_heads * head_dim");
        return;
    }
    const dim3 grid((unsigned)n_new, (unsigned)n_heads);
    if (fmt == KERNELS_BF16)
        CUDA_LAUNCH(grid, CACHED_WARPS * 32, 0, attention_cached_kernel<true, KERNELS_BF16>)(out, out_half, ld_out, q, k,
                                                                                             v, n_past, sh);
    else
        CUDA_LAUNCH(grid, CACHED_WARPS * 32, 0, attention_cached_kernel<true, KERNELS_FP16>)(out, out_half, ld_out, q, k,
                                                                                             v, n_past, sh);
    CUDA_CHECK_LAUNCH();
}
