// The host emulator's kernels/cuda/attention_mma_ptx.cuh: the same functions as the real
// header, each the emulated instruction (tests/emu/cuda_emu.h).
#ifndef CTUNE_ATTENTION_MMA_PTX_CUH
#define CTUNE_ATTENTION_MMA_PTX_CUH

#include <cuda_runtime.h>
#include <float.h>
#include <math.h>
#include <stdint.h>

static inline void am_mma_bf16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    emu_mma(1, c, a, b0, b1);
}
static inline void am_mma_f16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    emu_mma(2, c, a, b0, b1);
}
static inline void am_cp16(void *smem, const void *gmem, bool valid) { emu_cp_async(smem, gmem, 16, valid); }
static inline void am_cp4(void *smem, const void *gmem, bool valid) { emu_cp_async(smem, gmem, 4, valid); }
static inline void am_cp_commit() { emu_cp_commit(); }
template <int N>
static inline void am_cp_wait() {
    emu_cp_wait(N);
}
// ex2.approx.ftz.f32: subnormal inputs and results flushed to zero (libm's exp2f stands in
// for the approximation, whose error is ~2 ulp).
static inline float am_exp2(float x) {
    if (fabsf(x) < FLT_MIN) x = 0.0f;
    const float y = exp2f(x);
    return y < FLT_MIN ? 0.0f : y;
}
static inline void am_ldsm(uint32_t r[4], const void *p) { emu_ldmatrix_x4(false, r, p); }
static inline void am_ldsm_trans(uint32_t r[4], const void *p) { emu_ldmatrix_x4(true, r, p); }

#endif
