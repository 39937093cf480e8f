// Cross-entropy over a chunk of rows, forward and backward fused, computing what
// kernels/cpu/cross_entropy.c computes:
//   loss_r = (max - z[t]) + log(sum exp(z - max))   (sum in double),
//   dz_r = (softmax(z_r) - onehot(t_r)) * grad_scale, in place when grad_scale != 0.
// Rows with a negative target: loss 0 and (with a gradient) a zero row. A target >= vocab
// yields a NaN loss instead of an out-of-bounds read. One block per row, two reading passes
// (a row of Llama 3's vocabulary is 513 KB: the 1024 rows of a logits chunk are 525 MB,
// far beyond L2, so every pass is a read from memory and the passes are the cost):
//   (1) the max and the sum together, online: each thread keeps a running max m and the sum
//       of expf(z - m) in double, rescaled by exp(m_old - m_new) (in double) when m grows;
//       the block then takes the max of the m's and rescales each thread's sum to it before
//       a fixed-tree sum (deterministic). The sum is the CPU's to double precision, not bit
//       for bit: each term is expf(z - m) * exp(m - max) instead of expf(z - max);
//   (2) e = expf(z - max) recomputed, scaled by grad_scale / sum, the gradient written once.
// cross_entropy_half is the same kernel writing the gradient through to_half's rounding
// (half_bits.cuh) into a 16-bit buffer, the logits only read: its output is
// to_half(cross_entropy's gradient) bit for bit, and its loss is cross_entropy's.
// Rows go four columns at a time (16-byte loads, 16- or 8-byte stores) where vocab and the
// pointers allow, one otherwise; which way a row goes changes no value but the order of the
// sum's terms.
#include <math.h>
#include <stdint.h>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/half_bits.cuh"

__device__ __forceinline__ float ce_exp(float z, float zmax) { return expf(z - zmax); }

// The running (max, sum) of pass 1, raised to a group's max before its terms are added. A
// NaN never raises it (the comparison is false) and reaches the sum through its own term; an
// empty sum rescaled from m = -inf stays 0 (exp(-inf) = 0).
struct ce_running {
    float m = -INFINITY;
    float base = 0.0f;  // what the terms subtract: m, or 0 while m is -inf
    double s = 0.0;
    __device__ __forceinline__ void raise(float group_max) {
        if (group_max > m) {
            s *= exp((double)m - (double)group_max);
            m = group_max;
        }
        // While m is -inf every logit so far is -inf (or NaN): exp(-inf - 0) = 0 is the term
        // exp(-inf - max) gives for any max above -inf, where exp(-inf - m) would be NaN. A
        // row of only -inf has a NaN loss either way (max - z[t] = -inf + inf).
        base = m == -INFINITY ? 0.0f : m;
    }
    __device__ __forceinline__ void add(float z) { s += (double)ce_exp(z, base); }
    __device__ __forceinline__ void add4(float4 v) {
        raise(fmaxf(fmaxf(v.x, v.y), fmaxf(v.z, v.w)));
        add(v.x), add(v.y), add(v.z), add(v.w);
    }
};

// Groups of four float4 a thread loads before it uses any: four 16-byte loads in flight per
// thread, which the branches of raise() (pass 1) and the stores (pass 2) would otherwise
// keep apart.
#define CE_BATCH 4

// f(v, i) for each float4 i of the row a thread owns (i = threadIdx.x + j * blockDim.x), in
// order, loaded CE_BATCH at a time.
template <class F>
__device__ __forceinline__ void ce_each4(const float4 *z4, int n4, F f) {
    const int stride = blockDim.x;
    int i = threadIdx.x;
    for (; i + (CE_BATCH - 1) * stride < n4; i += CE_BATCH * stride) {
        float4 v[CE_BATCH];
#pragma unroll
        for (int k = 0; k < CE_BATCH; k++) v[k] = z4[i + k * stride];
#pragma unroll
        for (int k = 0; k < CE_BATCH; k++) f(v[k], i + k * stride);
    }
    for (; i < n4; i += stride) f(z4[i], i);
}

// grad: f32_store on the logits themselves (in place) or half_store<F> (half_bits.cuh),
// taking (row, column) of the [n_rows, vocab] array. VEC: four columns per access, for
// vocab % 4 == 0 and 16-byte-aligned logits (8-byte-aligned 16-bit output).
template <class Store, bool VEC>
__global__ void cross_entropy_kernel(Store grad, const float *logits, float *loss,
                                     const int32_t *targets, int vocab, float grad_scale) {
    __shared__ float max_scratch[CUDA_THREADS];
    __shared__ double sum_scratch[CUDA_THREADS];
    const size_t row = blockIdx.x;
    const float *z = logits + row * vocab;
    const float4 *z4 = reinterpret_cast<const float4 *>(z);
    const int n4 = vocab / 4;
    const int32_t target = targets[row];
    if (target < 0) {  // uniform over the block: no thread reaches a barrier below
        if (threadIdx.x == 0) loss[row] = 0.0f;
        if (grad_scale != 0.0f) {
            if (VEC)
                for (int i = threadIdx.x; i < n4; i += blockDim.x) grad.four(row, 4 * i, make_float4(0.0f, 0.0f, 0.0f, 0.0f));
            else
                for (int i = threadIdx.x; i < vocab; i += blockDim.x) grad(row, i, 0.0f);
        }
        return;
    }
    // Read before pass 2 may overwrite it (in place); the barriers of the reductions order
    // this read before any write.
    const float z_target = target < vocab ? z[target] : NAN;
    ce_running run;
    if (VEC) {
        ce_each4(z4, n4, [&](float4 v, int) { run.add4(v); });
    } else {
#pragma unroll 4
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            run.raise(z[i]);
            run.add(z[i]);
        }
    }
    const float zmax = block_max(run.m, max_scratch);
    // A thread that saw only -inf (m = -inf, s = 0) contributes 0 * exp(-inf) = 0 below a
    // finite max; a row whose max is -inf has a NaN loss anyway.
    const double part = run.s * exp((double)run.m - (double)zmax);
    const double sum = block_sum(part, sum_scratch);
    if (threadIdx.x == 0) loss[row] = (float)(((double)zmax - z_target) + log(sum));
    if (grad_scale == 0.0f) return;
    const float scale_over_sum = (float)(grad_scale / sum);
    // Two roundings, as the CPU's separate "z *= s" and "z[t] -= grad_scale".
    auto dz = [&](float zi, int i) {
        const float scaled = __fmul_rn(ce_exp(zi, zmax), scale_over_sum);
        return i == target ? scaled - grad_scale : scaled;
    };
    auto dz4 = [&](float4 v, int i) {
        const int j = 4 * i;
        grad.four(row, j, make_float4(dz(v.x, j), dz(v.y, j + 1), dz(v.z, j + 2), dz(v.w, j + 3)));
    };
    if (VEC) {
        ce_each4(z4, n4, dz4);
    } else {
#pragma unroll 4
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) grad(row, i, dz(z[i], i));
    }
}

template <class Store>
static void ce_launch(Store grad, bool vec, const float *logits, float *loss,
                      const int32_t *targets, int n_rows, int vocab, float grad_scale) {
    if (vec)
        CUDA_LAUNCH(n_rows, CUDA_THREADS, 0, cross_entropy_kernel<Store, true>)(
            grad, logits, loss, targets, vocab, grad_scale);
    else
        CUDA_LAUNCH(n_rows, CUDA_THREADS, 0, cross_entropy_kernel<Store, false>)(
            grad, logits, loss, targets, vocab, grad_scale);
}

static bool ce_aligned(const void *p, size_t bytes) { return (uintptr_t)p % bytes == 0; }

extern "C" void cuda_cross_entropy(float *logits, float *loss, const int32_t *targets,
                                   int n_rows, int vocab, float grad_scale) {
    if (n_rows <= 0 || vocab <= 0) return;
    const bool vec = vocab % 4 == 0 && ce_aligned(logits, 16);
    ce_launch(f32_store{logits, vocab}, vec, logits, loss, targets, n_rows, vocab, grad_scale);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_cross_entropy_half(kernels_half_format fmt, uint16_t *dlogits_half,
                                        const float *logits, float *loss, const int32_t *targets,
                                        int n_rows, int vocab, float grad_scale) {
    if (!cuda_known_half_format(fmt, "cross_entropy_half", __FILE__, __LINE__)) return;
    if (n_rows <= 0 || vocab <= 0) return;
    const bool vec = vocab % 4 == 0 && ce_aligned(logits, 16) && ce_aligned(dlogits_half, 8);
    if (fmt == KERNELS_BF16)
        ce_launch(half_store<KERNELS_BF16>{dlogits_half, vocab, NULL, vocab}, vec, logits, loss,
                  targets, n_rows, vocab, grad_scale);
    else
        ce_launch(half_store<KERNELS_FP16>{dlogits_half, vocab, NULL, vocab}, vec, logits, loss,
                  targets, n_rows, vocab, grad_scale);
    CUDA_CHECK_LAUNCH();
}
