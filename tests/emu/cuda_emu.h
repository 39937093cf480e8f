// cuda_emu: runs CUDA kernels on the host, for tests of kernels that no GPU has run yet.
//
// A kernel source is compiled as C++ with this directory first on the include path: the
// stub <cuda_runtime.h>, <cuda_bf16.h>, <cuda_fp16.h> and kernels/cuda/cuda_common.cuh
// lead here, and kernels/cuda/attention_mma_ptx.cuh is replaced by emulated instructions.
// A launch runs the grid's blocks one after another; a block's threads are fibers (ucontext)
// on one host thread, each running until it reaches a barrier:
//  - __syncthreads releases the block when every live thread has reached it;
//  - warp-wide instructions (shuffles, votes, ldmatrix, mma) wait for all 32 lanes, then the
//    last lane to arrive computes every lane's result; lanes that reach different warp-wide
//    instructions, or a warp whose lanes wait at different barriers, stop the run with a
//    message (on a GPU: a hang or undefined results);
//  - cp.async copies are queued per thread and done when cp.async.wait_group says they must
//    be complete (or at once: emu_options.eager_copies), so reading a tile before waiting for
//    it reads stale data; shared memory is filled with 0xFF (NaN in every float format)
//    before each block, and its bytes past the launch's dynamic size must stay so.
// The order in which runnable fibers resume can be shuffled (emu_options.schedule_seed), so
// a race between threads of a block gives different results under different seeds.
// Device allocations (emu_device_alloc, cudaMallocAsync) sit against a page the process may
// not touch: after the buffer (emu_options.guard_after) or before it, so a stray access
// past either end of a buffer faults. cp.async sources are checked against the allocations.
// Misuse is reported on stderr with the kernel, block and thread, and ends the process
// (this is test code).
#ifndef CTUNE_CUDA_EMU_H
#define CTUNE_CUDA_EMU_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <tuple>
#include <utility>

// ------------------------------------------------------------------ language
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__
#define __restrict__ __restrict

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct emu_uint3 {
    unsigned x, y, z;
};

// The running fiber's coordinates.
const emu_uint3 &emu_thread_idx();
const emu_uint3 &emu_block_idx();
const emu_uint3 &emu_block_dim();
const emu_uint3 &emu_grid_dim();
#define threadIdx (emu_thread_idx())
#define blockIdx (emu_block_idx())
#define blockDim (emu_block_dim())
#define gridDim (emu_grid_dim())

static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }

struct __attribute__((aligned(8))) float2 {
    float x, y;
};
struct __attribute__((aligned(16))) float4 {
    float x, y, z, w;
};
struct __attribute__((aligned(8))) uint2 {
    unsigned x, y;
};
static inline float2 make_float2(float x, float y) { return float2{x, y}; }
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
template <typename T>
static inline void __stwb(T *p, T v) { *p = v; }

// ------------------------------------------------------------------ 16-bit formats
// Round to nearest, ties to even (overflow to inf, gradual underflow, NaN kept a NaN): the
// conversions of cuda_bf16.h / cuda_fp16.h.
uint16_t emu_bf16_bits(float x);
uint16_t emu_fp16_bits(float x);
float emu_bf16_widen(uint16_t h);
float emu_fp16_widen(uint16_t h);

struct __nv_bfloat16 {
    uint16_t bits;
};
struct __half {
    uint16_t bits;
};
struct __attribute__((aligned(4))) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
struct __attribute__((aligned(4))) __half2 {
    __half x, y;
};
static inline __nv_bfloat16 __float2bfloat16_rn(float x) { return __nv_bfloat16{emu_bf16_bits(x)}; }
static inline __half __float2half_rn(float x) { return __half{emu_fp16_bits(x)}; }
static inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    return __nv_bfloat162{__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}
static inline __half2 __floats2half2_rn(float lo, float hi) { return __half2{__float2half_rn(lo), __float2half_rn(hi)}; }
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.bits; }
static inline unsigned short __half_as_ushort(__half h) { return h.bits; }
static inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short b) { return __nv_bfloat16{b}; }
static inline __half __ushort_as_half(unsigned short b) { return __half{b}; }
static inline float __bfloat162float(__nv_bfloat16 h) { return emu_bf16_widen(h.bits); }
static inline float __half2float(__half h) { return emu_fp16_widen(h.bits); }

// ------------------------------------------------------------------ runtime
typedef enum { cudaSuccess = 0, cudaErrorMemoryAllocation = 2 } cudaError_t;
typedef void *cudaStream_t;
const char *cudaGetErrorString(cudaError_t status);
cudaError_t cudaMallocAsync(void **p, size_t bytes, int stream);
cudaError_t cudaFreeAsync(void *p, int stream);
static inline cudaError_t cudaGetLastError() { return cudaSuccess; }

struct emu_options {
    unsigned schedule_seed = 0;  // 0: fibers resume in thread order; else a shuffled order
    bool eager_copies = false;   // cp.async done at once instead of at wait_group
    bool guard_after = true;     // allocations end at an inaccessible page (else start after one)
};
void emu_set_options(const emu_options &options);

// A buffer of the emulated device (16-byte aligned, uninitialised) and its release.
void *emu_device_alloc(size_t bytes);
void emu_device_free(void *p);
// Bytes of live cudaMallocAsync allocations made by kernel code (not emu_device_alloc), and
// the most there were since the last reset.
size_t emu_scratch_peak();
void emu_scratch_peak_reset();

// The array every kernel's `extern __shared__` refers to (defined by the source that
// includes the kernels, registered once).
void emu_set_shared_memory(unsigned char *base, size_t bytes);

// Ends the process with the message and where the running fiber is.
[[noreturn]] void emu_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// ------------------------------------------------------------------ block barrier, warp instructions
void emu_syncthreads();
#define __syncthreads() emu_syncthreads()

float emu_shfl_xor(unsigned mask, float value, int lane_mask);
bool emu_any(unsigned mask, bool predicate);
static inline float __shfl_xor_sync(unsigned mask, float value, int lane_mask) {
    return emu_shfl_xor(mask, value, lane_mask);
}
static inline int __any_sync(unsigned mask, int predicate) { return emu_any(mask, predicate != 0); }

// mma.sync.m16n8k16 (format: 1 bf16, 2 fp16) and ldmatrix.x4 (trans or not) over the warp.
void emu_mma(int format, float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1);
void emu_ldmatrix_x4(bool trans, uint32_t r[4], const void *row);
// cp.async of `bytes` (4 or 16; zero-filled when !valid), commit_group, wait_group n.
void emu_cp_async(void *smem, const void *gmem, int bytes, bool valid);
void emu_cp_commit();
void emu_cp_wait(int n);

// ------------------------------------------------------------------ launches
// Runs body once per thread of every block of grid (blocks in order, threads as fibers).
void emu_run_grid(const char *name, dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()> &body);

// The kernel's own parameter types take the arguments, so they convert as in a launch (NULL
// to a pointer).
template <typename Kernel>
struct emu_launcher;
template <typename... P>
struct emu_launcher<void (*)(P...)> {
    void (*kernel)(P...);
    dim3 grid, block;
    size_t smem;
    const char *name;
    void operator()(P... args) const {
        const std::tuple<P...> params(args...);
        void (*const k)(P...) = kernel;
        emu_run_grid(name, grid, block, smem, [&params, k]() { std::apply(k, params); });
    }
};
template <typename Kernel>
emu_launcher<Kernel> emu_launch(Kernel kernel, dim3 grid, dim3 block, size_t smem, const char *name) {
    return emu_launcher<Kernel>{kernel, grid, block, smem, name};
}

#endif
