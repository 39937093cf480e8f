// The host emulator's kernels/cuda/cuda_common.cuh (tests/emu/cuda_emu.h): what the emulated
// kernel sources take from the real one. Checks end the run with the failing call; launches
// run on the emulator.
#ifndef CTUNE_CUDA_COMMON_CUH
#define CTUNE_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

void ctune_cuda_record(const char *file, int line, const char *what, const char *message);

#define CUDA_CHECK(call)                                                              \
    do {                                                                              \
        if ((call) != cudaSuccess) emu_fail("%s:%d: %s failed", __FILE__, __LINE__, #call); \
    } while (0)
#define CUDA_CHECK_LAUNCH() ((void)0)
#define CUDA_LAUNCH(kernel, grid, block, smem) emu_launch(kernel, grid, block, smem, #kernel)
#define CUDA_FULL_MASK 0xffffffffu

// An H100's opt-in limit (227 KiB): launches the real code allows there run here.
static inline size_t cuda_smem_opt_in(const void *kernel) {
    (void)kernel;
    return 227 * 1024;
}

// to_half on the emulated device (cuda_emu.cpp: round to nearest even, as half.cu).
void cuda_to_half(uint16_t *out, const float *x, size_t n, kernels_half_format fmt);

#endif
