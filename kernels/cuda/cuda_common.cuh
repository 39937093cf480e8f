// cuda_common: what every kernels/cuda source shares: the checking macros that feed the
// sticky error slot (cuda_status.h), grid sizing for grid-stride loops, the fixed-order
// block reductions (same input and launch shape -> same bits, every run), vectorised
// element-wise launches, the shape of row-by-column launches, and the once-per-device
// shared-memory opt-in of big-tile kernels.
#ifndef CTUNE_CUDA_COMMON_CUH
#define CTUNE_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <initializer_list>

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

// kernel<<<grid, block, smem>>>, spelled so that the host emulator (tests/emu/) can compile
// the sources that launch through it with its own launcher (its header, included first,
// defines CUDA_LAUNCH). The kernel comes last so a template instance with commas (f<T, 4>)
// is named directly; every launch names all its template arguments, as the emulator takes
// the kernel as a function pointer and cannot deduce them from the call. smem 0 for none.
#ifndef CUDA_LAUNCH
#define CUDA_LAUNCH(grid, block, smem, ...) __VA_ARGS__<<<grid, block, smem>>>
#endif

#define CUDA_THREADS 256

// Blocks for a grid-stride loop over n elements: enough to fill any current GPU, small
// enough that a block does several elements when n is large.
static inline unsigned int cuda_grid_for(size_t n) {
    size_t blocks = (n + CUDA_THREADS - 1) / CUDA_THREADS;
    if (blocks < 1) blocks = 1;
    if (blocks > 65535) blocks = 65535;
    return (unsigned int)blocks;
}

// Element i of [0, n) for every thread of such a grid, i ascending by the grid's size.
#define GRID_STRIDE_LOOP(i, n)                                                    \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n);     \
         i += (size_t)gridDim.x * blockDim.x)

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

// ---- vectorised element-wise kernels
// A kernel over [0, n) moves 16 bytes per fp32 access (float4) and 8 per 16-bit access
// (four values) where every pointer allows: `head` scalar elements until all of them sit
// on a 4-element boundary together, `groups` aligned groups of 4, and the scalar rest
// (fewer than 4 at the end). Pointers whose misalignments differ (or that are not aligned to
// their own element) make every element scalar. Which path an element takes never changes
// its value: the op computes each element with the same scalar code either way.
struct cuda_vec4_plan {
    size_t head, groups, scalars;  // scalars = head + the tail
};

static inline cuda_vec4_plan cuda_vec4_plan_for(size_t n, std::initializer_list<const void *> f32,
                                                std::initializer_list<const void *> h16) {
    int phase = -1;  // the common element offset mod 4; -1 unset, -2 none
    auto visit = [&phase](const void *p, uintptr_t elem) {
        if (!p || phase == -2) return;
        const uintptr_t a = (uintptr_t)p;
        const int here = a % elem ? -2 : (int)((a / elem) % 4);
        phase = phase == -1 || phase == here ? here : -2;
    };
    for (const void *p : f32) visit(p, 4);
    for (const void *p : h16) visit(p, 2);
    cuda_vec4_plan plan;
    plan.head = phase < 0 ? n : (size_t)((4 - phase) % 4);
    if (plan.head > n) plan.head = n;
    plan.groups = (n - plan.head) / 4;
    plan.scalars = n - 4 * plan.groups;
    return plan;
}

// Op provides __device__ one(i) (element i) and four(i) (elements i..i+3, i aligned).
template <class Op>
__global__ void cuda_vec4_kernel(Op op, cuda_vec4_plan plan) {
    const size_t first = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t g = first; g < plan.groups; g += stride) op.four(plan.head + 4 * g);
    for (size_t j = first; j < plan.scalars; j += stride)
        op.one(j < plan.head ? j : j + 4 * plan.groups);
}

// The caller checks the launch (CUDA_CHECK_LAUNCH), so a failure names its file.
template <class Op>
static inline void cuda_vec4_launch(const Op &op, const cuda_vec4_plan &plan) {
    const size_t work = plan.groups > plan.scalars ? plan.groups : plan.scalars;
    if (!work) return;
    CUDA_LAUNCH(cuda_grid_for(work), CUDA_THREADS, 0, cuda_vec4_kernel<Op>)(op, plan);
}

// ---- row-by-column launches
// The shape of a 2D grid-stride loop over [rows, units] (x over a row's units, consecutive
// threads on consecutive units so accesses coalesce; y over rows): the block's width is the
// row's, rounded up to a power of two and at most CUDA_THREADS, so a narrow row (a LoRA rank
// of 16 columns) keeps every thread busy; about as many blocks as cuda_grid_for allows a 1D
// loop, the loops striding past the rest. rows, units >= 1.
static inline void cuda_rows_shape(int rows, int units, dim3 *grid, dim3 *block) {
    int bx = 1;
    while (bx < units && bx < CUDA_THREADS) bx *= 2;
    *block = dim3((unsigned int)bx, (unsigned int)(CUDA_THREADS / bx));
    size_t gx_wanted = ((size_t)units + bx - 1) / bx;
    unsigned int gx = (unsigned int)(gx_wanted < 65535u ? gx_wanted : 65535u);
    size_t gy = ((size_t)rows + block->y - 1) / block->y, gy_max = 65535u / gx;
    if (gy > gy_max) gy = gy_max;
    *grid = dim3(gx, (unsigned int)gy);
}

// ---- dynamic shared memory beyond 48 KiB
// A kernel may use more than 48 KiB of dynamic shared memory only after an opt-in
// (cudaFuncSetAttribute), which is per kernel and per device and costs driver calls, as does
// the query of the device's limit. Both are done once per (kernel, device): the opt-in is
// set to all the dynamic shared memory the device allows the kernel, so it holds for every
// later launch the caller checks against the returned size. Process-wide state, like
// half.cu's cuBLASLt cache and for the same reason (the table carries no context): a mutex
// guards the few entries (one per kernel instantiation and device); a full table only stops
// caching (correct, slower); two threads racing on one kernel set the same value twice.
// Each including source has its own table (a static in a header), which is all it needs.
// Returns the bytes a launch of kernel may request on the current device; 0 when a call
// failed (recorded), which the callers treat as "does not fit".
#define CUDA_SMEM_CACHE_SLOTS 64

static inline size_t cuda_smem_opt_in(const void *kernel) {
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static struct { const void *kernel; int device; size_t bytes; } done[CUDA_SMEM_CACHE_SLOTS];
    static int used = 0;
    int device = 0;
    size_t bytes = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    pthread_mutex_lock(&lock);
    for (int i = 0; i < used && !bytes; i++)
        if (done[i].kernel == kernel && done[i].device == device) bytes = done[i].bytes;
    pthread_mutex_unlock(&lock);
    if (bytes) return bytes;
    int limit = 0;
    cudaFuncAttributes attr;
    cudaError_t status =
        cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (status == cudaSuccess) status = cudaFuncGetAttributes(&attr, kernel);
    if (status == cudaSuccess && (size_t)limit > attr.sharedSizeBytes) {
        bytes = (size_t)limit - attr.sharedSizeBytes;  // static and dynamic share the limit
        status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)bytes);
    }
    if (status != cudaSuccess) {
        ctune_cuda_record(__FILE__, __LINE__, "shared memory opt-in", cudaGetErrorString(status));
        cudaGetLastError();  // recorded: not to be reported again by the next launch check
        return 0;
    }
    if (!bytes) return 0;
    pthread_mutex_lock(&lock);
    if (used < CUDA_SMEM_CACHE_SLOTS) done[used++] = {kernel, device, bytes};
    pthread_mutex_unlock(&lock);
    return bytes;
}

#endif
