// Cross-entropy over a chunk of rows, forward and backward fused, mirroring
// kernels/cpu/cross_entropy.c:
//   loss_r = (max - z[t]) + log(sum exp(z - max))   (sum in double),
//   dz_r = (softmax(z_r) - onehot(t_r)) * grad_scale, in place when grad_scale != 0.
// Rows with a negative target: loss 0 and (with a gradient) a zero row. A target >= vocab
// yields a NaN loss instead of an out-of-bounds read. One block per row, three passes
// (max; exponentials and their sum, stored in place when a gradient is wanted; scaling),
// each reduction a fixed tree: deterministic.
#include <math.h>
#include <stdint.h>

#include "kernels/cuda/cuda_common.cuh"

__global__ void cross_entropy_kernel(float *logits, float *loss, const int32_t *targets,
                                     int vocab, float grad_scale) {
    __shared__ float max_scratch[CUDA_THREADS];
    __shared__ double sum_scratch[CUDA_THREADS];
    const size_t row = blockIdx.x;
    float *z = logits + row * vocab;
    const int32_t target = targets[row];
    if (target < 0) {  // uniform over the block: no thread reaches a barrier below
        if (threadIdx.x == 0) loss[row] = 0.0f;
        if (grad_scale != 0.0f)
            for (int i = threadIdx.x; i < vocab; i += blockDim.x) z[i] = 0.0f;
        return;
    }
    // Read before pass 2 may overwrite it; the barriers in block_max order the two.
    const float z_target = target < vocab ? z[target] : NAN;
    float local_max = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) local_max = fmaxf(local_max, z[i]);
    const float zmax = block_max(local_max, max_scratch);
    double local_sum = 0.0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float e = expf(z[i] - zmax);
        if (grad_scale != 0.0f) z[i] = e;
        local_sum += e;
    }
    const double sum = block_sum(local_sum, sum_scratch);
    if (threadIdx.x == 0) loss[row] = (float)(((double)zmax - z_target) + log(sum));
    if (grad_scale == 0.0f) return;
    const float scale_over_sum = (float)(grad_scale / sum);
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        // Two roundings, as the CPU's separate "z *= s" and "z[t] -= grad_scale".
        float scaled = __fmul_rn(z[i], scale_over_sum);
        z[i] = i == target ? scaled - grad_scale : scaled;
    }
}

extern "C" void cuda_cross_entropy(float *logits, float *loss, const int32_t *targets,
                                   int n_rows, int vocab, float grad_scale) {
    if (n_rows <= 0 || vocab <= 0) return;
    cross_entropy_kernel<<<n_rows, CUDA_THREADS>>>(logits, loss, targets, vocab, grad_scale);
    CUDA_CHECK_LAUNCH();
}
