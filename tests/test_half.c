/* Tests of the 16-bit kernels of the CPU backend (kernels/cpu/half.c) and their shadow-backend
 * wrappers: conversions against torch's bits (tests/fixtures/half/conversions.txt, made by
 * scripts/gen_half_fixtures.py) and against an independent rounding computed in double with
 * nearbyint; every 16-bit pattern through a round trip; gemm_half against a double reference
 * and against cpu_gemm on the widened matrices. */
#include <fenv.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/kernels.h"
#include "tests/check.h"
#include "tests/half_bits.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint32_t rand32(void) {
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}
static float urand(float lo, float hi) { return lo + (hi - lo) * (float)((rand32() >> 8) * 0x1p-24); }

static const char *fmt_name(kernels_half_format fmt) { return fmt == KERNELS_BF16 ? "bf16" : "fp16"; }

/* ---- torch's bits ---- */

typedef struct {
    uint32_t f32, bf16, fp16, bf16_wide, fp16_wide;
} conversion_row;

static size_t load_fixture(conversion_row **rows_out) {
    char path[4096];
    check_source_path("tests/fixtures/half/conversions.txt", path, sizeof path);
    FILE *f = fopen(path, "r");
    CHECK_MSG(f != NULL, "cannot open %s", path);
    if (!f) return 0;
    size_t count = 0, cap = 512;
    conversion_row *rows = malloc(cap * sizeof *rows);
    char line[256];
    int line_no = 0;
    while (fgets(line, sizeof line, f)) {
        line_no++;
        if (line[0] == '#' || line[0] == '\n') continue;
        conversion_row r;
        int got = sscanf(line, "%x %x %x %x %x", &r.f32, &r.bf16, &r.fp16, &r.bf16_wide, &r.fp16_wide);
        CHECK_MSG(got == 5, "%s:%d: expected 5 hex fields", path, line_no);
        if (got != 5) continue;
        if (count == cap) rows = realloc(rows, (cap *= 2) * sizeof *rows);
        rows[count++] = r;
    }
    fclose(f);
    *rows_out = rows;
    return count;
}

static void test_fixture(const kernels *K) {
    conversion_row *rows = NULL;
    size_t n = load_fixture(&rows);
    CHECK_MSG(n >= 350, "fixture has %zu rows", n);
    if (!n) return;
    float *x = malloc(n * sizeof(float)), *wide = malloc(n * sizeof(float));
    uint16_t *h = malloc(n * sizeof(uint16_t)), *expected = malloc(n * sizeof(uint16_t));
    for (int f = 0; f < 2; f++) {
        kernels_half_format fmt = f == 0 ? KERNELS_BF16 : KERNELS_FP16;
        for (size_t i = 0; i < n; i++) x[i] = float_of(rows[i].f32);
        K->to_half(h, x, n, fmt);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) {
            uint16_t want = (uint16_t)(fmt == KERNELS_BF16 ? rows[i].bf16 : rows[i].fp16);
            expected[i] = want;
            bool ok = isnan(x[i]) ? half_is_nan(h[i], fmt) : h[i] == want;
            if (!ok && bad++ < 5)
                fprintf(stderr, "%s: to_half(%08x) = %04x, torch %04x\n", fmt_name(fmt), rows[i].f32,
                        h[i], want);
        }
        CHECK_MSG(bad == 0, "%s: %zu of %zu conversions differ from torch", fmt_name(fmt), bad, n);

        K->from_half(wide, expected, n, fmt);
        bad = 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t want = fmt == KERNELS_BF16 ? rows[i].bf16_wide : rows[i].fp16_wide;
            bool ok = isnan(float_of(want)) ? isnan(wide[i]) : bits_of(wide[i]) == want;
            if (!ok && bad++ < 5)
                fprintf(stderr, "%s: from_half(%04x) = %08x, torch %08x\n", fmt_name(fmt), expected[i],
                        bits_of(wide[i]), want);
        }
        CHECK_MSG(bad == 0, "%s: %zu of %zu widenings differ from torch", fmt_name(fmt), bad, n);
    }
    free(x), free(wide), free(h), free(expected), free(rows);
}

/* ---- independent references in double ---- */

/* The value of a 16-bit pattern from its fields (NaN for NaN patterns). */
static double half_value(uint16_t h, kernels_half_format fmt) {
    int mant_bits = fmt == KERNELS_BF16 ? 7 : 10, exp_bits = 15 - mant_bits;
    int bias = (1 << (exp_bits - 1)) - 1, exp_max = (1 << exp_bits) - 1;
    int sign = h >> 15, e = (h >> mant_bits) & exp_max, mant = h & ((1 << mant_bits) - 1);
    double v;
    if (e == exp_max) v = mant ? NAN : INFINITY;
    else if (e == 0) v = ldexp(mant, 1 - bias - mant_bits);
    else v = ldexp(mant + (1 << mant_bits), e - bias - mant_bits);
    return sign ? -v : v;
}

/* x rounded to the format by scaling to an integer count of ulps and nearbyint (ties to even
 * in the default rounding mode); exact in double, since the scaling is by a power of two. */
static double round_reference(float x, kernels_half_format fmt) {
    int mant_bits = fmt == KERNELS_BF16 ? 7 : 10, min_exp = fmt == KERNELS_BF16 ? -126 : -14;
    double overflow = fmt == KERNELS_BF16 ? 0x1p128 : 65536.0;
    if (isnan(x) || isinf(x) || x == 0.0f) return x;
    int e;
    frexp(x, &e); /* |x| in [2^(e-1), 2^e) */
    int unit_exp = (e - 1 < min_exp ? min_exp : e - 1) - mant_bits;
    double r = ldexp(nearbyint(ldexp(x, -unit_exp)), unit_exp);
    if (fabs(r) >= overflow) r = copysign(INFINITY, x);
    return r == 0.0 ? copysign(0.0, x) : r;
}

static void test_against_rounding_reference(const kernels *K) {
    CHECK(fegetround() == FE_TONEAREST);
    /* Random bit patterns over every exponent, plus values concentrated near 16-bit ties:
     * large enough to take the OpenMP path. */
    size_t n = 1u << 20;
    float *x = malloc(n * sizeof(float));
    uint16_t *h = malloc(n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++) {
        uint32_t u = rand32();
        if (i % 4 == 1) u = (u & ~0xFFFFu) | 0x8000u | (rand32() % 3 == 0 ? 1u : 0u);
        if (i % 4 == 2) u = (u & 0x80000000u) | ((rand32() % 50u + 100u) << 23) | (u & 0x7FFFFFu);
        if (i % 4 == 3) u = (u & ~0x1FFFu) | 0x1000u;
        x[i] = float_of(u);
    }
    for (int f = 0; f < 2; f++) {
        kernels_half_format fmt = f == 0 ? KERNELS_BF16 : KERNELS_FP16;
        K->to_half(h, x, n, fmt);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) {
            double want = round_reference(x[i], fmt), got = half_value(h[i], fmt);
            bool ok = isnan(x[i]) ? half_is_nan(h[i], fmt)
                                  : got == want && !signbit(got) == !signbit(want);
            if (!ok && bad++ < 5)
                fprintf(stderr, "%s: %08x -> %04x (%.9g), reference %.9g\n", fmt_name(fmt),
                        bits_of(x[i]), h[i], got, want);
        }
        CHECK_MSG(bad == 0, "%s: %zu of %zu roundings differ from the reference", fmt_name(fmt), bad, n);
    }
    free(x), free(h);
}

/* Every 16-bit pattern: from_half gives its value (fields decoded independently), and
 * to_half of that gives the pattern back (NaNs: a NaN). */
static void test_all_patterns(const kernels *K) {
    size_t n = 65536;
    uint16_t *h = malloc(n * sizeof(uint16_t)), *back = malloc(n * sizeof(uint16_t));
    float *wide = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = (uint16_t)i;
    for (int f = 0; f < 2; f++) {
        kernels_half_format fmt = f == 0 ? KERNELS_BF16 : KERNELS_FP16;
        K->from_half(wide, h, n, fmt);
        K->to_half(back, wide, n, fmt);
        size_t bad_value = 0, bad_trip = 0;
        for (size_t i = 0; i < n; i++) {
            double v = half_value(h[i], fmt);
            bool nan = half_is_nan(h[i], fmt);
            bool value_ok = nan ? isnan(wide[i]) : (double)wide[i] == v && !signbit(wide[i]) == !signbit(v);
            if (fmt == KERNELS_BF16 && !nan) value_ok = value_ok && bits_of(wide[i]) == (uint32_t)i << 16;
            bool trip_ok = nan ? half_is_nan(back[i], fmt) : back[i] == h[i];
            if (!value_ok && bad_value++ < 5)
                fprintf(stderr, "%s: from_half(%04zx) = %.9g, expected %.9g\n", fmt_name(fmt), i, wide[i], v);
            if (!trip_ok && bad_trip++ < 5)
                fprintf(stderr, "%s: round trip %04zx -> %04x\n", fmt_name(fmt), i, back[i]);
        }
        CHECK_MSG(bad_value == 0, "%s: %zu widenings wrong", fmt_name(fmt), bad_value);
        CHECK_MSG(bad_trip == 0, "%s: %zu round trips wrong", fmt_name(fmt), bad_trip);
    }
    free(h), free(back), free(wide);
}

/* ---- gemm_half ---- */

typedef struct {
    int m, n, k;
    bool ta, tb;
    int pad_a, pad_b, pad_c; /* extra columns of the leading dimensions */
    float alpha, beta;
} gemm_case;

#define SENTINEL_C 12345.0f

static void run_gemm_case(const kernels *K, kernels_half_format fmt, gemm_case g) {
    int a_rows = g.ta ? g.k : g.m, a_cols = g.ta ? g.m : g.k;
    int b_rows = g.tb ? g.n : g.k, b_cols = g.tb ? g.k : g.n;
    int lda = a_cols + g.pad_a, ldb = b_cols + g.pad_b, ldc = g.n + g.pad_c;
    size_t a_size = (size_t)a_rows * lda + 1, b_size = (size_t)b_rows * ldb + 1;
    size_t c_size = (size_t)g.m * ldc + 1;
    uint16_t *a = malloc(a_size * sizeof(uint16_t)), *b = malloc(b_size * sizeof(uint16_t));
    float *tmp = malloc((a_size > b_size ? a_size : b_size) * sizeof(float));
    float *a32 = malloc(a_size * sizeof(float)), *b32 = malloc(b_size * sizeof(float));
    float *c = malloc(c_size * sizeof(float)), *c0 = malloc(c_size * sizeof(float));
    float *c_fp32 = malloc(c_size * sizeof(float));
    uint16_t nan16 = fmt == KERNELS_BF16 ? 0x7FC0u : 0x7E00u;

    /* Padding of A and B holds NaN: reading outside op(A) / op(B) would poison C. */
    for (size_t i = 0; i < a_size; i++) tmp[i] = urand(-2.0f, 2.0f);
    K->to_half(a, tmp, a_size, fmt);
    for (int r = 0; r < a_rows; r++)
        for (int col = a_cols; col < lda; col++) a[(size_t)r * lda + col] = nan16;
    a[a_size - 1] = nan16;
    for (size_t i = 0; i < b_size; i++) tmp[i] = urand(-2.0f, 2.0f);
    K->to_half(b, tmp, b_size, fmt);
    for (int r = 0; r < b_rows; r++)
        for (int col = b_cols; col < ldb; col++) b[(size_t)r * ldb + col] = nan16;
    b[b_size - 1] = nan16;
    K->from_half(a32, a, a_size, fmt);
    K->from_half(b32, b, b_size, fmt);

    for (size_t i = 0; i < c_size; i++) c0[i] = SENTINEL_C;
    for (int i = 0; i < g.m; i++)
        for (int j = 0; j < g.n; j++) c0[(size_t)i * ldc + j] = g.beta == 0.0f ? NAN : urand(-1.0f, 1.0f);
    memcpy(c, c0, c_size * sizeof(float));
    memcpy(c_fp32, c0, c_size * sizeof(float));

    K->gemm_half(fmt, g.ta, g.tb, g.m, g.n, g.k, g.alpha, a, lda, b, ldb, g.beta, c, ldc);
    cpu_gemm(g.ta, g.tb, g.m, g.n, g.k, g.alpha, a32, lda, b32, ldb, g.beta, c_fp32, ldc);

    double max_err = 0.0, max_scale = 0.0;
    bool finite = true, padding_kept = true;
    for (int i = 0; i < g.m; i++) {
        for (int j = 0; j < g.n; j++) {
            double sum = 0.0, abs_sum = 0.0;
            for (int p = 0; p < g.k; p++) {
                double av = a32[g.ta ? (size_t)p * lda + i : (size_t)i * lda + p];
                double bv = b32[g.tb ? (size_t)j * ldb + p : (size_t)p * ldb + j];
                sum += av * bv, abs_sum += fabs(av * bv);
            }
            double cin = g.beta == 0.0f ? 0.0 : c0[(size_t)i * ldc + j];
            double ref = g.alpha * sum + g.beta * cin;
            double scale = fabs(g.alpha) * abs_sum + fabs(g.beta * cin);
            double got = c[(size_t)i * ldc + j];
            if (!isfinite(got)) finite = false;
            if (fabs(got - ref) > max_err) max_err = fabs(got - ref);
            if (scale > max_scale) max_scale = scale;
        }
        for (int j = g.n; j < ldc; j++) padding_kept &= c[(size_t)i * ldc + j] == SENTINEL_C;
    }
    padding_kept &= c[c_size - 1] == SENTINEL_C;
    char what[160];
    snprintf(what, sizeof what, "%s m=%d n=%d k=%d ta=%d tb=%d pads=%d,%d,%d alpha=%g beta=%g",
             fmt_name(fmt), g.m, g.n, g.k, g.ta, g.tb, g.pad_a, g.pad_b, g.pad_c, g.alpha, g.beta);
    CHECK_MSG(finite, "%s: non-finite output", what);
    CHECK_MSG(max_err <= 1e-6 * (max_scale > 0.0 ? max_scale : 1.0), "%s: error %g, scale %g", what,
              max_err, max_scale);
    CHECK_MSG(padding_kept, "%s: C outside [m, n] was written", what);
    CHECK_MSG(memcmp(c, c_fp32, c_size * sizeof(float)) == 0, "%s: differs from cpu_gemm on fp32", what);
    free(a), free(b), free(tmp), free(a32), free(b32), free(c), free(c0), free(c_fp32);
}

static void test_gemm(const kernels *K) {
    const gemm_case cases[] = {
        {1, 1, 1, false, false, 0, 0, 0, 1.0f, 0.0f},
        {7, 5, 3, false, false, 0, 0, 0, 1.0f, 0.0f},
        {16, 24, 40, false, true, 0, 0, 0, 1.0f, 0.0f},  /* a Linear layer: x W^T */
        {24, 16, 40, true, false, 3, 5, 2, 0.5f, 1.0f},  /* a weight gradient: dy^T x, accumulated */
        {13, 11, 67, true, true, 1, 2, 3, -1.5f, 0.25f},
        {33, 65, 129, false, false, 7, 1, 4, 2.0f, -1.0f},
        {9, 300, 17, false, true, 0, 9, 0, 1.0f, 0.0f},
        {5, 6, 0, false, false, 2, 2, 1, 1.0f, 0.5f},    /* k = 0: C = beta C */
        {5, 6, 0, true, true, 0, 0, 1, 1.0f, 0.0f},      /* k = 0, beta = 0: C = 0 even from NaN */
        /* one row (a generated token): B widened per 256-column tile, the same bits */
        {1, 600, 700, false, true, 0, 3, 0, 1.0f, 0.0f},
        {1, 520, 300, false, false, 2, 5, 1, 0.5f, 1.0f},
        {1, 300, 517, true, false, 3, 0, 2, -1.5f, 0.25f},
        {1, 17, 40, true, true, 1, 2, 3, 1.0f, 0.0f},
    };
    for (int f = 0; f < 2; f++)
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            run_gemm_case(K, f == 0 ? KERNELS_BF16 : KERNELS_FP16, cases[i]);

    /* gemm_half_add: the bits of gemm_half (alpha 1, beta 0) then add, with and without a row
     * gap (the gap columns untouched). */
    for (int f = 0; f < 2; f++)
        for (int gap = 0; gap <= 3; gap += 3) {
            const kernels_half_format fmt = f == 0 ? KERNELS_BF16 : KERNELS_FP16;
            const int m = 37, n = 29, k = 300, ldc = n + gap;
            uint16_t *a = malloc((size_t)m * k * sizeof(uint16_t)), *b = malloc((size_t)n * k * sizeof(uint16_t));
            float *r = malloc((size_t)m * ldc * sizeof(float)), *want = malloc((size_t)m * ldc * sizeof(float));
            float *got = malloc((size_t)m * ldc * sizeof(float)), *tmp = malloc((size_t)m * k * sizeof(float));
            for (int i = 0; i < m * k; i++) tmp[i] = urand(-1.0f, 1.0f);
            K->to_half(a, tmp, (size_t)m * k, fmt);
            for (int i = 0; i < n * k; i++) tmp[i] = urand(-1.0f, 1.0f);
            K->to_half(b, tmp, (size_t)n * k, fmt);
            for (int i = 0; i < m * ldc; i++) r[i] = urand(-4.0f, 4.0f), want[i] = got[i] = SENTINEL_C;
            K->gemm_half(fmt, false, true, m, n, k, 1.0f, a, k, b, k, 0.0f, want, ldc);
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++) want[i * ldc + j] += r[i * ldc + j];
            K->gemm_half_add(fmt, false, true, m, n, k, a, k, b, k, r, got, ldc);
            CHECK_MSG(memcmp(want, got, (size_t)m * ldc * sizeof(float)) == 0,
                      "%s gemm_half_add gap %d: not gemm_half then add, bit for bit", fmt_name(fmt), gap);
            free(a), free(b), free(r), free(want), free(got), free(tmp);
        }

    /* m = 0 or n = 0: nothing is read or written. */
    float c = SENTINEL_C;
    uint16_t one = 0x3F80u;
    K->gemm_half(KERNELS_BF16, false, false, 0, 1, 1, 1.0f, &one, 1, &one, 1, 0.0f, &c, 1);
    K->gemm_half(KERNELS_BF16, false, false, 1, 0, 1, 1.0f, &one, 1, &one, 1, 0.0f, &c, 1);
    CHECK(c == SENTINEL_C);
}

/* ---- shadow backend: the same bits through its pointers ---- */

static void test_shadow(const kernels *cpu, const kernels *shadow) {
    size_t n = 40000; /* above CPU_PARALLEL_MIN */
    float *x = malloc(n * sizeof(float)), *wide_cpu = malloc(n * sizeof(float));
    float *wide_shadow = malloc(n * sizeof(float));
    uint16_t *h_cpu = malloc(n * sizeof(uint16_t)), *h_shadow = malloc(n * sizeof(uint16_t));
    /* finite values where the gemm below reads, any bit pattern after them */
    for (size_t i = 0; i < n; i++) x[i] = i < 2000 ? urand(-2.0f, 2.0f) : float_of(rand32());
    float *dx = shadow->alloc(n * sizeof(float)), *dwide = shadow->alloc(n * sizeof(float));
    uint16_t *dh = shadow->alloc(n * sizeof(uint16_t));
    CHECK(dx && dwide && dh);
    if (!dx || !dwide || !dh) return;
    shadow->upload(dx, x, n * sizeof(float));
    for (int f = 0; f < 2; f++) {
        kernels_half_format fmt = f == 0 ? KERNELS_BF16 : KERNELS_FP16;
        cpu->to_half(h_cpu, x, n, fmt);
        shadow->to_half(dh, dx, n, fmt);
        shadow->download(h_shadow, dh, n * sizeof(uint16_t));
        CHECK_MSG(memcmp(h_cpu, h_shadow, n * sizeof(uint16_t)) == 0, "%s: shadow to_half", fmt_name(fmt));
        cpu->from_half(wide_cpu, h_cpu, n, fmt);
        shadow->from_half(dwide, dh, n, fmt);
        shadow->download(wide_shadow, dwide, n * sizeof(float));
        CHECK_MSG(memcmp(wide_cpu, wide_shadow, n * sizeof(float)) == 0, "%s: shadow from_half", fmt_name(fmt));

        /* gemm on [20,30] x [30,25]^T-stored B, padded, accumulating into C */
        int m = 20, nn = 25, k = 30, lda = 33, ldb = 31, ldc = 27;
        size_t c_size = (size_t)m * ldc;
        float *c_cpu = malloc(c_size * sizeof(float)), *c_shadow = malloc(c_size * sizeof(float));
        for (size_t i = 0; i < c_size; i++) c_cpu[i] = urand(-1.0f, 1.0f);
        float *dc = shadow->alloc(c_size * sizeof(float));
        shadow->upload(dc, c_cpu, c_size * sizeof(float));
        /* A = h[0 .. m*lda), B = h[m*lda .. m*lda + nn*ldb), both inside n */
        cpu->gemm_half(fmt, false, true, m, nn, k, 0.75f, h_cpu, lda, h_cpu + (size_t)m * lda, ldb, 1.0f,
                       c_cpu, ldc);
        shadow->gemm_half(fmt, false, true, m, nn, k, 0.75f, dh, lda, dh + (size_t)m * lda, ldb, 1.0f, dc,
                          ldc);
        shadow->download(c_shadow, dc, c_size * sizeof(float));
        CHECK_MSG(memcmp(c_cpu, c_shadow, c_size * sizeof(float)) == 0, "%s: shadow gemm_half", fmt_name(fmt));
        shadow->release(dc);
        free(c_cpu), free(c_shadow);
    }
    shadow->release(dx), shadow->release(dwide), shadow->release(dh);
    free(x), free(wide_cpu), free(wide_shadow), free(h_cpu), free(h_shadow);
}

int main(void) {
    const kernels *K = kernels_cpu();
    CHECK(K->to_half && K->from_half && K->gemm_half);
    test_fixture(K);
    test_against_rounding_reference(K);
    test_all_patterns(K);
    test_gemm(K);
    test_shadow(K, kernels_shadow());
    return check_summary("test_half");
}
