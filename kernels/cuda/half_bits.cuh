// half_bits: the one fp32 -> bf16/fp16 rounding and 16-bit -> fp32 widening of the CUDA
// backend, shared by to_half / from_half (half.cu) and the fused producers of 16-bit GEMM
// operands (rmsnorm, swiglu, cross_entropy). One definition means a fused *_half kernel
// rounds exactly as to_half does after its fp32 op: same bits by construction. half.cu's
// header says why __float2bfloat16_rn / __float2half_rn are the CPU's round to nearest, ties
// to even (overflow to inf, gradual underflow, a NaN for NaN).
#ifndef CTUNE_CUDA_HALF_BITS_CUH
#define CTUNE_CUDA_HALF_BITS_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include <stdio.h>

#include "kernels/cuda/cuda_common.cuh"

template <kernels_half_format F>
__device__ __forceinline__ uint16_t half_bits(float x);

template <>
__device__ __forceinline__ uint16_t half_bits<KERNELS_BF16>(float x) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}

template <>
__device__ __forceinline__ uint16_t half_bits<KERNELS_FP16>(float x) {
    return __half_as_ushort(__float2half_rn(x));
}

// Exact: every bf16 / fp16 value is an fp32 value.
template <kernels_half_format F>
__device__ __forceinline__ float half_widen(uint16_t h);

template <>
__device__ __forceinline__ float half_widen<KERNELS_BF16>(uint16_t h) {
    return __bfloat162float(__ushort_as_bfloat16(h));
}

template <>
__device__ __forceinline__ float half_widen<KERNELS_FP16>(uint16_t h) {
    return __half2float(__ushort_as_half(h));
}

// Four consecutive 16-bit values as one 8-byte word: the element at the lowest address in
// the low bits (little endian), so *(uint2 *)(p + i) holds p[i..i+3].
template <kernels_half_format F>
__device__ __forceinline__ uint2 half_bits4(float a, float b, float c, float d) {
    uint2 w;
    w.x = (uint32_t)half_bits<F>(a) | (uint32_t)half_bits<F>(b) << 16;
    w.y = (uint32_t)half_bits<F>(c) | (uint32_t)half_bits<F>(d) << 16;
    return w;
}

template <kernels_half_format F>
__device__ __forceinline__ float4 half_widen4(uint2 w) {
    return make_float4(half_widen<F>((uint16_t)(w.x & 0xFFFFu)),
                       half_widen<F>((uint16_t)(w.x >> 16)),
                       half_widen<F>((uint16_t)(w.y & 0xFFFFu)),
                       half_widen<F>((uint16_t)(w.y >> 16)));
}

// Where a row kernel's fp32 result goes, given (row, column): into fp32 memory (rows ld
// apart), or rounded to 16 bits (rows ld_half apart) with the fp32 value kept too unless
// `out` is NULL (the *_half ops of kernels.h). The kernel's arithmetic is written once and
// takes either.
struct f32_store {
    float *out;
    int ld;
    __device__ __forceinline__ void operator()(size_t row, int j, float y) const {
        out[row * ld + j] = y;
    }
    // Columns j..j+3 at once, under half_store::four's alignment conditions.
    __device__ __forceinline__ void four(size_t row, int j, float4 y) const {
        __stwb(reinterpret_cast<float4 *>(out + row * ld + j), y);
    }
};

template <kernels_half_format F>
struct half_store {
    uint16_t *out_half;
    int ld_half;
    float *out;  // NULL: the 16-bit value only
    int ld;
    __device__ __forceinline__ void operator()(size_t row, int j, float y) const {
        if (out) out[row * ld + j] = y;
        out_half[row * ld_half + j] = half_bits<F>(y);
    }
    // Columns j..j+3 at once (16 bytes of fp32, 8 of 16-bit), for callers whose strides, j and
    // pointers put every group on those boundaries; the same values as four single stores.
    // __stwb keeps each one vector store (in 2D grid-stride loops nvcc splits plain ones).
    __device__ __forceinline__ void four(size_t row, int j, float4 y) const {
        if (out) __stwb(reinterpret_cast<float4 *>(out + row * ld + j), y);
        __stwb(reinterpret_cast<uint2 *>(out_half + row * ld_half + j), half_bits4<F>(y.x, y.y, y.z, y.w));
    }
};

// Host side: false, with "unknown 16-bit format" recorded against op, for anything but the
// two formats (the table's enum arrives from C and is not checked there).
static inline bool cuda_known_half_format(kernels_half_format fmt, const char *op,
                                          const char *file, int line) {
    if (fmt == KERNELS_BF16 || fmt == KERNELS_FP16) return true;
    char message[96];
    snprintf(message, sizeof message,
             "unknown 16-bit format %d (expected KERNELS_BF16 or KERNELS_FP16)", (int)fmt);
    ctune_cuda_record(file, line, op, message);
    return false;
}

#endif
