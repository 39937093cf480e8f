/* nf4: host quantization and read-back of the NF4 format (kernels/nf4.h). */
#include "kernels/nf4.h"

#include <math.h>
#include <stdbool.h>

static const float NF4_VALUES[16] = NF4_VALUES_INIT;

/* The 15 decision points, each the fp32 midpoint of two neighbouring values, as
 * bitsandbytes computes them ((a + b) / 2 in fp32; C evaluates float sums in float on every
 * target we build for, FLT_EVAL_METHOD 0). */
static void midpoints(float mids[15]) {
    for (int i = 0; i < 15; i++) mids[i] = (NF4_VALUES[i] + NF4_VALUES[i + 1]) / 2.0f;
}

static float clamp_unit(float v) { return v < -1.0f ? -1.0f : v > 1.0f ? 1.0f : v; }

/* One block: its absmax, then every value's code as the count of midpoints below its scaled
 * value (torch.bucketize, right=False: a value on a midpoint takes the lower code),
 * written as 15 passes of compares over the block so that they vectorise: no data-dependent
 * branch per value. */
static void quantize_block(const float *x, size_t len, bool last_of_odd, const float mids[15], uint8_t *codes,
                           float *absmax) {
    float most = 0.0f;
    for (size_t i = 0; i < len; i++) {
        const float a = fabsf(x[i]);
        most = a > most ? a : most;
    }
    *absmax = most;
    const float floor_most = most > 1e-38f ? most : 1e-38f;
    const float reciprocal = 1.0f / floor_most;
    float scaled[NF4_BLOCK];
    uint8_t code[NF4_BLOCK];
    /* a full block multiplies by the reciprocal, a short last one divides */
    if (len == NF4_BLOCK)
        for (size_t i = 0; i < NF4_BLOCK; i++) scaled[i] = clamp_unit(x[i] * reciprocal);
    else
        for (size_t i = 0; i < len; i++) scaled[i] = clamp_unit(x[i] / floor_most);
    for (size_t i = len; i < NF4_BLOCK; i++) scaled[i] = 0.0f; /* an odd count pads with 0's code */
    for (size_t i = 0; i < NF4_BLOCK; i++) code[i] = 0;
    for (int k = 0; k < 15; k++)
        for (size_t i = 0; i < NF4_BLOCK; i++) code[i] += (uint8_t)(mids[k] < scaled[i]);
    const size_t bytes = last_of_odd ? len / 2 + 1 : len / 2;
    for (size_t j = 0; j < bytes; j++) codes[j] = (uint8_t)(code[2 * j] << 4 | code[2 * j + 1]);
}

void nf4_quantize(const float *x, size_t n, uint8_t *codes, float *absmax) {
    float mids[15];
    midpoints(mids);
    const size_t blocks = nf4_block_count(n);
    /* blocks are independent and own whole bytes (64 values, 32 bytes): one per thread turn */
#pragma omp parallel for if (n >= 65536) schedule(static)
    for (size_t b = 0; b < blocks; b++) {
        const size_t start = b * NF4_BLOCK, len = n - start < NF4_BLOCK ? n - start : NF4_BLOCK;
        quantize_block(x + start, len, len % 2 == 1, mids, codes + start / 2, absmax + b);
    }
}

void nf4_dequantize(const uint8_t *codes, const float *absmax, size_t n, float *out) {
    for (size_t e = 0; e < n; e++) out[e] = nf4_value_at(codes, absmax, e);
}

size_t nf4_first_non_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return i;
    return n;
}

int nf4_non_finite_error(ct_error *err, const char *tensor, double value, size_t index) {
    return ct_fail(err, "tensor '%s' holds %g at index %zu; a 4-bit (NF4) base needs finite weights", tensor, value,
                   index);
}

size_t nf4_read_back(float *x, size_t n, uint8_t *codes, float *absmax) {
    const size_t bad = nf4_first_non_finite(x, n);
    if (bad < n) return bad;
    nf4_quantize(x, n, codes, absmax);
    nf4_dequantize(codes, absmax, n, x);
    return n;
}
