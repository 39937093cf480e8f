// cuda_common: what every kernels/cuda source shares: the checking macros that feed the
// sticky error slot (cuda_status.h), grid sizing for grid-stride loops, and the
// fixed-order block reductions (same input and launch shape -> same bits, every run).
#ifndef CTUNE_CUDA_COMMON_CUH
#define CTUNE_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <stddef.h>

#include "kernels/cuda/cuda_ops.h"

// Records "file:line: what: message" as the backend's error unless one is already held.
void ctune_cuda_record(const char *file, int line, const char *what, const char *message);

// Checks a CUDA runtime call; failures are recorded, never fatal (the table returns void).
#define CUDA_CHECK(call)                                                                 \
    do {                                                                                 \
        cudaError_t cuda_check_status_ = (call);                                         \
        if (cuda_check_status_ != cudaSuccess)                                           \
            ctune_cuda_record(__FILE__, __LINE__, #call,                                 \
                              cudaGetErrorString(cuda_check_status_));                  \
    } while (0)

// After a kernel launch: catches bad launch configurations at once (execution errors
// surface at the next synchronising call, also recorded).
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

#define CUDA_THREADS 256

// Blocks for a grid-stride loop over n elements: enough to fill any current GPU, small
// enough that a block does several elements when n is large.
static inline unsigned int cuda_grid_for(size_t n) {
    size_t blocks = (n + CUDA_THREADS - 1) / CUDA_THREADS;
    if (blocks < 1) blocks = 1;
    if (blocks > 65535) blocks = 65535;
    return (unsigned int)blocks;
}

// Sum over a block of blockDim.x threads (a power of two, at most 1024) in a fixed tree
// order; every thread gets the result. scratch holds blockDim.x values.
template <typename T>
__device__ inline T block_sum(T value, T *scratch) {
    scratch[threadIdx.x] = value;
    __syncthreads();
    for (unsigned int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) scratch[threadIdx.x] += scratch[threadIdx.x + stride];
        __syncthreads();
    }
    T total = scratch[0];
    __syncthreads();  // scratch may be reused by the caller right after
    return total;
}

#define CUDA_FULL_MASK 0xffffffffu

// Butterfly reductions over a warp: every lane ends with bitwise the same result (each step
// combines the same two values, in either order).
__device__ inline float warp_max(float x) {
    for (int o = 16; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(CUDA_FULL_MASK, x, o));
    return x;
}

__device__ inline float warp_sum(float x) {
    for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(CUDA_FULL_MASK, x, o);
    return x;
}

__device__ inline float block_max(float value, float *scratch) {
    scratch[threadIdx.x] = value;
    __syncthreads();
    for (unsigned int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride)
            scratch[threadIdx.x] = fmaxf(scratch[threadIdx.x], scratch[threadIdx.x + stride]);
        __syncthreads();
    }
    float total = scratch[0];
    __syncthreads();
    return total;
}

#endif
