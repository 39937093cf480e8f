/* Tests of the producers of 16-bit GEMM operands on the CPU reference backend (kernels.h:
 * rmsnorm_fwd_half, rmsnorm_bwd_half, rope_fwd_half, rope_bwd_half, swiglu_fwd_half (also
 * from 16-bit gate and up), swiglu_bwd_half, cross_entropy_half, the strided casts
 * to_half_2d, to_half_2d_many, gemm_half_to_half, and embedding_fwd_half: the lookup in a
 * table kept only in 16 bits).
 * Each must write, bit for bit, what the fp32 op (itself checked against torch and finite
 * differences in test_kernels_cpu.c) followed by to_half writes, in both
 * formats, with the optional fp32 outputs present and absent, outputs poisoned first so an
 * unwritten element fails. fp16's overflow to inf (what loss scaling detects) must survive
 * the fusion; the RoPE producers leave their fp32 input unchanged. Strided 16-bit outputs
 * (rmsnorm_fwd_half's, rope_*_half's and swiglu_*_half's ld_half,
 * to_half_2d's ld_out) must leave every element outside their block with its poison. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "tests/check.h"
#include "tests/half_bits.h"

static const kernels *K;
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static float urand(float lo, float hi) {
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return lo + (hi - lo) * (float)((rng_state >> 40) * 0x1p-24);
}
static float *vec(size_t n, float lo, float hi) {
    float *x = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = urand(lo, hi);
    return x;
}
static uint16_t *halves(size_t n) {
    uint16_t *h = malloc((n ? n : 1) * sizeof(uint16_t));
    memset(h, 0xA5, (n ? n : 1) * sizeof(uint16_t)); /* poison: 0xA5A5 is no value written here */
    return h;
}
static float *poisoned(size_t n) {
    float *x = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = NAN;
    return x;
}
static const char *fmt_name(kernels_half_format fmt) { return fmt == KERNELS_BF16 ? "bf16" : "fp16"; }

/* Index of the first differing element, or -1. */
static long first_diff(const void *a, const void *b, size_t n, size_t size) {
    for (size_t i = 0; i < n; i++)
        if (memcmp((const char *)a + i * size, (const char *)b + i * size, size)) return (long)i;
    return -1;
}
#define CHECK_SAME(what, a, b, n)                                                                  \
    do {                                                                                           \
        long d_ = first_diff((a), (b), (n), sizeof *(a));                                          \
        CHECK_MSG(d_ < 0, "%s: element %ld differs", (what), d_);                                  \
    } while (0)

static size_t count_bits(const uint16_t *h, size_t n, uint16_t mask, uint16_t value) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += (h[i] & mask) == value;
    return c;
}

static void test_rmsnorm(kernels_half_format fmt) {
    const int rows = 7, dim = 300;
    const size_t n = (size_t)rows * dim;
    float *x = vec(n, -3, 3), *w = vec(dim, -2, 2);
    w[5] = 6.0e4f; /* fp16: 6e4 * |x rstd| passes 65504 on some rows -> inf */
    float *ref = poisoned(n), *ref_rstd = poisoned(rows), *out = poisoned(n), *rstd = poisoned(rows);
    uint16_t *ref_h = halves(n), *got_h = halves(n);
    K->rmsnorm_fwd(ref, ref_rstd, x, w, rows, dim, 1e-5f);
    K->to_half(ref_h, ref, n, fmt);
    char what[96];
    for (int with_out = 1; with_out >= 0; with_out--) {
        memset(got_h, 0xA5, n * sizeof *got_h);
        for (size_t i = 0; i < n; i++) out[i] = NAN;
        K->rmsnorm_fwd_half(fmt, got_h, dim, with_out ? out : NULL, rstd, x, w, rows, dim, 1e-5f);
        snprintf(what, sizeof what, "rmsnorm_fwd_half %s%s: 16-bit", fmt_name(fmt), with_out ? " +fp32" : "");
        CHECK_SAME(what, got_h, ref_h, n);
        CHECK_SAME("rmsnorm_fwd_half rstd", rstd, ref_rstd, (size_t)rows);
        if (with_out) CHECK_SAME("rmsnorm_fwd_half fp32 out", out, ref, n);
        else CHECK_MSG(isnan(out[0]) && isnan(out[n - 1]), "rmsnorm_fwd_half wrote out = NULL's buffer");
    }
    if (fmt == KERNELS_FP16)
        CHECK_MSG(count_bits(got_h, n, 0x7FFF, 0x7C00) > 0, "fp16 rmsnorm: no overflow to inf exercised");

    /* Rows ld_half apart (an odd gap, so rows start at every alignment): each row holds the
     * contiguous call's bits, the gaps keep their poison. */
    const int ld = dim + 13;
    const size_t n_ld = (size_t)rows * ld;
    uint16_t *got_ld = halves(n_ld);
    for (int with_out = 1; with_out >= 0; with_out--) {
        memset(got_ld, 0xA5, n_ld * sizeof *got_ld);
        for (size_t i = 0; i < n; i++) out[i] = NAN, rstd[i % rows] = NAN;
        K->rmsnorm_fwd_half(fmt, got_ld, ld, with_out ? out : NULL, rstd, x, w, rows, dim, 1e-5f);
        for (int r = 0; r < rows; r++) {
            snprintf(what, sizeof what, "rmsnorm_fwd_half %s ld_half %d%s: row %d", fmt_name(fmt), ld,
                     with_out ? " +fp32" : "", r);
            CHECK_SAME(what, got_ld + (size_t)r * ld, ref_h + (size_t)r * dim, (size_t)dim);
            CHECK_MSG(count_bits(got_ld + (size_t)r * ld + dim, (size_t)(ld - dim), 0xFFFF, 0xA5A5) ==
                          (size_t)(ld - dim), "%s: gap written", what);
        }
        CHECK_SAME("rmsnorm_fwd_half ld_half: rstd", rstd, ref_rstd, (size_t)rows);
        if (with_out) CHECK_SAME("rmsnorm_fwd_half ld_half: fp32 out stays contiguous", out, ref, n);
        else CHECK_MSG(isnan(out[0]) && isnan(out[n - 1]), "rmsnorm_fwd_half ld_half wrote out = NULL's buffer");
    }
    free(x), free(w), free(ref), free(ref_rstd), free(out), free(rstd), free(ref_h), free(got_h), free(got_ld);
}

/* rmsnorm_bwd_half: rmsnorm_bwd's dx (written, or added to a residual gradient) and dweight,
 * bit for bit, and the rounding of that dx in rows ld_half apart (dense and with an odd gap
 * whose poison must survive); dweight NULL (frozen) too. */
static void test_rmsnorm_bwd(kernels_half_format fmt) {
    const int rows = 7, dim = 300, ld = dim + 13;
    const size_t n = (size_t)rows * dim, n_ld = (size_t)rows * ld;
    float *x = vec(n, -3, 3), *w = vec(dim, -2, 2), *dout = vec(n, -1, 1), *dx0 = vec(n, -2, 2);
    float *dw0 = vec(dim, -1, 1), *y = poisoned(n), *rstd = poisoned(rows);
    w[5] = 2.0e5f; /* fp16: dx passes 65504 on that column -> inf, which loss scaling must see */
    K->rmsnorm_fwd(y, rstd, x, w, rows, dim, 1e-5f);
    float *ref_dx = poisoned(n), *ref_dw = poisoned(dim), *dx = poisoned(n), *dw = poisoned(dim);
    uint16_t *ref_h = halves(n), *got = halves(n_ld);
    char what[128];
    for (int add = 0; add <= 1; add++)
        for (int frozen = 0; frozen <= 1; frozen++)
            for (int gap = 0; gap <= 1; gap++) {
                const int ldh = gap ? ld : dim;
                memcpy(ref_dx, dx0, n * sizeof(float)), memcpy(dx, dx0, n * sizeof(float));
                memcpy(ref_dw, dw0, dim * sizeof(float)), memcpy(dw, dw0, dim * sizeof(float));
                K->rmsnorm_bwd(ref_dx, frozen ? NULL : ref_dw, dout, x, w, rstd, rows, dim, add);
                K->to_half(ref_h, ref_dx, n, fmt);
                memset(got, 0xA5, n_ld * sizeof *got);
                K->rmsnorm_bwd_half(fmt, got, ldh, dx, frozen ? NULL : dw, dout, x, w, rstd, rows, dim, add);
                snprintf(what, sizeof what, "rmsnorm_bwd_half %s%s%s ld_half %d", fmt_name(fmt),
                         add ? " (adds to dx)" : "", frozen ? " (frozen)" : "", ldh);
                CHECK_SAME(what, dx, ref_dx, n);
                CHECK_SAME(what, dw, ref_dw, (size_t)dim); /* frozen: both untouched */
                for (int r = 0; r < rows; r++) {
                    CHECK_SAME(what, got + (size_t)r * ldh, ref_h + (size_t)r * dim, (size_t)dim);
                    CHECK_MSG(count_bits(got + (size_t)r * ldh + dim, (size_t)(ldh - dim), 0xFFFF, 0xA5A5) ==
                                  (size_t)(ldh - dim), "%s: gap of row %d written", what, r);
                }
                if (fmt == KERNELS_FP16)
                    CHECK_MSG(count_bits(ref_h, n, 0x7FFF, 0x7C00) > 0, "%s: no overflow to inf exercised", what);
            }
    free(x), free(w), free(dout), free(dx0), free(dw0), free(y), free(rstd), free(ref_dx), free(ref_dw), free(dx);
    free(dw), free(ref_h), free(got);
}

/* to_half_2d on a [rows, cols] block of x (row stride ld_x) into a poisoned buffer at column
 * col0 (row stride ld_out): inside the block, to_half of scale * x row by row; outside it,
 * the poison. */
static void to_half_2d_case(kernels_half_format fmt, int rows, int cols, int ld_x, int ld_out, int col0,
                            float scale) {
    const size_t nx = (size_t)(rows ? rows : 1) * ld_x, nout = (size_t)(rows ? rows : 1) * ld_out;
    float *x = vec(nx, -3, 3);
    /* Values at the edges of the formats: fp16 overflow (65520 -> inf, 65519 -> 65504, also
     * after scale 2.5 for 3e4), fp16 subnormals, bf16 of an fp32 subnormal, infinities, a tie. */
    const uint32_t special[] = {0x477FF000u, 0x477FEF00u, 0x46EA6000u, 0xC7C35000u, 0x33800001u,
                                0x00123456u, 0x7F800000u, 0xFF800000u, 0x3F808000u, 0x80000000u};
    const int n_special = (int)(sizeof special / sizeof special[0]);
    for (int i = 0; i < n_special && i < rows * cols; i++)
        x[(size_t)(i % rows) * ld_x + (size_t)(i / rows) % (size_t)cols] = float_of(special[i]);
    float *kept = malloc(nx * sizeof(float));
    memcpy(kept, x, nx * sizeof(float));
    uint16_t *got = halves(nout), *row_ref = halves((size_t)cols);
    float *scaled = vec((size_t)cols, 0, 1);
    K->to_half_2d(fmt, got + col0, ld_out, x, ld_x, rows, cols, scale);
    char what[128];
    snprintf(what, sizeof what, "to_half_2d %s rows %d cols %d ld %d/%d col %d scale %g", fmt_name(fmt), rows,
             cols, ld_x, ld_out, col0, scale);
    for (int i = 0; i < rows; i++) {
        const float *xr = x + (size_t)i * ld_x;
        if (scale == 1.0f) {
            K->to_half(row_ref, xr, (size_t)cols, fmt);
        } else {
            for (int j = 0; j < cols; j++) scaled[j] = scale * xr[j];
            K->to_half(row_ref, scaled, (size_t)cols, fmt);
        }
        CHECK_SAME(what, got + (size_t)i * ld_out + col0, row_ref, (size_t)cols);
    }
    size_t untouched = 0;
    for (size_t k = 0; k < nout; k++) {
        const size_t i = k / (size_t)ld_out, j = k % (size_t)ld_out;
        const bool inside = i < (size_t)rows && j >= (size_t)col0 && j < (size_t)col0 + (size_t)cols;
        untouched += !inside && got[k] == 0xA5A5u;
    }
    const size_t outside = nout - (size_t)rows * cols;
    CHECK_MSG(untouched == outside, "%s: %zu of %zu elements outside the block written", what, outside - untouched,
              outside);
    CHECK_MSG(memcmp(x, kept, nx * sizeof(float)) == 0, "%s: x changed", what);
    if (fmt == KERNELS_FP16 && rows * cols >= 2 && scale == 1.0f)
        CHECK_MSG(count_bits(got + col0, 1, 0x7FFF, 0x7C00) == 1, "%s: 65520 did not overflow to inf", what);
    free(x), free(kept), free(got), free(row_ref), free(scaled);
}

static void test_to_half_2d(kernels_half_format fmt) {
    to_half_2d_case(fmt, 7, 37, 37, 37, 0, 1.0f);   /* contiguous, equals to_half of it all */
    to_half_2d_case(fmt, 7, 37, 41, 53, 5, 1.0f);   /* strided, beside other columns */
    to_half_2d_case(fmt, 9, 16, 16, 2064, 2048, 1.0f); /* a LoRA rank beside a Linear's input */
    to_half_2d_case(fmt, 7, 37, 41, 53, 5, 2.5f);   /* scaled: to_half of the fp32 products */
    to_half_2d_case(fmt, 300, 120, 130, 131, 3, 2.5f); /* past CPU_PARALLEL_MIN: threads split rows */
    to_half_2d_case(fmt, 0, 37, 41, 53, 5, 1.0f);   /* nothing to write */
    to_half_2d_case(fmt, 7, 0, 41, 53, 5, 1.0f);
    /* scale 1 is to_half itself, NaN included (same function on the CPU: same NaN bits). */
    float x[3] = {NAN, -NAN, 1.0f};
    uint16_t a[3], b[3];
    K->to_half(a, x, 3, fmt);
    K->to_half_2d(fmt, b, 3, x, 3, 1, 3, 1.0f);
    CHECK_SAME("to_half_2d of NaN at scale 1", b, a, 3);
}

/* embedding_fwd_half = from_half of the ids' rows, bit for bit (repeated ids, the table's
 * rows ld apart with other values between them, fp16 infinities and subnormals among the
 * values); the output poisoned first, so an unwritten element fails. */
static void test_embedding_fwd_half(kernels_half_format fmt) {
    const int vocab = 9, hidden = 37, ld = 41, n = 600; /* n x hidden past CPU_PARALLEL_MIN: threads */
    float *values = vec((size_t)vocab * ld, -70000, 70000);
    values[3 * ld + 5] = 1e-6f; /* fp16 subnormal; bf16 normal */
    uint16_t *table = halves((size_t)vocab * ld);
    K->to_half(table, values, (size_t)vocab * ld, fmt);
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    for (int t = 0; t < n; t++) ids[t] = (t * 7 + t / 5) % vocab;
    float *got = poisoned((size_t)n * hidden), *want = poisoned((size_t)n * hidden);
    for (int t = 0; t < n; t++) K->from_half(want + (size_t)t * hidden, table + (size_t)ids[t] * ld, hidden, fmt);
    K->embedding_fwd_half(fmt, got, table, ld, ids, n, hidden);
    char what[64];
    snprintf(what, sizeof what, "embedding_fwd_half %s", fmt_name(fmt));
    CHECK_SAME(what, got, want, (size_t)n * hidden);
    if (fmt == KERNELS_FP16) CHECK(count_bits(table, (size_t)vocab * ld, 0x7FFF, 0x7C00) > 0); /* infinities */
    free(values), free(table), free(ids), free(got), free(want);
}

/* A fused adapter's padded copy, [out + r, ld]: A's r rows below W's, scaling * B in the r
 * columns from u_col of W's rows, W's own part untouched. to_half_2d_many's bits are the two
 * to_half_2d calls', blocks of nothing included; through the shadow backend (the array and
 * the pointers in it both shifted) too. */
static void test_to_half_2d_many(kernels_half_format fmt) {
    const int in = 40, out = 24, r = 4, u_col = in + 3, ld = u_col + r + 2;
    const size_t n = (size_t)(out + r) * ld;
    float *a = vec((size_t)r * in, -2, 2), *b = vec((size_t)out * r, -2, 2);
    uint16_t *want = halves(n), *got = halves(n);
    K->to_half_2d(fmt, want + (size_t)out * ld, ld, a, in, r, in, 1.0f);
    K->to_half_2d(fmt, want + u_col, ld, b, r, out, r, 2.5f);
    const kernels_half_block blocks[3] = {{got + (size_t)out * ld, a, ld, in, r, in, 1.0f},
                                          {got, a, ld, in, 0, in, 1.0f}, /* no rows */
                                          {got + u_col, b, ld, r, out, r, 2.5f}};
    K->to_half_2d_many(fmt, blocks, 3);
    char what[96];
    snprintf(what, sizeof what, "to_half_2d_many %s", fmt_name(fmt));
    CHECK_SAME(what, got, want, n);
    CHECK_MSG(count_bits(got, (size_t)u_col, 0xFFFF, 0xA5A5) == (size_t)u_col, "%s: W's part written", what);

    const kernels *sh = kernels_shadow();
    uint16_t *dh = sh->alloc(n * sizeof(uint16_t));
    float *da = sh->alloc((size_t)r * in * sizeof(float)), *db = sh->alloc((size_t)out * r * sizeof(float));
    kernels_half_block *dblocks = sh->alloc(sizeof blocks);
    memset(got, 0xA5, n * sizeof *got);
    sh->upload(dh, got, n * sizeof(uint16_t));
    sh->upload(da, a, (size_t)r * in * sizeof(float));
    sh->upload(db, b, (size_t)out * r * sizeof(float));
    const kernels_half_block shifted[3] = {{dh + (size_t)out * ld, da, ld, in, r, in, 1.0f},
                                           {dh, da, ld, in, 0, in, 1.0f},
                                           {dh + u_col, db, ld, r, out, r, 2.5f}};
    sh->upload(dblocks, shifted, sizeof shifted);
    sh->to_half_2d_many(fmt, dblocks, 3);
    sh->download(got, dh, n * sizeof(uint16_t));
    snprintf(what, sizeof what, "shadow to_half_2d_many %s", fmt_name(fmt));
    CHECK_SAME(what, got, want, n);
    sh->release(dh), sh->release(da), sh->release(db), sh->release(dblocks);
    free(a), free(b), free(want), free(got);
}

/* rows of width cols, ld apart in buf (poisoned first): each holds want's row (contiguous,
 * width cols) and every element between cols and ld keeps its poison. */
static void check_rows(const char *what, const uint16_t *buf, int ld, const uint16_t *want, int rows, int cols) {
    for (int r = 0; r < rows; r++) {
        char row_what[160];
        snprintf(row_what, sizeof row_what, "%s: row %d", what, r);
        CHECK_SAME(row_what, buf + (size_t)r * ld, want + (size_t)r * cols, (size_t)cols);
        CHECK_MSG(count_bits(buf + (size_t)r * ld + cols, (size_t)(ld - cols), 0xFFFF, 0xA5A5) == (size_t)(ld - cols),
                  "%s: gap written", row_what);
    }
}

/* swiglu_fwd_half and swiglu_bwd_half over [rows, cols], their 16-bit outputs ld apart: the
 * fp32 ops on the widened roundings, then to_half, computed flat (index r * cols + c) and
 * compared row by row; gate_half, up_half and out stay contiguous. */
static void swiglu_case(kernels_half_format fmt, int rows, int cols, int ld) {
    const size_t n = (size_t)rows * cols, n_ld = (size_t)rows * ld;
    float *gate = vec(n, -8, 8), *up = vec(n, -3, 3), *dout = vec(n, -2, 2);
    if (n > 3) {
        up[3] = 7.0e4f; /* rounds to fp16 inf: its product must be inf or NaN as the widened path gives */
        gate[3] = 2.0f;
    }
    /* Reference: round the inputs, widen, run the fp32 ops, round the outputs. */
    uint16_t *hg = halves(n), *hu = halves(n), *ref_h = halves(n);
    float *g = poisoned(n), *u = poisoned(n), *ref = poisoned(n);
    K->to_half(hg, gate, n, fmt);
    K->to_half(hu, up, n, fmt);
    K->from_half(g, hg, n, fmt);
    K->from_half(u, hu, n, fmt);
    K->swiglu_fwd(ref, g, u, n);
    K->to_half(ref_h, ref, n, fmt);
    uint16_t *got_g = halves(n), *got_u = halves(n), *got_h = halves(n_ld);
    float *out = poisoned(n);
    char what[128];
    /* in16: gate and up NULL, the roundings the fp32-input call just wrote are the inputs (left
     * as they are). */
    for (int with_out = 1; with_out >= 0; with_out--)
        for (int in16 = 0; in16 <= 1; in16++) {
            memset(got_h, 0xA5, n_ld * sizeof *got_h);
            if (!in16) {
                memset(got_g, 0xA5, n * sizeof *got_g);
                memset(got_u, 0xA5, n * sizeof *got_u);
            }
            for (size_t i = 0; i < n; i++) out[i] = NAN;
            K->swiglu_fwd_half(fmt, got_h, ld, with_out ? out : NULL, got_g, got_u, in16 ? NULL : gate,
                               in16 ? NULL : up, rows, cols);
            snprintf(what, sizeof what, "swiglu_fwd_half %s [%d, %d] ld %d%s%s", fmt_name(fmt), rows, cols, ld,
                     with_out ? " +fp32" : "", in16 ? ", 16-bit in" : "");
            check_rows(what, got_h, ld, ref_h, rows, cols);
            CHECK_SAME("swiglu_fwd_half gate rounding", got_g, hg, n);
            CHECK_SAME("swiglu_fwd_half up rounding", got_u, hu, n);
            if (with_out) {
                CHECK_SAME("swiglu_fwd_half fp32 out", out, ref, n);
            } else {
                size_t written = 0;
                for (size_t i = 0; i < n; i++) written += !isnan(out[i]);
                CHECK_MSG(written == 0, "%s: wrote %zu elements of out = NULL's buffer", what, written);
            }
        }
    if (n >= 1000) { /* It is the rounded inputs that matter: the fp32 op on unrounded inputs differs. */
        float *exact = poisoned(n);
        uint16_t *exact_h = halves(n);
        K->swiglu_fwd(exact, gate, up, n);
        K->to_half(exact_h, exact, n, fmt);
        CHECK_MSG(first_diff(exact_h, ref_h, n, sizeof *ref_h) >= 0, "swiglu_fwd_half %s: same as unrounded inputs",
                  fmt_name(fmt));
        free(exact), free(exact_h);
    }

    uint16_t *ref_dg = halves(n), *ref_du = halves(n), *got_dg = halves(n_ld), *got_du = halves(n_ld);
    float *dg = poisoned(n), *du = poisoned(n);
    K->swiglu_bwd(dg, du, dout, g, u, n);
    K->to_half(ref_dg, dg, n, fmt);
    K->to_half(ref_du, du, n, fmt);
    K->swiglu_bwd_half(fmt, got_dg, got_du, ld, dout, hg, hu, rows, cols);
    snprintf(what, sizeof what, "swiglu_bwd_half %s [%d, %d] ld %d: dgate", fmt_name(fmt), rows, cols, ld);
    check_rows(what, got_dg, ld, ref_dg, rows, cols);
    snprintf(what, sizeof what, "swiglu_bwd_half %s [%d, %d] ld %d: dup", fmt_name(fmt), rows, cols, ld);
    check_rows(what, got_du, ld, ref_du, rows, cols);
    free(gate), free(up), free(dout), free(hg), free(hu), free(ref_h), free(g), free(u), free(ref);
    free(got_g), free(got_u), free(got_h), free(out);
    free(ref_dg), free(ref_du), free(got_dg), free(got_du), free(dg), free(du);
}

static void test_swiglu(kernels_half_format fmt) {
    swiglu_case(fmt, 1, 1001, 1001);  /* one flat row */
    swiglu_case(fmt, 7, 143, 143);    /* contiguous rows */
    swiglu_case(fmt, 7, 143, 150);    /* rows beside other columns (an odd gap) */
    swiglu_case(fmt, 9, 64, 64 + 16); /* a LoRA rank's columns beside each row */
    swiglu_case(fmt, 3, 5, 9);        /* rows * cols not a multiple of 4 */
    swiglu_case(fmt, 1, 7, 12);       /* one row */
    swiglu_case(fmt, 5, 1, 1);        /* one column */
    swiglu_case(fmt, 5, 1, 3);
    swiglu_case(fmt, 1, 1, 1);
    swiglu_case(fmt, 1, 1, 2);
    swiglu_case(fmt, 300, 121, 125);  /* past CPU_PARALLEL_MIN: threads split rows */
    /* Nothing to write: no element touched, NULL pointers never read. */
    uint16_t h[4] = {0xA5A5, 0xA5A5, 0xA5A5, 0xA5A5};
    K->swiglu_fwd_half(fmt, h, 4, NULL, NULL, NULL, NULL, NULL, 0, 4);
    K->swiglu_fwd_half(fmt, h, 4, NULL, NULL, NULL, NULL, NULL, 1, 0);
    K->swiglu_bwd_half(fmt, h, h, 4, NULL, NULL, NULL, 0, 4);
    K->swiglu_bwd_half(fmt, h, h, 4, NULL, NULL, NULL, 1, 0);
    CHECK_MSG(count_bits(h, 4, 0xFFFF, 0xA5A5) == 4, "swiglu_*_half %s: an empty call wrote", fmt_name(fmt));
}

/* gemm_half_to_half: gemm_half (alpha 1, beta 0) into fp32, then to_half_2d into rows ldc
 * apart, bit for bit, for every transpose pair, operands with padded rows, an output with a
 * gap (poison kept), k = 0 (zeros), and fp16's overflow to inf. */
static void gemm_to_half_case(kernels_half_format fmt, bool ta, bool tb, int m, int n, int k, int ldc, float big) {
    const int a_rows = ta ? k : m, a_cols = ta ? m : k, b_rows = tb ? n : k, b_cols = tb ? k : n;
    const int lda = a_cols + 3, ldb = b_cols + 1;
    float *a32 = vec((size_t)a_rows * lda, -2, 2), *b32 = vec((size_t)b_rows * ldb, -2, 2);
    if (k > 0) a32[0] = big; /* row 0 of the product (ta: column 0 of A, still the product's row 0) */
    uint16_t *a = halves((size_t)a_rows * lda), *b = halves((size_t)b_rows * ldb);
    K->to_half(a, a32, (size_t)a_rows * lda, fmt);
    K->to_half(b, b32, (size_t)b_rows * ldb, fmt);
    float *c = poisoned((size_t)m * n);
    uint16_t *want = halves((size_t)m * n), *got = halves((size_t)m * ldc);
    K->gemm_half(fmt, ta, tb, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, n);
    K->to_half(want, c, (size_t)m * n, fmt);
    K->gemm_half_to_half(fmt, ta, tb, m, n, k, a, lda, b, ldb, got, ldc);
    char what[128];
    snprintf(what, sizeof what, "gemm_half_to_half %s %c%c m %d n %d k %d ldc %d", fmt_name(fmt), ta ? 'T' : 'N',
             tb ? 'T' : 'N', m, n, k, ldc);
    check_rows(what, got, ldc, want, m, n);
    if (k == 0) CHECK_MSG(count_bits(got, (size_t)n, 0xFFFF, 0) == (size_t)n, "%s: not zeros", what);
    if (big > 65504.0f * 4 && fmt == KERNELS_FP16)
        CHECK_MSG(count_bits(got, (size_t)n, 0x7FFF, 0x7C00) > 0, "%s: no inf in row 0", what);
    free(a32), free(b32), free(a), free(b), free(c), free(want), free(got);
}

static void test_gemm_half_to_half(kernels_half_format fmt) {
    for (int t = 0; t < 4; t++) gemm_to_half_case(fmt, t & 1, t >> 1, 7, 13, 33, 13, 1.0f);
    gemm_to_half_case(fmt, false, true, 9, 20, 17, 20 + 16, 1.0f); /* a gap beside each row */
    gemm_to_half_case(fmt, false, true, 5, 6, 0, 9, 1.0f);         /* empty product */
    gemm_to_half_case(fmt, false, false, 4, 8, 16, 8, 3.0e5f);      /* fp16 overflow in row 0 */
    uint16_t h[2] = {0xA5A5, 0xA5A5};
    K->gemm_half_to_half(fmt, false, false, 0, 2, 3, NULL, 3, NULL, 2, h, 2);
    K->gemm_half_to_half(fmt, false, false, 1, 0, 3, NULL, 3, NULL, 1, h, 2);
    CHECK_MSG(count_bits(h, 2, 0xFFFF, 0xA5A5) == 2, "gemm_half_to_half %s: an empty call wrote", fmt_name(fmt));
}

/* rope_fwd_half / rope_bwd_half on [tokens, heads * d], 16-bit rows ld apart: rope_fwd /
 * rope_bwd in place on a copy, then to_half, bit for bit; x itself unchanged. Positions up to
 * 8191 with Llama-3's base (500000), so the angles span many turns. */
static void rope_case(kernels_half_format fmt, int tokens, int heads, int d, int ld) {
    const size_t width = (size_t)heads * d, n = (size_t)tokens * width;
    float *x = vec(n, -4, 4), *kept = malloc(n * sizeof(float)), *rotated = malloc(n * sizeof(float));
    float *inv_freq = malloc((size_t)(d / 2) * sizeof(float));
    int32_t *pos = malloc((size_t)tokens * sizeof(int32_t));
    for (int j = 0; j < d / 2; j++) inv_freq[j] = (float)pow(500000.0, -2.0 * j / d);
    for (int t = 0; t < tokens; t++) pos[t] = (int32_t)((t * 997) % 8192);
    memcpy(kept, x, n * sizeof(float));
    uint16_t *want = halves(n), *got = halves((size_t)tokens * ld);
    for (int backward = 0; backward <= 1; backward++) {
        memcpy(rotated, x, n * sizeof(float));
        (backward ? K->rope_bwd : K->rope_fwd)(rotated, pos, inv_freq, tokens, heads, d);
        K->to_half(want, rotated, n, fmt);
        memset(got, 0xA5, (size_t)tokens * ld * sizeof *got);
        (backward ? K->rope_bwd_half : K->rope_fwd_half)(fmt, got, ld, x, pos, inv_freq, tokens, heads, d);
        char what[128];
        snprintf(what, sizeof what, "rope_%s_half %s [%d, %d x %d] ld %d", backward ? "bwd" : "fwd", fmt_name(fmt),
                 tokens, heads, d, ld);
        check_rows(what, got, ld, want, tokens, (int)width);
        CHECK_MSG(memcmp(x, kept, n * sizeof(float)) == 0, "%s: changed its input", what);
        /* The rotation happened: the rounding of the unrotated input is another tensor. */
        K->to_half(want, x, n, fmt);
        const size_t last = (size_t)(tokens - 1); /* position 0 does not rotate; the last token's does */
        CHECK_MSG(tokens == 1 || first_diff(got + last * ld, want + last * width, width, sizeof *got) >= 0,
                  "%s: not rotated", what);
    }
    free(x), free(kept), free(rotated), free(inv_freq), free(pos), free(want), free(got);
}

static void test_rope(kernels_half_format fmt) {
    rope_case(fmt, 5, 4, 8, 32);         /* contiguous */
    rope_case(fmt, 7, 4, 8, 32 + 16);    /* room for a LoRA rank's du beside each row */
    rope_case(fmt, 3, 2, 64, 128 + 3);   /* an odd gap, Llama-3.2-1B's head_dim */
    rope_case(fmt, 1, 1, 2, 2);          /* one pair */
    rope_case(fmt, 300, 8, 64, 512 + 16); /* past CPU_PARALLEL_MIN: threads split tokens */
}

static void test_cross_entropy(kernels_half_format fmt) {
    const int rows = 6, vocab = 1031;
    const size_t n = (size_t)rows * vocab;
    float *logits = vec(n, -6, 6);
    int32_t targets[6] = {5, -1, 1030, 0, 77, -1};
    for (int r = 0; r < rows; r++) logits[(size_t)r * vocab + 11] = 9.0f; /* a clear favourite */
    const float scales[3] = {0.0f, 1.0f / 512.0f, 65536.0f * 4.0f}; /* fp16: the last overflows */
    char what[96];
    for (int si = 0; si < 3; si++) {
        const float gs = scales[si];
        float *ref = malloc(n * sizeof(float)), *ref_loss = poisoned(rows), *loss = poisoned(rows);
        memcpy(ref, logits, n * sizeof(float));
        K->cross_entropy(ref, ref_loss, targets, rows, vocab, gs);
        uint16_t *ref_h = halves(n), *got_h = halves(n);
        float *kept = malloc(n * sizeof(float));
        memcpy(kept, logits, n * sizeof(float));
        K->cross_entropy_half(fmt, got_h, logits, loss, targets, rows, vocab, gs);
        snprintf(what, sizeof what, "cross_entropy_half %s scale %g: loss", fmt_name(fmt), gs);
        CHECK_SAME(what, loss, ref_loss, (size_t)rows);
        CHECK_SAME("cross_entropy_half leaves the logits", logits, kept, n);
        CHECK(loss[1] == 0.0f && loss[5] == 0.0f && loss[0] > 0.0f);
        if (gs == 0.0f) {
            CHECK_MSG(count_bits(got_h, n, 0xFFFF, 0xA5A5) == n, "cross_entropy_half wrote a gradient at scale 0");
        } else {
            K->to_half(ref_h, ref, n, fmt);
            snprintf(what, sizeof what, "cross_entropy_half %s scale %g: gradient", fmt_name(fmt), gs);
            CHECK_SAME(what, got_h, ref_h, n);
            CHECK_MSG(count_bits(got_h + vocab, (size_t)vocab, 0xFFFF, 0) == (size_t)vocab,
                      "cross_entropy_half: ignored row not zero");
            if (fmt == KERNELS_FP16 && gs > 65504.0f)
                CHECK_MSG(count_bits(got_h, n, 0xFFFF, 0xFC00) > 0, "fp16 cross_entropy: no -inf at the targets");
        }
        free(ref), free(ref_loss), free(loss), free(ref_h), free(got_h), free(kept);
    }
    free(logits);
}

/* Through the shadow backend's shifted pointers: the strided writes land where the CPU's do. */
static void test_shadow_strided(void) {
    const kernels *cpu = kernels_cpu(), *sh = kernels_shadow();
    const int rows = 5, cols = 11, ld = 16, dim = 11;
    float *x = vec((size_t)rows * ld, -3, 3), *w = vec((size_t)dim, -2, 2);
    uint16_t *want = halves((size_t)rows * ld), *got = halves((size_t)rows * ld);
    float rstd[5];
    float *dx = sh->alloc((size_t)rows * ld * sizeof(float)), *dw = sh->alloc((size_t)dim * sizeof(float));
    float *drstd = sh->alloc((size_t)rows * sizeof(float));
    uint16_t *dh = sh->alloc((size_t)rows * ld * sizeof(uint16_t));
    sh->upload(dx, x, (size_t)rows * ld * sizeof(float));
    sh->upload(dw, w, (size_t)dim * sizeof(float));
    sh->upload(dh, want, (size_t)rows * ld * sizeof(uint16_t));
    cpu->to_half_2d(KERNELS_FP16, want + 2, ld, x, ld, rows, cols, 0.5f);
    sh->to_half_2d(KERNELS_FP16, dh + 2, ld, dx, ld, rows, cols, 0.5f);
    sh->download(got, dh, (size_t)rows * ld * sizeof(uint16_t));
    CHECK_SAME("shadow to_half_2d", got, want, (size_t)rows * ld);
    /* rmsnorm on the first dim columns of x's rows (contiguous x: rows of dim). */
    cpu->rmsnorm_fwd_half(KERNELS_BF16, want + 1, ld, NULL, rstd, x, w, rows, dim, 1e-5f);
    sh->rmsnorm_fwd_half(KERNELS_BF16, dh + 1, ld, NULL, drstd, dx, dw, rows, dim, 1e-5f);
    sh->download(got, dh, (size_t)rows * ld * sizeof(uint16_t));
    CHECK_SAME("shadow rmsnorm_fwd_half ld_half", got, want, (size_t)rows * ld);
    /* its backward, x's rows as dout, dx rounded beside a gap of 4 columns */
    float *ref_dx = poisoned((size_t)rows * dim), ref_dw[11] = {0};
    float *d_dx = sh->alloc((size_t)rows * dim * sizeof(float)), *d_dw = sh->alloc(sizeof ref_dw);
    sh->upload(d_dx, x, (size_t)rows * dim * sizeof(float));
    sh->upload(d_dw, ref_dw, sizeof ref_dw);
    memcpy(ref_dx, x, (size_t)rows * dim * sizeof(float));
    cpu->rmsnorm_bwd_half(KERNELS_FP16, want + 4, ld, ref_dx, ref_dw, x, x, w, rstd, rows, dim, true);
    sh->rmsnorm_bwd_half(KERNELS_FP16, dh + 4, ld, d_dx, d_dw, dx, dx, dw, drstd, rows, dim, true);
    sh->download(got, dh, (size_t)rows * ld * sizeof(uint16_t));
    CHECK_SAME("shadow rmsnorm_bwd_half ld_half", got, want, (size_t)rows * ld);
    float got_dw[11];
    sh->download(got_dw, d_dw, sizeof got_dw);
    CHECK_SAME("shadow rmsnorm_bwd_half dweight", got_dw, ref_dw, (size_t)dim);
    sh->release(d_dx), sh->release(d_dw), free(ref_dx);
    /* swiglu on [rows, cols], gate and up contiguous inside x, 16-bit outputs ld apart from
     * column 3 (out_half, then dgate_half), dup_half in a second strided buffer. */
    const size_t n = (size_t)rows * cols;
    uint16_t *gh = halves(n), *uh = halves(n), *want2 = halves((size_t)rows * ld), *got2 = halves((size_t)rows * ld);
    float *out = poisoned(n), *got_out = poisoned(n);
    uint16_t *dgh = sh->alloc(n * sizeof(uint16_t)), *duh = sh->alloc(n * sizeof(uint16_t));
    uint16_t *dh2 = sh->alloc((size_t)rows * ld * sizeof(uint16_t));
    float *dout = sh->alloc(n * sizeof(float));
    sh->upload(dh2, want2, (size_t)rows * ld * sizeof(uint16_t));
    cpu->swiglu_fwd_half(KERNELS_FP16, want + 3, ld, out, gh, uh, x, x + ld, rows, cols);
    sh->swiglu_fwd_half(KERNELS_FP16, dh + 3, ld, dout, dgh, duh, dx, dx + ld, rows, cols);
    sh->download(got, dh, (size_t)rows * ld * sizeof(uint16_t));
    CHECK_SAME("shadow swiglu_fwd_half ld_half", got, want, (size_t)rows * ld);
    sh->download(got_out, dout, n * sizeof(float));
    CHECK_SAME("shadow swiglu_fwd_half out", got_out, out, n);
    /* again from the 16-bit gate and up it kept */
    cpu->swiglu_fwd_half(KERNELS_FP16, want + 2, ld, NULL, gh, uh, NULL, NULL, rows, cols);
    sh->swiglu_fwd_half(KERNELS_FP16, dh + 2, ld, NULL, dgh, duh, NULL, NULL, rows, cols);
    sh->download(got, dh, (size_t)rows * ld * sizeof(uint16_t));
    CHECK_SAME("shadow swiglu_fwd_half 16-bit in", got, want, (size_t)rows * ld);
    /* gemm_half_to_half: [rows, 4] = gh [rows, cols] (gh's rows cols apart) times uh's first 4 rows^T,
     * into dh2's rows from column 5 */
    cpu->gemm_half_to_half(KERNELS_FP16, false, true, rows, 4, cols, gh, cols, uh, cols, want2 + 5, ld);
    sh->gemm_half_to_half(KERNELS_FP16, false, true, rows, 4, cols, dgh, cols, duh, cols, dh2 + 5, ld);
    sh->download(got2, dh2, (size_t)rows * ld * sizeof(uint16_t));
    CHECK_SAME("shadow gemm_half_to_half", got2, want2, (size_t)rows * ld);
    /* embedding_fwd_half: gh's rows (cols apart) as a table of `rows` ids, hidden 4 */
    {
        const int32_t ids[6] = {4, 0, 2, 2, 1, 4};
        int32_t *dids = sh->alloc(sizeof ids);
        sh->upload(dids, ids, sizeof ids);
        float want_e[24], got_e[24];
        cpu->embedding_fwd_half(KERNELS_FP16, want_e, gh, cols, ids, 6, 4);
        sh->embedding_fwd_half(KERNELS_FP16, dout, dgh, cols, dids, 6, 4);
        sh->download(got_e, dout, sizeof got_e);
        CHECK_SAME("shadow embedding_fwd_half", got_e, want_e, 24);
        sh->release(dids);
    }
    cpu->swiglu_bwd_half(KERNELS_BF16, want + 3, want2 + 1, ld, x + 2, gh, uh, rows, cols);
    sh->swiglu_bwd_half(KERNELS_BF16, dh + 3, dh2 + 1, ld, dx + 2, dgh, duh, rows, cols);
    sh->download(got, dh, (size_t)rows * ld * sizeof(uint16_t));
    sh->download(got2, dh2, (size_t)rows * ld * sizeof(uint16_t));
    CHECK_SAME("shadow swiglu_bwd_half dgate", got, want, (size_t)rows * ld);
    CHECK_SAME("shadow swiglu_bwd_half dup", got2, want2, (size_t)rows * ld);
    sh->release(dx), sh->release(dw), sh->release(drstd), sh->release(dh);
    sh->release(dgh), sh->release(duh), sh->release(dh2), sh->release(dout);
    free(x), free(w), free(want), free(got), free(gh), free(uh), free(want2), free(got2), free(out), free(got_out);
}

/* The RoPE producers through the shadow backend's shifted pointers: the CPU's bits, beside a
 * gap of 5 columns. */
static void test_shadow_rope(void) {
    const kernels *cpu = kernels_cpu(), *sh = kernels_shadow();
    const int tokens = 6, heads = 2, d = 8, width = heads * d, ld = width + 5;
    float *x = vec((size_t)tokens * width, -3, 3), inv_freq[4] = {1.0f, 0.1f, 0.01f, 0.001f};
    int32_t pos[6] = {0, 1, 2, 700, 5000, 8191};
    uint16_t *want = halves((size_t)tokens * ld), *got = halves((size_t)tokens * ld);
    float *dx = sh->alloc((size_t)tokens * width * sizeof(float)), *dinv = sh->alloc(sizeof inv_freq);
    int32_t *dpos = sh->alloc(sizeof pos);
    uint16_t *dh = sh->alloc((size_t)tokens * ld * sizeof(uint16_t));
    sh->upload(dx, x, (size_t)tokens * width * sizeof(float));
    sh->upload(dinv, inv_freq, sizeof inv_freq);
    sh->upload(dpos, pos, sizeof pos);
    for (int backward = 0; backward <= 1; backward++) {
        sh->upload(dh, want, (size_t)tokens * ld * sizeof(uint16_t));
        (backward ? cpu->rope_bwd_half : cpu->rope_fwd_half)(KERNELS_FP16, want, ld, x, pos, inv_freq, tokens, heads,
                                                            d);
        (backward ? sh->rope_bwd_half : sh->rope_fwd_half)(KERNELS_FP16, dh, ld, dx, dpos, dinv, tokens, heads, d);
        sh->download(got, dh, (size_t)tokens * ld * sizeof(uint16_t));
        CHECK_SAME(backward ? "shadow rope_bwd_half" : "shadow rope_fwd_half", got, want, (size_t)tokens * ld);
    }
    sh->release(dx), sh->release(dinv), sh->release(dpos), sh->release(dh);
    free(x), free(want), free(got);
}

int main(void) {
    K = kernels_cpu();
    const kernels_half_format fmts[2] = {KERNELS_BF16, KERNELS_FP16};
    for (int f = 0; f < 2; f++) {
        test_rmsnorm(fmts[f]);
        test_swiglu(fmts[f]);
        test_cross_entropy(fmts[f]);
        test_to_half_2d(fmts[f]);
    }
    for (int f = 0; f < 2; f++) test_gemm_half_to_half(fmts[f]);
    for (int f = 0; f < 2; f++) test_rope(fmts[f]); /* after the others: their random inputs stay as they were */
    for (int f = 0; f < 2; f++) test_rmsnorm_bwd(fmts[f]);
    for (int f = 0; f < 2; f++) test_to_half_2d_many(fmts[f]);
    for (int f = 0; f < 2; f++) test_embedding_fwd_half(fmts[f]);
    /* The shadow backend routes every new entry to the same CPU code (a NULL slot crashes). */
    K = kernels_shadow();
    CHECK(K->gemm_half_to_half && K->rmsnorm_fwd_half && K->rmsnorm_bwd_half && K->to_half_2d_many && K->swiglu_fwd_half && K->swiglu_bwd_half && K->cross_entropy_half &&
          K->to_half_2d && K->rope_fwd_half && K->rope_bwd_half && K->embedding_fwd_half);
    test_shadow_strided();
    test_shadow_rope();
    return check_summary("test_half_producers");
}
