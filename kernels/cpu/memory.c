/* CPU backend memory: host memory, 64-byte aligned (one cache line, the widest SIMD load)
 * and zero-filled like calloc. Transfers are plain copies. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_ops.h"

#define CPU_ALIGNMENT 64

void *cpu_alloc(size_t bytes) {
    /* Round up to whole cache lines; a zero-byte request still gets a unique pointer. */
    if (bytes > SIZE_MAX - CPU_ALIGNMENT) return NULL;
    size_t rounded = (bytes + CPU_ALIGNMENT - 1) / CPU_ALIGNMENT * CPU_ALIGNMENT;
    if (rounded == 0) rounded = CPU_ALIGNMENT;
    void *ptr = NULL;
    if (posix_memalign(&ptr, CPU_ALIGNMENT, rounded) != 0) return NULL;
    memset(ptr, 0, rounded);
    return ptr;
}

void cpu_release(void *ptr) { free(ptr); }

void cpu_zero(void *ptr, size_t bytes) {
    if (bytes) memset(ptr, 0, bytes);
}

void cpu_copy(void *dst, const void *src, size_t bytes) {
    if (bytes && dst != src) memmove(dst, src, bytes);
}
