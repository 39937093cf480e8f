// attention_mma_ptx: the PTX instructions attention_mma.cu is built from (tensor-core product,
// ldmatrix, cp.async, ex2), each behind one small function. Kept apart so that the host
// emulator (tests/emu/, which runs attention_mma.cu's kernels on the CPU with warps of
// fibers) can put its own definitions of exactly these in their place: everything else in
// the kernels is compiled as it is.
#ifndef CTUNE_ATTENTION_MMA_PTX_CUH
#define CTUNE_ATTENTION_MMA_PTX_CUH

#include <cuda_runtime.h>
#include <stdint.h>

// d = a b + c, m16n8k16, 16-bit operands (TYPE: bf16 or f16), fp32 accumulators (fragment
// layouts: attention_mma.cu's header).
#define AM_MMA_PTX(name, TYPE)                                                                        \
    __device__ __forceinline__ void name(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) { \
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." TYPE "." TYPE                            \
                     ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"                     \
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                  \
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));                  \
    }
AM_MMA_PTX(am_mma_bf16, "bf16")
AM_MMA_PTX(am_mma_f16, "f16")
#undef AM_MMA_PTX

// Asynchronous 16-byte copy global -> shared (cp.async, sm_80+), zero-filled when !valid.
__device__ __forceinline__ void am_cp16(void *smem, const void *gmem, bool valid) {
    const unsigned dst = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(valid ? 16 : 0));
}
// The same for 4 bytes (cp.async.ca: .cg takes only 16).
__device__ __forceinline__ void am_cp4(void *smem, const void *gmem, bool valid) {
    const unsigned dst = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(gmem), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void am_cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void am_cp_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// exp2 on the special-function unit with denormal results flushed to zero. exp2f wraps the
// same instruction in a range test, a halving and a squaring for results below 2^-126 (three
// more instructions per score, in kernels whose speed is the warps' instruction issue); such
// a probability (< 1.2e-38) changes no softmax row sum (>= 1) and no fp32 product sum with a
// 16-bit operand. ex2(-inf) = +0.
__device__ __forceinline__ float am_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// ldmatrix: four 8 x 8 blocks of 16-bit values; lanes 8i..8i+7 give the row addresses of
// block i, and register i of every lane receives its share of block i (transposed with .trans).
__device__ __forceinline__ void am_ldsm(uint32_t r[4], const void *p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
__device__ __forceinline__ void am_ldsm_trans(uint32_t r[4], const void *p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

#endif
