// Cross-entropy over a chunk of rows, forward and backward fused, mirroring
// kernels/cpu/cross_entropy.c:
//   loss_r = (max - z[t]) + log(sum exp(z - max))   (sum in double),
//   dz_r = (softmax(z_r) - onehot(t_r)) * grad_scale, in place when grad_scale != 0.
// Rows with a negative target: loss 0 and (with a gradient) a zero row. A target >= vocab
// yields a NaN loss instead of an out-of-bounds read. One block per row, three reading
// passes, each reduction a fixed tree (deterministic): (1) the max; (2) the sum of
// e = exp(z - max), stored nowhere; (3) e recomputed, scaled, and the gradient written once.
// Pass 3's e is pass 2's bit for bit: the same inline function (ce_exp) on the same two
// values, and its result feeds no contractible operation in either pass (a conversion to
// double in pass 2, __fmul_rn in pass 3). So the gradient is what the older kernel gave by
// storing e in pass 2 and scaling it in pass 3, with one write pass over the row instead of
// two. cross_entropy_half is the same kernel writing the gradient through to_half's
// rounding (half_bits.cuh) into a 16-bit buffer, the logits only read: its output is
// to_half(cross_entropy's gradient) bit for bit, and its loss is cross_entropy's.
#include <math.h>
#include <stdint.h>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/half_bits.cuh"

__device__ __forceinline__ float ce_exp(float z, float zmax) { return expf(z - zmax); }

// grad: f32_store on the logits themselves (in place) or half_store<F> (half_bits.cuh),
// taking (row, column) of the [n_rows, vocab] array.
template <class Store>
__global__ void cross_entropy_kernel(Store grad, const float *logits, float *loss,
                                     const int32_t *targets, int vocab, float grad_scale) {
    __shared__ float max_scratch[CUDA_THREADS];
    __shared__ double sum_scratch[CUDA_THREADS];
    const size_t row = blockIdx.x;
    const float *z = logits + row * vocab;
    const int32_t target = targets[row];
    if (target < 0) {  // uniform over the block: no thread reaches a barrier below
        if (threadIdx.x == 0) loss[row] = 0.0f;
        if (grad_scale != 0.0f)
            for (int i = threadIdx.x; i < vocab; i += blockDim.x) grad(row, i, 0.0f);
        return;
    }
    // Read before pass 3 may overwrite it (in place); the barriers of the reductions order
    // this read before any write.
    const float z_target = target < vocab ? z[target] : NAN;
    float local_max = -INFINITY;
#pragma unroll 4
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) local_max = fmaxf(local_max, z[i]);
    const float zmax = block_max(local_max, max_scratch);
    double local_sum = 0.0;
#pragma unroll 4
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) local_sum += ce_exp(z[i], zmax);
    const double sum = block_sum(local_sum, sum_scratch);
    if (threadIdx.x == 0) loss[row] = (float)(((double)zmax - z_target) + log(sum));
    if (grad_scale == 0.0f) return;
    const float scale_over_sum = (float)(grad_scale / sum);
#pragma unroll 4
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        // Two roundings, as the CPU's separate "z *= s" and "z[t] -= grad_scale".
        float scaled = __fmul_rn(ce_exp(z[i], zmax), scale_over_sum);
        grad(row, i, i == target ? scaled - grad_scale : scaled);
    }
}

extern "C" void cuda_cross_entropy(float *logits, float *loss, const int32_t *targets,
                                   int n_rows, int vocab, float grad_scale) {
    if (n_rows <= 0 || vocab <= 0) return;
    CUDA_LAUNCH(n_rows, CUDA_THREADS, 0, cross_entropy_kernel<f32_store>)(
        f32_store{logits, vocab}, logits, loss, targets, vocab, grad_scale);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_cross_entropy_half(kernels_half_format fmt, uint16_t *dlogits_half,
                                        const float *logits, float *loss, const int32_t *targets,
                                        int n_rows, int vocab, float grad_scale) {
    if (!cuda_known_half_format(fmt, "cross_entropy_half", __FILE__, __LINE__)) return;
    if (n_rows <= 0 || vocab <= 0) return;
    if (fmt == KERNELS_BF16)
        CUDA_LAUNCH(n_rows, CUDA_THREADS, 0, cross_entropy_kernel<half_store<KERNELS_BF16>>)(
            half_store<KERNELS_BF16>{dlogits_half, vocab, NULL, vocab}, logits, loss, targets, vocab,
            grad_scale);
    else
        CUDA_LAUNCH(n_rows, CUDA_THREADS, 0, cross_entropy_kernel<half_store<KERNELS_FP16>>)(
            half_store<KERNELS_FP16>{dlogits_half, vocab, NULL, vocab}, logits, loss, targets, vocab,
            grad_scale);
    CUDA_CHECK_LAUNCH();
}
