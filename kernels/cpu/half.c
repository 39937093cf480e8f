/* 16-bit formats of mixed precision: fp32 <-> bfloat16 / IEEE binary16 conversions and a
 * gemm whose A and B are 16-bit.
 *
 * Rounding is to nearest, ties to even, bit for bit as torch's x.to(torch.bfloat16) and
 * x.to(torch.float16) (c10::BFloat16's round_to_nearest_even; the FP16 library's
 * fp16_ieee_from_fp32_value for float16). Both are done here on the integer bits, which
 * gives the same results without depending on the FPU's rounding mode or on FTZ/DAZ.
 *
 * A 16-bit value keeps the top bits of the fp32 significand, so dropping s low bits of an
 * integer v with ties to even is (v + 2^(s-1) - 1 + bit s of v) >> s: below half the
 * increment never reaches bit s, above half it always does, and exactly at half it does
 * only when bit s (the kept last bit) is 1, i.e. rounds to the even neighbour. A carry out
 * of the significand moves into the exponent field, which is the correct next binade (and
 * +-inf from the largest finite value).
 *
 * NaN: bf16 gives 0x7FC0 (torch's scalar path; its vector path gives 0xFFFF), fp16 gives
 * sign | 0x7E00 (the FP16 library; torch's vector path, F16C, keeps the top payload bits).
 * The kernel contract only promises "a NaN". */
#include <math.h>
#include <stdlib.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/kernels.h"

static inline uint32_t float_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static inline float bits_float(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* v >> s rounded to nearest, ties to even (1 <= s <= 31, v + 2^(s-1) must fit). */
static inline uint32_t shift_round_even(uint32_t v, unsigned s) {
    return (v + (1u << (s - 1)) - 1u + ((v >> s) & 1u)) >> s;
}

static inline uint16_t bf16_from_float(float x) {
    uint32_t u = float_bits(x);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0u;
    /* Infinity's low 16 bits are 0, so it rounds to itself; the largest finite values at or
     * above the halfway point to 2^128 carry into 0x7F80 (inf), as IEEE rounding does. The
     * sign bit rides along untouched (no carry reaches it below NaN). */
    return (uint16_t)shift_round_even(u, 16);
}

static inline float float_from_bf16(uint16_t h) { return bits_float((uint32_t)h << 16); }

/* fp32 bit thresholds of binary16 (exponent bias 15, 10 mantissa bits). */
#define FP16_OVERFLOW 0x477FF000u    /* 65520: halfway from 65504 (odd) to 2^16, rounds to inf */
#define FP16_MIN_NORMAL 0x38800000u  /* 2^-14 */
#define FP16_HALF_MIN_SUB 0x33000000u /* 2^-25: half the smallest subnormal, ties to 0 */

static inline uint16_t fp16_from_float(float x) {
    uint32_t u = float_bits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return (uint16_t)(sign | 0x7E00u);
    if (a >= FP16_OVERFLOW) return (uint16_t)(sign | 0x7C00u);
    if (a >= FP16_MIN_NORMAL) {
        /* Rebias the exponent (127 -> 15) in place and drop 13 mantissa bits; a rounding
         * carry lands in the exponent. a < FP16_OVERFLOW keeps the result below 0x7C00. */
        return (uint16_t)(sign | shift_round_even(a - ((127u - 15u) << 23), 13));
    }
    if (a <= FP16_HALF_MIN_SUB) return sign;
    /* Subnormal result: value * 2^24 rounded to an integer. The value is
     * significand * 2^(e - 150) with the implicit bit restored, so the integer is
     * significand >> (126 - e); e is in [102, 112], a shift in [14, 24]. Rounding up from
     * 0x3FF gives 0x400, the smallest normal, which is the right encoding. fp32 subnormal
     * inputs are far below FP16_HALF_MIN_SUB and never get here. */
    uint32_t exponent = a >> 23;
    uint32_t significand = (a & 0x7FFFFFu) | 0x800000u;
    return (uint16_t)(sign | shift_round_even(significand, 126u - exponent));
}

static inline float float_from_fp16(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1Fu, mantissa = h & 0x3FFu;
    if (exponent == 0x1Fu) return bits_float(sign | 0x7F800000u | (mantissa << 13));
    if (exponent != 0) return bits_float(sign | ((exponent + 127u - 15u) << 23) | (mantissa << 13));
    /* Zero or subnormal: mantissa * 2^-24, exact in fp32 (at most 10 significant bits). */
    float magnitude = (float)mantissa * 0x1p-24f;
    return sign ? -magnitude : magnitude;
}

void cpu_to_half(uint16_t *out, const float *x, size_t n, kernels_half_format fmt) {
    if (fmt == KERNELS_BF16) {
#pragma omp parallel for if (n >= CPU_PARALLEL_MIN) schedule(static)
        for (size_t i = 0; i < n; i++) out[i] = bf16_from_float(x[i]);
    } else {
#pragma omp parallel for if (n >= CPU_PARALLEL_MIN) schedule(static)
        for (size_t i = 0; i < n; i++) out[i] = fp16_from_float(x[i]);
    }
}

void cpu_from_half(float *out, const uint16_t *x, size_t n, kernels_half_format fmt) {
    if (fmt == KERNELS_BF16) {
#pragma omp parallel for if (n >= CPU_PARALLEL_MIN) schedule(static)
        for (size_t i = 0; i < n; i++) out[i] = float_from_bf16(x[i]);
    } else {
#pragma omp parallel for if (n >= CPU_PARALLEL_MIN) schedule(static)
        for (size_t i = 0; i < n; i++) out[i] = float_from_fp16(x[i]);
    }
}

/* Widens a rows x cols block of a 16-bit matrix with row stride ld into a packed fp32
 * matrix (row stride cols); only the block is read, so padding columns may hold anything. */
static void widen_block(float *dst, const uint16_t *src, int rows, int cols, int ld,
                        kernels_half_format fmt) {
    for (int r = 0; r < rows; r++)
        cpu_from_half(dst + (size_t)r * cols, src + (size_t)r * ld, (size_t)cols, fmt);
}

/* The CPU has no 16-bit matrix unit worth using here: A and B are widened to fp32 (exact)
 * and the fp32 gemm runs on them, so C is what cpu_gemm gives on the widened matrices. The
 * scratch is allocated per call; the CPU backend is the reference, not the fast path. */
void cpu_gemm_half(kernels_half_format fmt, bool trans_a, bool trans_b, int m, int n, int k,
                   float alpha, const uint16_t *a, int lda, const uint16_t *b, int ldb, float beta,
                   float *c, int ldc) {
    if (m <= 0 || n <= 0) return;
    if (k <= 0) {
        /* An empty product never reads A or B. */
        cpu_gemm(trans_a, trans_b, m, n, k, alpha, NULL, 1, NULL, 1, beta, c, ldc);
        return;
    }
    /* Stored shapes: A is [m,k] or, transposed, [k,m]; B is [k,n] or [n,k]. */
    int a_rows = trans_a ? k : m, a_cols = trans_a ? m : k;
    int b_rows = trans_b ? n : k, b_cols = trans_b ? k : n;
    size_t a_count = (size_t)a_rows * (size_t)a_cols, b_count = (size_t)b_rows * (size_t)b_cols;
    float *scratch = malloc((a_count + b_count) * sizeof(float));
    if (!scratch) {
        /* The table's void signature cannot report the failure, and leaving C untouched would
         * pass stale numbers off as a result: fill C with NaN so the loss (and the fp16
         * overflow check) sees the failure at once. */
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) c[(size_t)i * ldc + j] = NAN;
        return;
    }
    float *a32 = scratch, *b32 = scratch + a_count;
    widen_block(a32, a, a_rows, a_cols, lda, fmt);
    widen_block(b32, b, b_rows, b_cols, ldb, fmt);
    cpu_gemm(trans_a, trans_b, m, n, k, alpha, a32, a_cols, b32, b_cols, beta, c, ldc);
    free(scratch);
}
