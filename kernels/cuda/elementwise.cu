// Element-wise ops: add, axpy, scale, counter-based dropout, and the sum of squares for
// gradient norms, mirroring kernels/cpu/elementwise.c. Grid-stride loops over size_t n.
// out may alias an input of add (each element is read before it is written).
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "kernels/cuda/cuda_common.cuh"

#define GRID_STRIDE_LOOP(i, n)                                                    \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n);     \
         i += (size_t)gridDim.x * blockDim.x)

__global__ void add_kernel(float *out, const float *a, const float *b, size_t n) {
    GRID_STRIDE_LOOP(i, n) out[i] = a[i] + b[i];
}

__global__ void axpy_kernel(float *y, float alpha, const float *x, size_t n) {
    // __fmul_rn keeps y + alpha*x two roundings, as on the CPU (no FMA contraction).
    GRID_STRIDE_LOOP(i, n) y[i] = y[i] + __fmul_rn(alpha, x[i]);
}

__global__ void scale_kernel(float *x, float alpha, size_t n) {
    GRID_STRIDE_LOOP(i, n) x[i] *= alpha;
}

// splitmix64 exactly as kernels.h specifies; unsigned 64-bit arithmetic wraps the same on
// host and device, so the mask is bit-identical to the CPU backend's.
__device__ inline uint64_t splitmix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Kept values are divided by 1 - p (IEEE division: nvcc's default -prec-div=true; the
// backend must never be built with --use_fast_math), as the CPU does.
__global__ void dropout_kernel(float *out, const float *x, float p, uint64_t seed,
                               uint64_t offset, size_t n) {
    const float keep_scale = 1.0f - p;
    GRID_STRIDE_LOOP(i, n) {
        uint64_t u = splitmix64(seed ^ splitmix64(offset + i));
        float uniform = (float)(u >> 40) * 0x1p-24f;
        out[i] = uniform >= p ? x[i] / keep_scale : 0.0f;
    }
}

extern "C" void cuda_add(float *out, const float *a, const float *b, size_t n) {
    if (!n) return;
    add_kernel<<<cuda_grid_for(n), CUDA_THREADS>>>(out, a, b, n);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_axpy(float *y, float alpha, const float *x, size_t n) {
    if (!n) return;
    axpy_kernel<<<cuda_grid_for(n), CUDA_THREADS>>>(y, alpha, x, n);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_scale(float *x, float alpha, size_t n) {
    if (!n) return;
    scale_kernel<<<cuda_grid_for(n), CUDA_THREADS>>>(x, alpha, n);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_dropout(float *out, const float *x, float p, uint64_t seed, uint64_t offset,
                             size_t n) {
    if (!n) return;
    dropout_kernel<<<cuda_grid_for(n), CUDA_THREADS>>>(out, x, p, seed, offset, n);
    CUDA_CHECK_LAUNCH();
}

// Sum of squares in double, deterministic: SUMSQ_BLOCKS blocks each sum a fixed strided
// subset of the elements (thread t of block b takes i = b*T + t + k*B*T, k ascending) and
// reduce it in a fixed tree; one block then adds the partials in a fixed tree. The launch
// shape never depends on the device, so the bits repeat run to run (they differ from the
// CPU's block order by rounding only).
#define SUMSQ_BLOCKS 512

__global__ void sum_squares_partial_kernel(double *partial, const float *x, size_t n) {
    __shared__ double scratch[CUDA_THREADS];
    double acc = 0.0;
    GRID_STRIDE_LOOP(i, n) acc += (double)x[i] * x[i];
    double total = block_sum(acc, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

__global__ void sum_partials_kernel(double *result, const double *partial, int count) {
    __shared__ double scratch[SUMSQ_BLOCKS];
    scratch[threadIdx.x] = threadIdx.x < (unsigned)count ? partial[threadIdx.x] : 0.0;
    __syncthreads();
    for (unsigned int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) scratch[threadIdx.x] += scratch[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) *result = scratch[0];
}

extern "C" double cuda_sum_squares(const float *x, size_t n) {
    if (!n) return 0.0;
    double *partial = NULL;
    // Stream-ordered allocation from the default pool: cheap after the first call.
    CUDA_CHECK(cudaMallocAsync((void **)&partial, (SUMSQ_BLOCKS + 1) * sizeof(double), 0));
    if (!partial) return NAN;
    sum_squares_partial_kernel<<<SUMSQ_BLOCKS, CUDA_THREADS>>>(partial, x, n);
    CUDA_CHECK_LAUNCH();
    sum_partials_kernel<<<1, SUMSQ_BLOCKS>>>(partial + SUMSQ_BLOCKS, partial, SUMSQ_BLOCKS);
    CUDA_CHECK_LAUNCH();
    double fetched = NAN;
    CUDA_CHECK(cudaMemcpy(&fetched, partial + SUMSQ_BLOCKS, sizeof(double), cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaFreeAsync(partial, 0));
    return fetched;
}

// Many sum_squares at once (gradient-norm blocks): CUDA block b reproduces cuda_sum_squares on
// x[b*block, ...) operation for operation, so the bits are the same. With len <= SUMSQ_BLOCKS
// * CUDA_THREADS every thread of the partial kernel sees at most one element, partial j is the
// block_sum of chunk j's squares (0.0 + a == a), the partials past the last chunk are zeros,
// and the one-block tree over SUMSQ_BLOCKS partials adds those zeros exactly; here the 256
// threads walk the same halving tree over the same SUMSQ_BLOCKS slots.
__global__ void sum_squares_blocks_kernel(double *sums, const float *x, size_t n, size_t block) {
    __shared__ double scratch[CUDA_THREADS];
    __shared__ double partial[SUMSQ_BLOCKS];
    const size_t start = (size_t)blockIdx.x * block;
    const size_t len = n - start < block ? n - start : block;
    for (unsigned int j = threadIdx.x; j < SUMSQ_BLOCKS; j += blockDim.x) partial[j] = 0.0;
    __syncthreads();
    const unsigned int chunks = (unsigned int)((len + CUDA_THREADS - 1) / CUDA_THREADS);
    for (unsigned int c = 0; c < chunks; c++) {
        size_t i = (size_t)c * CUDA_THREADS + threadIdx.x;
        double sq = i < len ? (double)x[start + i] * x[start + i] : 0.0;
        double total = block_sum(sq, scratch);
        if (threadIdx.x == 0) partial[c] = total;
    }
    __syncthreads();
    for (unsigned int stride = SUMSQ_BLOCKS / 2; stride > 0; stride /= 2) {
        for (unsigned int j = threadIdx.x; j < stride; j += blockDim.x) partial[j] += partial[j + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) sums[blockIdx.x] = partial[0];
}

extern "C" void cuda_sum_squares_blocks(const float *x, size_t n, size_t block, double *host_sums) {
    if (!n || !block) return;
    const size_t n_blocks = (n + block - 1) / block;
    if (block > (size_t)SUMSQ_BLOCKS * CUDA_THREADS || n_blocks > 0x7fffffffu) {
        // Blocks too long to reproduce in one CUDA block: one sum_squares each (slow, exact).
        for (size_t b = 0; b < n_blocks; b++)
            host_sums[b] = cuda_sum_squares(x + b * block, n - b * block < block ? n - b * block : block);
        return;
    }
    double *sums = NULL;
    CUDA_CHECK(cudaMallocAsync((void **)&sums, n_blocks * sizeof(double), 0));
    if (!sums) {
        for (size_t b = 0; b < n_blocks; b++) host_sums[b] = NAN;
        return;
    }
    sum_squares_blocks_kernel<<<(unsigned int)n_blocks, CUDA_THREADS>>>(sums, x, n, block);
    CUDA_CHECK_LAUNCH();
    CUDA_CHECK(cudaMemcpy(host_sums, sums, n_blocks * sizeof(double), cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaFreeAsync(sums, 0));
}
