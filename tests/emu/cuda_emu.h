// cuda_emu: runs CUDA kernels on the host, for tests of kernels that no GPU has run yet.
//
// A kernel source is compiled as C++ with this directory first on the include path: the
// stub <cuda_runtime.h>, <cuda_bf16.h>, <cuda_fp16.h>, <mma.h>, <cublas_v2.h> and
// <cublasLt.h> lead here, and kernels/cuda/attention_mma_ptx.cuh is replaced by emulated
// instructions; everything else, kernels/cuda/cuda_common.cuh included, is the real source.
// A launch runs the grid's blocks one after another; a block's threads are fibers on one
// host thread, each running until it reaches a barrier:
//  - __syncthreads releases the block when every live thread has reached it;
//  - warp-wide instructions (shuffles, votes, __syncwarp, ldmatrix, mma, the WMMA
//    operations) wait for all 32 lanes, then the last lane to arrive computes every lane's
//    result; lanes that reach different warp-wide instructions, or a warp whose lanes wait
//    at different barriers, stop the run with a message (on a GPU: a hang or undefined
//    results);
//  - cp.async copies are queued per thread and done when cp.async.wait_group says they must
//    be complete (or at once: emu_options.eager_copies), so reading a tile before waiting for
//    it reads stale data.
// `__shared__` is `thread_local`: a block's threads (fibers of one host thread) share it,
// and blocks run one at a time. The dynamic arrays (`extern __shared__`, defined in
// shared_arrays.cpp) are filled with 0xFF (NaN in every float format) before each block up
// to the launch's dynamic size, and must still hold 0xFF past it when the launch ends; a
// launch above 48 KiB needs the kernel's opt-in (cudaFuncSetAttribute), as on a GPU.
// The order in which runnable fibers resume can be shuffled (emu_options.schedule_seed), so
// a race between threads of a block gives different results under different seeds.
// Device allocations (cudaMalloc, cudaMallocAsync, emu_device_alloc) sit against a page the
// process may not touch: after the buffer (emu_options.guard_after) or before it, so a
// stray access past either end of a buffer faults. cp.async sources, cudaMemcpy/cudaMemset
// ranges (host and device sides as the copy's kind says), WMMA tiles and cuBLAS operands
// are checked against the allocations.
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
#include <type_traits>
#include <utility>

// ------------------------------------------------------------------ language
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ thread_local
#define __constant__
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

// A GPU faults on a vector access (8 or 16 bytes) at an address not aligned to its size; the
// host would not. So copying one of these types from or to memory checks the address: a
// kernel's `*reinterpret_cast<float4 *>(p + i)` on a misaligned p stops the run.
void emu_check_aligned(const void *p, size_t align, const char *type);
#define EMU_VECTOR_TYPE(name, align, T, ...)                                        \
    struct __attribute__((aligned(align))) name {                                   \
        T __VA_ARGS__;                                                              \
        name() = default;                                                           \
        name(const name &o) { emu_check_aligned(&o, align, #name), copy(o); }       \
        name &operator=(const name &o) {                                            \
            emu_check_aligned(this, align, #name), emu_check_aligned(&o, align, #name); \
            copy(o);                                                                \
            return *this;                                                           \
        }                                                                           \
        void copy(const name &o) { memcpy((void *)this, (const void *)&o, sizeof o); } \
    }
EMU_VECTOR_TYPE(float2, 8, float, x, y);
EMU_VECTOR_TYPE(float4, 16, float, x, y, z, w);
EMU_VECTOR_TYPE(uint2, 8, unsigned, x, y);
EMU_VECTOR_TYPE(uint4, 16, unsigned, x, y, z, w);
static inline float2 make_float2(float x, float y) {
    float2 v;
    v.x = x, v.y = y;
    return v;
}
static inline float4 make_float4(float x, float y, float z, float w) {
    float4 v;
    v.x = x, v.y = y, v.z = z, v.w = w;
    return v;
}
template <typename T>
static inline void __stwb(T *p, T v) { *p = v; }

// Rounded single operations: the host compiler contracts nothing here (no FMA in the
// baseline x86-64 it targets), so plain operators are exact stand-ins.
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }

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
static inline float emu_widen(__nv_bfloat16 h) { return __bfloat162float(h); }
static inline float emu_widen(__half h) { return __half2float(h); }
static inline float emu_widen(float x) { return x; }

// ------------------------------------------------------------------ runtime
typedef enum {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidDevice = 101,
} cudaError_t;
typedef struct emu_stream *cudaStream_t;
typedef struct emu_mem_pool *cudaMemPool_t;
typedef enum {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
} cudaMemcpyKind;
typedef enum {
    cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
    cudaDevAttrMemoryPoolsSupported = 115,
} cudaDeviceAttr;
typedef enum { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 } cudaFuncAttribute;
typedef enum {
    cudaMemPoolAttrReleaseThreshold = 4,
    cudaMemPoolAttrReservedMemCurrent = 5,
    cudaMemPoolAttrUsedMemCurrent = 7,
    cudaMemPoolAttrUsedMemHigh = 8,
} cudaMemPoolAttr;
struct cudaFuncAttributes {
    size_t sharedSizeBytes;  // static shared memory: not known here, 0
    int maxDynamicSharedSizeBytes;
};

// The emulated device: one GPU with an H100's 80 GiB and 227 KiB of opt-in shared memory.
#define EMU_DEVICE_BYTES ((size_t)80 << 30)
#define EMU_SMEM_OPTIN (227 * 1024)
#define EMU_SMEM_DEFAULT (48 * 1024)

const char *cudaGetErrorString(cudaError_t status);
static inline cudaError_t cudaGetLastError() { return cudaSuccess; }
cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaDeviceGetPCIBusId(char *id, int len, int device);
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *attr, const void *kernel);
cudaError_t cudaFuncSetAttribute(const void *kernel, cudaFuncAttribute attr, int value);
template <typename... P>  // the runtime's overloads for a kernel itself
static inline cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
    return cudaFuncSetAttribute((const void *)kernel, attr, value);
}
template <typename... P>
static inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *attr, void (*kernel)(P...)) {
    return cudaFuncGetAttributes(attr, (const void *)kernel);
}
cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocAsync(void **p, size_t bytes, cudaStream_t stream);
cudaError_t cudaFreeAsync(void *p, cudaStream_t stream);
cudaError_t cudaMemset(void *p, int value, size_t bytes);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
                              size_t height, cudaMemcpyKind kind, cudaStream_t stream);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t *pool, int device);
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void *value);
cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void *value);

struct emu_options {
    unsigned schedule_seed = 0;  // 0: fibers resume in thread order; else a shuffled order
    bool eager_copies = false;   // cp.async done at once instead of at wait_group
    bool guard_after = true;     // allocations end at an inaccessible page (else start after one)
};
void emu_set_options(const emu_options &options);

// A buffer of the emulated device (16-byte aligned, uninitialised) and its release.
void *emu_device_alloc(size_t bytes);
void emu_device_free(void *p);
// Bytes of live cudaMallocAsync allocations (scratch the backend takes for itself), and the
// most there were since the last reset.
size_t emu_scratch_peak();
void emu_scratch_peak_reset();
// Ends the run unless [p, p + bytes) lies in one device allocation and p is align-aligned.
void emu_check_device(const void *p, size_t bytes, size_t align, const char *what);

// Registers an array that `extern __shared__` declarations name (shared_arrays.cpp).
void emu_add_shared_memory(unsigned char *base, size_t bytes);

// Ends the process with the message and where the running fiber is.
[[noreturn]] void emu_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// ------------------------------------------------------------------ block barrier, warp instructions
void emu_syncthreads();
#define __syncthreads() emu_syncthreads()

enum emu_shfl_kind { EMU_SHFL_XOR, EMU_SHFL_DOWN, EMU_SHFL_IDX };
// A shuffle of up to 8 bytes: lane l receives the value of lane l ^ arg (xor), l + arg
// (down; its own past lane 31) or arg (idx, arg per lane).
uint64_t emu_shfl(emu_shfl_kind kind, unsigned mask, uint64_t bits, int arg, int width);
template <typename T>
static inline T emu_shfl_as(emu_shfl_kind kind, unsigned mask, T value, int arg, int width) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a plain value");
    uint64_t bits = 0;
    memcpy(&bits, &value, sizeof value);
    bits = emu_shfl(kind, mask, bits, arg, width);
    T out;
    memcpy(&out, &bits, sizeof out);
    return out;
}
template <typename T>
static inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
    return emu_shfl_as(EMU_SHFL_XOR, mask, value, lane_mask, width);
}
template <typename T>
static inline T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32) {
    return emu_shfl_as(EMU_SHFL_DOWN, mask, value, (int)delta, width);
}
template <typename T>
static inline T __shfl_sync(unsigned mask, T value, int src_lane, int width = 32) {
    return emu_shfl_as(EMU_SHFL_IDX, mask, value, src_lane, width);
}
bool emu_any(unsigned mask, bool predicate);
static inline int __any_sync(unsigned mask, int predicate) { return emu_any(mask, predicate != 0); }
void emu_syncwarp(unsigned mask);
static inline void __syncwarp(unsigned mask = 0xffffffffu) { emu_syncwarp(mask); }

// mma.sync.m16n8k16 (format: 1 bf16, 2 fp16) and ldmatrix.x4 (trans or not) over the warp.
void emu_mma(int format, float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1);
void emu_ldmatrix_x4(bool trans, uint32_t r[4], const void *row);
// cp.async of `bytes` (4 or 16; zero-filled when !valid), commit_group, wait_group n.
void emu_cp_async(void *smem, const void *gmem, int bytes, bool valid);
void emu_cp_commit();
void emu_cp_wait(int n);
// A warp-wide operation of the WMMA API (tests/emu/mma.h): every lane arrives with the same
// `op` (its name), then act(lane_context, lane) runs for lanes 0..31 in turn, all at that point.
void emu_warp_collective(const char *op, void (*act)(void *, int), void *lane_context);
// Ends the run unless [p, p + bytes) is in a device allocation or the launch's shared memory.
void emu_check_memory(const void *p, size_t bytes, size_t align, const char *what);

// ------------------------------------------------------------------ launches
// Runs body once per thread of every block of grid (blocks in order, threads as fibers).
// kernel identifies it for the shared-memory opt-in.
void emu_run_grid(const char *name, const void *kernel, dim3 grid, dim3 block, size_t smem_bytes,
                  const std::function<void()> &body);

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
        emu_run_grid(name, (const void *)kernel, grid, block, smem, [&params, k]() { std::apply(k, params); });
    }
};
template <typename... P>
emu_launcher<void (*)(P...)> emu_launch(dim3 grid, dim3 block, size_t smem, const char *name, void (*kernel)(P...)) {
    return emu_launcher<void (*)(P...)>{kernel, grid, block, smem, name};
}
// cuda_common.cuh's launch macro, defined first: kernel<<<grid, block, smem>>> on the emulator.
#define CUDA_LAUNCH(grid, block, smem, ...) emu_launch(grid, block, smem, #__VA_ARGS__, __VA_ARGS__)

#endif
