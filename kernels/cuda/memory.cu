// CUDA backend memory: plain cudaMalloc (no managed memory), zero-filled like the CPU
// backend's calloc-style alloc. Everything runs on the default stream; upload and download
// are synchronous cudaMemcpy, so a host buffer is free for reuse when they return.
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_common.cuh"

// A zero-byte request still gets a unique pointer, as on the CPU backend.
#define CUDA_MIN_ALLOC 256

extern "C" void *cuda_alloc(size_t bytes) {
    size_t size = bytes < CUDA_MIN_ALLOC ? CUDA_MIN_ALLOC : bytes;
    void *ptr = NULL;
    if (cudaMalloc(&ptr, size) != cudaSuccess) {
        cudaGetLastError();  // out of memory is reported by NULL, not as a sticky error
        return NULL;
    }
    // cudaMemset is asynchronous with respect to the host but ordered before any later
    // work on the default stream, which is all this backend uses.
    if (cudaMemset(ptr, 0, size) != cudaSuccess) {
        cudaGetLastError();
        cudaFree(ptr);
        return NULL;
    }
    return ptr;
}

extern "C" void cuda_release(void *ptr) {
    if (ptr) CUDA_CHECK(cudaFree(ptr));
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
