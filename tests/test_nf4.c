/* NF4 (kernels/nf4.h), without Python (tests/interop_nf4.sh checks the same functions against
 * bitsandbytes): the decision points and their ties, the packing, quantizing a tensor in
 * block-aligned pieces (how model.c uploads a weight) against quantizing it whole, the
 * read-back's error bound, and the CPU kernel nf4_to_half_2d against the host read-back
 * rounded by to_half, with a padded destination whose other columns stay untouched. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/kernels.h"
#include "kernels/nf4.h"
#include "tests/check.h"

static const float VALUES[16] = NF4_VALUES_INIT;

static uint64_t state = 88172645463325252ULL;
static float uniform(float lo, float hi) {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    return lo + (hi - lo) * (float)((state >> 40) * 0x1.0p-24);
}

/* The code nf4_quantize gives v in a block whose absmax is 1 (v itself when |v| <= 1: the
 * short block divides by 1), read from the second nibble. */
static int code_of(float v) {
    const float x[2] = {1.0f, v};
    uint8_t codes[1];
    float absmax[1];
    nf4_quantize(x, 2, codes, absmax);
    return codes[0] & 15;
}

static void test_codes(void) {
    for (int i = 0; i < 16; i++) {
        CHECK_MSG(code_of(VALUES[i]) == i, "value %d reads as code %d", i, code_of(VALUES[i]));
        if (i + 1 < 16) {
            const float mid = (VALUES[i] + VALUES[i + 1]) / 2.0f;
            CHECK_MSG(code_of(mid) == i, "midpoint %d..%d goes to the lower code", i, i + 1);
            CHECK(code_of(nextafterf(mid, 2.0f)) == i + 1);
        }
    }
    CHECK(code_of(0.0f) == 7 && code_of(-0.0f) == 7);
    CHECK(code_of(-1.0f) == 0 && code_of(1.0f) == 15);
    CHECK(code_of(NAN) == 0);
}

static void test_packing(void) {
    /* absmax 2: x / 2 lands on values 15, 0, 7, 8, 11 */
    const float x[5] = {2.0f, -2.0f, 0.0f, 2.0f * VALUES[8], 2.0f * VALUES[11]};
    uint8_t codes[3] = {0xAA, 0xAA, 0xAA};
    float absmax[1];
    nf4_quantize(x, 5, codes, absmax);
    CHECK(absmax[0] == 2.0f);
    CHECK_MSG(codes[0] == 0xF0 && codes[1] == 0x78 && codes[2] == 0xB7, "codes %02x %02x %02x", codes[0], codes[1],
              codes[2]); /* high nibble first; the odd count pads with the zero code */
    float back[5];
    nf4_dequantize(codes, absmax, 5, back);
    for (int i = 0; i < 5; i++) CHECK_MSG(back[i] == x[i], "value %d reads back as %g, not %g", i, back[i], x[i]);
    const float zeros[64] = {0};
    uint8_t zc[32];
    float za[1];
    nf4_quantize(zeros, 64, zc, za);
    CHECK(za[0] == 0.0f && zc[0] == 0x77 && zc[31] == 0x77);
}

/* A 1000-value tensor (15 full blocks and a short one) quantized whole, and in pieces of 128
 * and 64 values from block boundaries: the same codes and absmaxes. */
static void test_pieces(void) {
    enum { N = 1000 };
    float x[N];
    for (int i = 0; i < N; i++) x[i] = uniform(-3, 3) * (i / 64 + 1);
    uint8_t whole[N / 2], pieces[N / 2];
    float whole_max[16], pieces_max[16];
    nf4_quantize(x, N, whole, whole_max);
    for (int piece = 64; piece <= 128; piece += 64) {
        memset(pieces, 0, sizeof pieces);
        for (int at = 0; at < N; at += piece)
            nf4_quantize(x + at, N - at < piece ? N - at : piece, pieces + at / 2, pieces_max + at / NF4_BLOCK);
        CHECK_MSG(!memcmp(whole, pieces, sizeof whole) && !memcmp(whole_max, pieces_max, sizeof whole_max),
                  "pieces of %d differ from the whole", piece);
    }
    /* the read-back is within half the widest gap between neighbouring values (-1 .. -0.696: 0.152) of
     * each block's absmax */
    float back[N];
    nf4_dequantize(whole, whole_max, N, back);
    float worst = 0.0f;
    for (int i = 0; i < N; i++) {
        const float e = fabsf(back[i] - x[i]) / whole_max[i / NF4_BLOCK];
        if (e > worst) worst = e;
    }
    CHECK_MSG(worst <= 0.152f && worst > 0.05f, "worst relative error %g", worst);
}

static void test_cpu_kernel(void) {
    enum { ROWS = 9, COLS = 70, LD = 75 };
    const size_t n = ROWS * COLS;
    float x[ROWS * COLS], back[ROWS * COLS];
    for (size_t i = 0; i < n; i++) x[i] = uniform(-1e3f, 1e3f);
    uint8_t codes[ROWS * COLS / 2 + 1];
    float absmax[ROWS * COLS / NF4_BLOCK + 1];
    nf4_quantize(x, n, codes, absmax);
    nf4_dequantize(codes, absmax, n, back);
    const kernels_half_format formats[2] = {KERNELS_BF16, KERNELS_FP16};
    for (int f = 0; f < 2; f++) {
        uint16_t out[ROWS * LD], want[COLS];
        memset(out, 0xAB, sizeof out);
        cpu_nf4_to_half_2d(formats[f], out, LD, codes, absmax, ROWS, COLS);
        int wrong = 0, touched = 0;
        for (int r = 0; r < ROWS; r++) {
            cpu_to_half(want, back + (size_t)r * COLS, COLS, formats[f]);
            wrong += memcmp(out + (size_t)r * LD, want, sizeof want) != 0;
            for (int c = COLS; c < LD; c++) touched += out[(size_t)r * LD + c] != 0xABAB;
        }
        CHECK_MSG(wrong == 0 && touched == 0, "format %d: %d rows differ from to_half of the read-back, %d padding "
                                              "values written", formats[f], wrong, touched);
    }
}

int main(void) {
    test_codes();
    test_packing();
    test_pieces();
    test_cpu_kernel();
    return check_summary("test_nf4");
}
