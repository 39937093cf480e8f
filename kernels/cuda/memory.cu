// CUDA backend memory: plain cudaMalloc (no managed memory), zero-filled like the CPU
// backend's calloc-style alloc. Everything runs on the default stream; upload and download
// are synchronous cudaMemcpy, so a host buffer is free for reuse when they return.
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdlib.h>

#include "kernels/cuda/cuda_common.cuh"

// A zero-byte request still gets a unique pointer, as on the CPU backend.
#define CUDA_MIN_ALLOC 256

// What the buffers of cuda_alloc hold (cuda_memory_held): the size of every live buffer, found
// again on release by a linear search. A run holds a few hundred buffers and releases them
// when it reserves anew or ends, never within a step.
namespace {
struct held_buffer {
    void *ptr;
    size_t bytes;
};
held_buffer *held;
size_t n_held, held_capacity, held_now, held_peak;

bool remember(void *ptr, size_t bytes) {
    if (n_held == held_capacity) {
        size_t capacity = held_capacity ? 2 * held_capacity : 256;
        held_buffer *grown = (held_buffer *)realloc(held, capacity * sizeof *grown);
        if (!grown) return false;
        held = grown;
        held_capacity = capacity;
    }
    held[n_held++] = held_buffer{ptr, bytes};
    held_now += bytes;
    if (held_now > held_peak) held_peak = held_now;
    return true;
}

void forget(void *ptr) {
    for (size_t i = n_held; i-- > 0;)
        if (held[i].ptr == ptr) {
            held_now -= held[i].bytes;
            held[i] = held[--n_held];
            return;
        }
}
}  // namespace

extern "C" void *cuda_alloc(size_t bytes) {
    size_t size = bytes < CUDA_MIN_ALLOC ? CUDA_MIN_ALLOC : bytes;
    void *ptr = NULL;
    if (cudaMalloc(&ptr, size) != cudaSuccess) {
        cudaGetLastError();  // out of memory is reported by NULL, not as a sticky error
        return NULL;
    }
    // cudaMemset is asynchronous with respect to the host but ordered before any later
    // work on the default stream, which is all this backend uses.
    if (cudaMemset(ptr, 0, size) != cudaSuccess || !remember(ptr, size)) {
        cudaGetLastError();
        cudaFree(ptr);
        return NULL;
    }
    return ptr;
}

extern "C" void cuda_release(void *ptr) {
    if (!ptr) return;
    forget(ptr);
    CUDA_CHECK(cudaFree(ptr));
}

// The buffers, plus the default pool's stream-ordered scratch (device.cu): what it uses now,
// and its high-water mark added to the buffers' as if both came at once.
extern "C" void cuda_memory_held(size_t *now, size_t *peak) {
    int device = 0;
    cudaMemPool_t pool;
    uint64_t used = 0, used_high = 0;
    if (cudaGetDevice(&device) != cudaSuccess || cudaDeviceGetDefaultMemPool(&pool, device) != cudaSuccess ||
        cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used) != cudaSuccess ||
        cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &used_high) != cudaSuccess)
        used = used_high = 0;
    cudaGetLastError();  // a device without pools: nothing held there
    *now = held_now + (size_t)used;
    *peak = held_peak + (size_t)used_high;
}

// The current device's free and total memory (the driver's view: other processes' use and
// this one's CUDA context are already subtracted), plus what the default pool holds and no
// allocation uses (it keeps stream-ordered scratch between steps, device.cu: still ours to
// allocate). A failure is not made sticky: the caller can go on without knowing.
extern "C" int cuda_memory_info(size_t *free_bytes, size_t *total_bytes) {
    size_t free_now = 0, total = 0;
    if (cudaMemGetInfo(&free_now, &total) != cudaSuccess) {
        cudaGetLastError();
        *free_bytes = *total_bytes = 0;
        return -1;
    }
    int device = 0;
    cudaMemPool_t pool;
    uint64_t reserved = 0, used = 0;
    if (cudaGetDevice(&device) == cudaSuccess && cudaDeviceGetDefaultMemPool(&pool, device) == cudaSuccess &&
        cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &reserved) == cudaSuccess &&
        cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used) == cudaSuccess && reserved > used)
        free_now += (size_t)(reserved - used);
    cudaGetLastError();  // a device without pools: nothing held there
    *free_bytes = free_now < total ? free_now : total;
    *total_bytes = total;
    return 0;
}

extern "C" void cuda_zero(void *ptr, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemset(ptr, 0, bytes));
}

// Backend to backend, with memmove semantics like the CPU backend: cudaMemcpy's result is
// undefined for overlapping ranges, so those go through a temporary buffer.
extern "C" void cuda_copy(void *dst, const void *src, size_t bytes) {
    if (!bytes || dst == src) return;
    const char *d = (const char *)dst, *s = (const char *)src;
    bool overlap = d < s + bytes && s < d + bytes;
    if (!overlap) {
        CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
        return;
    }
    void *tmp = NULL;
    CUDA_CHECK(cudaMallocAsync(&tmp, bytes, 0));
    if (!tmp) return;
    CUDA_CHECK(cudaMemcpy(tmp, src, bytes, cudaMemcpyDeviceToDevice));
    CUDA_CHECK(cudaMemcpy(dst, tmp, bytes, cudaMemcpyDeviceToDevice));
    CUDA_CHECK(cudaFreeAsync(tmp, 0));
}

extern "C" void cuda_upload(void *dst, const void *host_src, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpy(dst, host_src, bytes, cudaMemcpyHostToDevice));
}

extern "C" void cuda_download(void *host_dst, const void *src, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpy(host_dst, src, bytes, cudaMemcpyDeviceToHost));
}
