/* half_bits: bit-level views the 16-bit tests share (fp32 <-> its bits, NaN test of a bf16 or
 * fp16 pattern). Header-only, no state. */
#ifndef CTUNE_TESTS_HALF_BITS_H
#define CTUNE_TESTS_HALF_BITS_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "kernels/kernels.h"

static inline uint32_t bits_of(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static inline float float_of(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* All exponent bits set and a non-zero mantissa. */
static inline bool half_is_nan(uint16_t h, kernels_half_format fmt) {
    return fmt == KERNELS_BF16 ? (h & 0x7F80u) == 0x7F80u && (h & 0x7Fu) != 0
                               : (h & 0x7C00u) == 0x7C00u && (h & 0x3FFu) != 0;
}

#endif
