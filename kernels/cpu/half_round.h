/* half_round: one value at a time, fp32 <-> bfloat16 / IEEE binary16, for the CPU kernels
 * that round what they produce (half.c's casts, the *_half producers of kernels.h).
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
 * The kernel contract only promises "a NaN". Private to kernels/cpu. */
#ifndef CTUNE_CPU_HALF_ROUND_H
#define CTUNE_CPU_HALF_ROUND_H

#include <stdint.h>
#include <string.h>

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

/* x rounded to fmt (bits), and a 16-bit value of fmt widened (exact). */
static inline uint16_t cpu_half_from_float(float x, kernels_half_format fmt) {
    return fmt == KERNELS_BF16 ? bf16_from_float(x) : fp16_from_float(x);
}

static inline float cpu_float_from_half(uint16_t h, kernels_half_format fmt) {
    return fmt == KERNELS_BF16 ? float_from_bf16(h) : float_from_fp16(h);
}

#endif
