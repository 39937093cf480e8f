/* The 16-bit kernels of the CUDA backend against the CPU reference (label gpu; exit 77 =
 * skipped where no GPU is usable); the fp32 ops are in test_kernels_cuda.c. to_half must give
 * the CPU's bits (any NaN for a NaN) on 200k random fp32 patterns over every exponent plus
 * values whose rounding the formats define (ties to even, overflow, fp16 subnormals);
 * from_half must widen all 65536 patterns exactly; both keep those bits on short and odd
 * lengths and on views off a 16-byte boundary, writing nothing outside. gemm_half agrees with
 * the CPU to 1e-4 relative (both take exact products of the 16-bit inputs and sum in fp32, in
 * different orders), leaves padding and the elements before an unaligned view untouched,
 * and survives eviction from its plan cache. Outputs are poisoned with NaN first, and after
 * every op the backend's sticky error state (kernels/cuda/cuda_status.h) must be clean. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/half_bits.h"
#include "tests/kernel_compare.h"

static const kernels *C; /* the CPU reference */
static const kernels *G; /* the CUDA backend */

/* ------------------------------------------------------------------ 16-bit casts */

/* fp32 values whose rounding is known from the formats' definitions alone (independent of
 * both backends): ties to even, overflow, the subnormal boundaries of fp16. */
typedef struct half_known { uint32_t in; uint16_t bf16, fp16; } half_known;
static const half_known known_values[] = {
    {0x3F800000u, 0x3F80, 0x3C00}, /* 1 */
    {0xBF800000u, 0xBF80, 0xBC00}, /* -1 */
    {0x00000000u, 0x0000, 0x0000}, {0x80000000u, 0x8000, 0x8000}, /* +-0 */
    {0x3F808000u, 0x3F80, 0x3C04}, /* 1 + 2^-8: bf16 tie, even is down */
    {0x3F818000u, 0x3F82, 0x3C0C}, /* 1 + 3*2^-8: bf16 tie, even is up */
    {0x3F801000u, 0x3F80, 0x3C00}, /* 1 + 2^-11: fp16 tie, even is down */
    {0x3F803000u, 0x3F80, 0x3C02}, /* 1 + 3*2^-11: fp16 tie, even is up */
    {0x3F801001u, 0x3F80, 0x3C01}, /* just above the fp16 tie */
    {0x477FE000u, 0x4780, 0x7BFF}, /* 65504, the largest fp16 */
    {0x477FEFFFu, 0x4780, 0x7BFF}, /* just below 65520 */
    {0x477FF000u, 0x4780, 0x7C00}, /* 65520: the fp16 tie above 65504 rounds to inf */
    {0xC7800000u, 0xC780, 0xFC00}, /* -65536 overflows fp16 to -inf */
    {0x7F7FFFFFu, 0x7F80, 0x7C00}, /* FLT_MAX: inf in both */
    {0x7F7F7FFFu, 0x7F7F, 0x7C00}, /* below bf16's tie to inf: stays finite */
    {0x7F800000u, 0x7F80, 0x7C00}, {0xFF800000u, 0xFF80, 0xFC00}, /* +-inf */
    {0x33800000u, 0x3380, 0x0001}, /* 2^-24, the smallest fp16 subnormal */
    {0x33000000u, 0x3300, 0x0000}, /* 2^-25: fp16 tie to 0 */
    {0x33000001u, 0x3300, 0x0001}, /* just above: rounds up to 2^-24 */
    {0x33C00000u, 0x33C0, 0x0002}, /* 3*2^-25: fp16 tie, even is 2*2^-24 */
    {0x387FC000u, 0x3880, 0x03FF}, /* 2^-14 - 2^-24, the largest fp16 subnormal */
    {0x387FE000u, 0x3880, 0x0400}, /* 2^-14 - 2^-25: its tie with 2^-14, even is the normal */
    {0x00000001u, 0x0000, 0x0000}, /* fp32's smallest subnormal */
    {0x00400000u, 0x0040, 0x0000}, /* fp32 subnormal 2^-127: a bf16 subnormal */
    {0x80408000u, 0x8040, 0x8000}, /* negative subnormal tie (bf16), even is down */
};

/* Random fp32 bit patterns over every exponent (zeros, subnormals, fp16 overflow, inf, NaN
 * with payloads), then the known values. */
static float *cast_inputs(size_t *count) {
    const size_t n_known = sizeof known_values / sizeof known_values[0], n_random = 200003;
    float *x = malloc((n_random + n_known) * sizeof(float));
    for (size_t i = 0; i < n_random; i++) {
        uint32_t u = (uint32_t)(next_u64() >> 32);
        /* Half the draws concentrate on fp16's exponent range and its edges. */
        if (i % 2) u = (u & 0x807FFFFFu) | ((uint32_t)(95 + next_u64() % 55) << 23);
        x[i] = float_of(u);
    }
    for (size_t i = 0; i < n_known; i++) x[n_random + i] = float_of(known_values[i].in);
    *count = n_random + n_known;
    return x;
}

static void half_cast_case(kernels_half_format fmt) {
    size_t n;
    float *x = cast_inputs(&n);
    uint16_t *ref = malloc(n * sizeof(uint16_t)), *got = malloc(n * sizeof(uint16_t));
    memset(ref, 0xFF, n * sizeof(uint16_t)); /* 0xFFFF is a NaN: poison in both formats */
    float *dx = dev_from(G, x, n * sizeof(float));
    uint16_t *dout = dev_from(G, ref, n * sizeof(uint16_t));
    C->to_half(ref, x, n, fmt);
    G->to_half(dout, dx, n, fmt);
    G->download(got, dout, n * sizeof(uint16_t));
    char what[64];
    snprintf(what, sizeof what, "to_half %s", fmt_name(fmt));
    check_status(what);
    size_t bad = 0, first_bad = n;
    for (size_t i = 0; i < n; i++) {
        bool same = isnan(x[i]) ? half_is_nan(got[i], fmt) && half_is_nan(ref[i], fmt)
                                : got[i] == ref[i];
        if (!same && bad++ == 0) first_bad = i;
    }
    CHECK_MSG(bad == 0, "%s: %zu of %zu differ, first %08x -> gpu %04x cpu %04x", what, bad, n,
              first_bad < n ? bits_of(x[first_bad]) : 0u, first_bad < n ? got[first_bad] : 0u,
              first_bad < n ? ref[first_bad] : 0u);
    const size_t n_known = sizeof known_values / sizeof known_values[0];
    for (size_t i = 0; i < n_known; i++) {
        uint16_t want = fmt == KERNELS_BF16 ? known_values[i].bf16 : known_values[i].fp16;
        CHECK_MSG(got[n - n_known + i] == want, "%s of %08x: gpu %04x, expected %04x", what,
                  known_values[i].in, got[n - n_known + i], want);
    }

    /* Widening: every 16-bit pattern, exact (NaN stays NaN). */
    const size_t all = 65536;
    uint16_t *h = malloc(all * sizeof(uint16_t));
    for (size_t i = 0; i < all; i++) h[i] = (uint16_t)i;
    float *wide = host_nan(all), *wide_got = malloc(all * sizeof(float));
    uint16_t *dh = dev_from(G, h, all * sizeof(uint16_t));
    float *dwide = dev_nan(G, all);
    C->from_half(wide, h, all, fmt);
    G->from_half(dwide, dh, all, fmt);
    G->download(wide_got, dwide, all * sizeof(float));
    snprintf(what, sizeof what, "from_half %s", fmt_name(fmt));
    check_status(what);
    bad = 0, first_bad = all;
    for (size_t i = 0; i < all; i++) {
        bool same = half_is_nan(h[i], fmt) ? isnan(wide_got[i]) && isnan(wide[i])
                                           : bits_of(wide_got[i]) == bits_of(wide[i]);
        if (!same && bad++ == 0) first_bad = i;
    }
    CHECK_MSG(bad == 0, "%s: %zu of 65536 patterns differ, first %04zx -> gpu %08x cpu %08x",
              what, bad, first_bad, first_bad < all ? bits_of(wide_got[first_bad]) : 0u,
              first_bad < all ? bits_of(wide[first_bad]) : 0u);
    /* Independent spot checks: 1.0, the largest fp16, a subnormal. */
    const float one = wide_got[fmt == KERNELS_BF16 ? 0x3F80 : 0x3C00];
    CHECK_MSG(one == 1.0f, "%s: 1.0 widened to %g", what, one);
    if (fmt == KERNELS_FP16) {
        CHECK_MSG(wide_got[0x7BFF] == 65504.0f, "%s: 0x7bff -> %g", what, wide_got[0x7BFF]);
        CHECK_MSG(wide_got[0x8001] == -0x1p-24f, "%s: 0x8001 -> %g", what, wide_got[0x8001]);
    } else {
        CHECK_MSG(wide_got[0x0001] == 0x1p-133f, "%s: 0x0001 -> %g", what, wide_got[0x0001]);
    }
    G->release(dx);
    G->release(dout);
    G->release(dh);
    G->release(dwide);
    free(x);
    free(ref);
    free(got);
    free(h);
    free(wide);
    free(wide_got);
}

static void test_half_casts(void) {
    seed(12);
    half_cast_case(KERNELS_BF16);
    half_cast_case(KERNELS_FP16);
}

/* Short and odd lengths, and views that start off a 16-byte boundary (together: a scalar head
 * then aligned groups of four; by different amounts: all scalar), in both directions: the
 * CPU's bits inside the view, and nothing written outside it (poison 0xFF bytes around). */
static void half_cast_view_case(kernels_half_format fmt, size_t n, size_t x_off, size_t out_off) {
    const size_t pad = 4, x_total = n + 2 * pad, out_total = n + 2 * pad;
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) /* finite values over fp16's range and past it */
        x[i] = float_of(((uint32_t)(next_u64() >> 32) & 0x807FFFFFu) |
                        ((uint32_t)(95 + next_u64() % 55) << 23));
    uint16_t *h = malloc(n * sizeof(uint16_t));
    float *wide = malloc(n * sizeof(float));
    C->to_half(h, x, n, fmt);
    C->from_half(wide, h, n, fmt);

    unsigned char *poison = malloc(x_total * sizeof(float));
    memset(poison, 0xFF, x_total * sizeof(float));
    float *dx = dev_from(G, poison, x_total * sizeof(float));
    uint16_t *dh = dev_from(G, poison, out_total * sizeof(uint16_t));
    G->upload(dx + x_off, x, n * sizeof(float));
    G->to_half(dh + out_off, dx + x_off, n, fmt);
    uint16_t *got_h = malloc(out_total * sizeof(uint16_t));
    char what[96];
    snprintf(what, sizeof what, "to_half %s n %zu offsets %zu/%zu", fmt_name(fmt), n, x_off,
             out_off);
    G->download(got_h, dh, out_total * sizeof(uint16_t));
    check_status(what);
    size_t bad = 0;
    for (size_t i = 0; i < out_total; i++) {
        bool inside = i >= out_off && i < out_off + n;
        bad += got_h[i] != (inside ? h[i - out_off] : 0xFFFFu);
    }
    CHECK_MSG(bad == 0, "%s: %zu of %zu elements wrong (view or margin)", what, bad, out_total);

    /* Widening, the roles swapped: 16-bit input at x_off, fp32 output at out_off. */
    uint16_t *dh_in = dev_from(G, poison, x_total * sizeof(uint16_t));
    float *dwide = dev_from(G, poison, out_total * sizeof(float));
    G->upload(dh_in + x_off, h, n * sizeof(uint16_t));
    G->from_half(dwide + out_off, dh_in + x_off, n, fmt);
    float *got_w = malloc(out_total * sizeof(float));
    snprintf(what, sizeof what, "from_half %s n %zu offsets %zu/%zu", fmt_name(fmt), n, x_off,
             out_off);
    G->download(got_w, dwide, out_total * sizeof(float));
    check_status(what);
    bad = 0;
    for (size_t i = 0; i < out_total; i++) {
        bool inside = i >= out_off && i < out_off + n;
        bad += bits_of(got_w[i]) != (inside ? bits_of(wide[i - out_off]) : 0xFFFFFFFFu);
    }
    CHECK_MSG(bad == 0, "%s: %zu of %zu elements wrong (view or margin)", what, bad, out_total);
    G->release(dx);
    G->release(dh);
    G->release(dh_in);
    G->release(dwide);
    free(x);
    free(h);
    free(wide);
    free(poison);
    free(got_h);
    free(got_w);
}

static void test_half_cast_views(void) {
    seed(14);
    const size_t sizes[] = {1, 2, 3, 5, 7, 8, 1001, 4099};
    const size_t offsets[][2] = {{0, 0}, {1, 1}, {3, 3}, {1, 0}, {2, 3}, {0, 1}};
    for (int f = 0; f < 2; f++)
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
            for (size_t o = 0; o < sizeof offsets / sizeof offsets[0]; o++)
                half_cast_view_case(f ? KERNELS_FP16 : KERNELS_BF16, sizes[s], offsets[o][0],
                                    offsets[o][1]);
}

/* ------------------------------------------------------------------ gemm_half */
/* A 16-bit matrix of rows x ld elements with values uniform in [-1, 1], rounded to fmt. */
static uint16_t *half_rand(size_t n, kernels_half_format fmt) {
    float *x = host_rand(n, -1, 1);
    uint16_t *h = malloc((n ? n : 1) * sizeof(uint16_t));
    C->to_half(h, x, n, fmt);
    free(x);
    return h;
}

/* offset: elements by which A, B and C start past their allocation (a view that is
 * aligned to its element size only). repeat: run the GPU op again (its cached plan). */
typedef struct gemm_half_case_t {
    kernels_half_format fmt;
    bool ta, tb;
    int m, n, k, pad, offset;
    float alpha, beta;
} gemm_half_case_t;

static void gemm_half_case(const gemm_half_case_t *tc, int repeat) {
    const int m = tc->m, n = tc->n, k = tc->k, off = tc->offset;
    const int lda = (tc->ta ? m : k) + tc->pad, ldb = (tc->tb ? k : n) + tc->pad, ldc = n + tc->pad;
    const size_t a_n = (size_t)(tc->ta ? k : m) * lda + off;
    const size_t b_n = (size_t)(tc->tb ? n : k) * ldb + off;
    const size_t c_n = (size_t)m * ldc + off;
    uint16_t *a = half_rand(a_n, tc->fmt), *b = half_rand(b_n, tc->fmt);
    /* beta == 0: C starts as NaN on both backends and must not be read. */
    float *c0 = tc->beta == 0.0f ? host_nan(c_n) : host_rand(c_n, -1, 1);
    float *c = host_copy(c0, c_n), *got = malloc(c_n * sizeof(float));
    uint16_t *da = dev_from(G, a, a_n * sizeof(uint16_t));
    uint16_t *db = dev_from(G, b, b_n * sizeof(uint16_t));
    float *dc = dev_from(G, c0, c_n * sizeof(float));
    C->gemm_half(tc->fmt, tc->ta, tc->tb, m, n, k, tc->alpha, a + off, lda, b + off, ldb, tc->beta,
                 c + off, ldc);
    char what[160];
    snprintf(what, sizeof what, "gemm_half %s ta %d tb %d m %d n %d k %d pad %d offset %d beta %g",
             fmt_name(tc->fmt), tc->ta, tc->tb, m, n, k, tc->pad, off, tc->beta);
    for (int run = 0; run <= repeat; run++) {
        if (run) G->upload(dc, c0, c_n * sizeof(float));
        G->gemm_half(tc->fmt, tc->ta, tc->tb, m, n, k, tc->alpha, da + off, lda, db + off, ldb,
                     tc->beta, dc + off, ldc);
        G->download(got, dc, c_n * sizeof(float));
        check_status(what);
        /* The m x n block within the tolerance; everything else (padding, the elements
         * before the view) untouched. */
        double diff = 0, norm = 0;
        int finite = 1, outside_changed = 0;
        for (size_t at = 0; at < c_n; at++) {
            size_t rel_at = at - (size_t)off;
            bool inside = at >= (size_t)off && (int)(rel_at / ldc) < m && (int)(rel_at % ldc) < n;
            if (!inside) {
                outside_changed |= bits_of(got[at]) != bits_of(c0[at]);
                continue;
            }
            finite &= isfinite(got[at]) != 0;
            diff += ((double)got[at] - c[at]) * ((double)got[at] - c[at]);
            norm += (double)c[at] * c[at];
        }
        double rel = norm > 0 ? sqrt(diff / norm) : sqrt(diff);
        CHECK_MSG(finite && rel < 1e-4 && !outside_changed, "%s run %d: rel %.3g%s%s", what, run,
                  rel, finite ? "" : " (non-finite)", outside_changed ? " (wrote outside C)" : "");
    }
    G->release(da);
    G->release(db);
    G->release(dc);
    free(a);
    free(b);
    free(c0);
    free(c);
    free(got);
}

static void test_gemm_half(void) {
    seed(13);
    const int shapes[][3] = {{1, 1, 1},      {17, 33, 9},  {64, 48, 128},
                             {130, 7, 65},   {5, 300, 257}, {256, 192, 512}};
    const kernels_half_format fmts[] = {KERNELS_BF16, KERNELS_FP16};
    for (int f = 0; f < 2; f++)
        for (int s = 0; s < 6; s++)
            for (int t = 0; t < 4; t++) {
                const int *sh = shapes[s];
                gemm_half_case_t tc = {fmts[f], t & 1, t >> 1, sh[0], sh[1], sh[2],
                                       0, 0, 1.0f, 0.0f};
                gemm_half_case(&tc, s == 2); /* one shape a second time, from the plan cache */
                tc.pad = 3, tc.alpha = 0.7f, tc.beta = 0.5f;
                gemm_half_case(&tc, 0);
                tc.offset = 1, tc.alpha = -1.3f, tc.beta = 0.0f; /* 2- and 4-byte aligned views */
                gemm_half_case(&tc, 0);
            }
    for (int f = 0; f < 2; f++) {
        gemm_half_case_t empty0 = {fmts[f], false, true, 9, 11, 0, 2, 0, 1.0f, 0.0f};
        gemm_half_case(&empty0, 0); /* empty product, beta 0 */
        gemm_half_case_t empty1 = {fmts[f], true, false, 9, 11, 0, 1, 0, 1.0f, 0.25f};
        gemm_half_case(&empty1, 0); /* empty product, C scaled */
    }
    /* gemm_half_add: the residual in the epilogue gives the GPU's own gemm_half then add bit
     * for bit (1 * r is exact, one rounding of acc + r), the padding untouched. */
    for (int f = 0; f < 2; f++)
        for (int s = 1; s < 6; s++) {
            const int m = shapes[s][0], n = shapes[s][1], k = shapes[s][2], ldc = n + (s % 2) * 3;
            const size_t c_n = (size_t)m * ldc;
            uint16_t *a = half_rand((size_t)m * k, fmts[f]), *b = half_rand((size_t)n * k, fmts[f]);
            float *r = host_rand(c_n, -4, 4), *c0 = host_rand(c_n, -1, 1);
            uint16_t *da = dev_from(G, a, (size_t)m * k * sizeof(uint16_t));
            uint16_t *db = dev_from(G, b, (size_t)n * k * sizeof(uint16_t));
            float *dr = dev_from(G, r, c_n * sizeof(float)), *dsum = dev_from(G, c0, c_n * sizeof(float));
            float *dfused = dev_from(G, c0, c_n * sizeof(float));
            G->gemm_half(fmts[f], false, true, m, n, k, 1.0f, da, k, db, k, 0.0f, dsum, ldc);
            for (int i = 0; i < m; i++) G->add(dsum + (size_t)i * ldc, dsum + (size_t)i * ldc, dr + (size_t)i * ldc, n);
            G->gemm_half_add(fmts[f], false, true, m, n, k, da, k, db, k, dr, dfused, ldc);
            char what[128];
            snprintf(what, sizeof what, "gemm_half_add %s m %d n %d k %d ldc %d", fmt_name(fmts[f]), m, n, k, ldc);
            float *want = download_checked(G, what, dsum, c_n * sizeof(float));
            compare_exact(G, what, dfused, want, c_n * sizeof(float));
            free(want), free(a), free(b), free(r), free(c0);
            G->release(da), G->release(db), G->release(dr), G->release(dsum), G->release(dfused);
        }
    /* More distinct shapes than the plan cache holds: evicted plans must not be reused. */
    for (int i = 1; i <= 80; i++) {
        gemm_half_case_t tc = {KERNELS_BF16, false, true, i, 8 + i % 5, 16 + i % 3,
                               0, 0, 1.0f, 0.0f};
        gemm_half_case(&tc, 0);
    }
    gemm_half_case_t first = {KERNELS_BF16, false, true, 1, 9, 17, 0, 0, 1.0f, 0.0f};
    gemm_half_case(&first, 1); /* the first of them again, after its eviction */
}

/* The m x n block of two 16-bit outputs (rows ldc apart from off), widened: their relative
 * distance (a sum near zero can round several ulps apart when the fp32 sums' orders differ,
 * so no per-element ulp bound) under tol, every element finite. */
static void compare_block(const char *what, const uint16_t *got, const uint16_t *want, int m, int n, int ldc,
                          int off, kernels_half_format fmt, double tol) {
    float *g = malloc((size_t)n * sizeof(float)), *w = malloc((size_t)n * sizeof(float));
    double diff = 0, norm = 0;
    size_t non_finite = 0;
    for (int i = 0; i < m; i++) {
        C->from_half(g, got + off + (size_t)i * ldc, (size_t)n, fmt);
        C->from_half(w, want + off + (size_t)i * ldc, (size_t)n, fmt);
        for (int j = 0; j < n; j++) {
            non_finite += !isfinite(g[j]);
            diff += ((double)g[j] - w[j]) * ((double)g[j] - w[j]);
            norm += (double)w[j] * w[j];
        }
    }
    const double rel = norm > 0 ? sqrt(diff / norm) : sqrt(diff);
    CHECK_MSG(non_finite == 0 && rel < tol, "%s: rel %.3g (tol %g), %zu non-finite", what, rel, tol, non_finite);
    free(g), free(w);
}

/* gemm_half_to_half: against the CPU's (gemm_half then to_half) and against the device's own
 * gemm_half then to_half_2d (cuBLASLt may choose another algorithm for a 16-bit output), within
 * a 16-bit rounding (bf16 1e-2, fp16 1e-3); every transpose pair, a gap beside each output
 * row, 2-byte-aligned views, k = 0; whatever lies outside the m x n block (poison) untouched. */
static void gemm_to_half_case(kernels_half_format fmt, bool ta, bool tb, int m, int n, int k, int pad, int off) {
    const int lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad, ldc = n + pad + 5;
    const size_t a_n = (size_t)(ta ? k : m) * lda + off, b_n = (size_t)(tb ? n : k) * ldb + off;
    const size_t c_n = (size_t)m * ldc + off;
    uint16_t *a = half_rand(a_n, fmt), *b = half_rand(b_n, fmt);
    uint16_t *cpu = malloc(c_n * sizeof(uint16_t));
    for (size_t i = 0; i < c_n; i++) cpu[i] = 0xFFFF; /* NaN in both formats: the poison */
    uint16_t *da = dev_from(G, a, a_n * sizeof(uint16_t)), *db = dev_from(G, b, b_n * sizeof(uint16_t));
    uint16_t *dc = dev_from(G, cpu, c_n * sizeof(uint16_t)), *dsep = dev_from(G, cpu, c_n * sizeof(uint16_t));
    float *dc32 = G->alloc((size_t)m * n * sizeof(float));
    C->gemm_half_to_half(fmt, ta, tb, m, n, k, a + off, lda, b + off, ldb, cpu + off, ldc);
    G->gemm_half_to_half(fmt, ta, tb, m, n, k, da + off, lda, db + off, ldb, dc + off, ldc);
    G->gemm_half(fmt, ta, tb, m, n, k, 1.0f, da + off, lda, db + off, ldb, 0.0f, dc32, n);
    G->to_half_2d(fmt, dsep + off, ldc, dc32, n, m, n, 1.0f);
    char what[160];
    const int len = snprintf(what, sizeof what, "gemm_half_to_half %s ta %d tb %d m %d n %d k %d pad %d offset %d: ",
                             fmt_name(fmt), ta, tb, m, n, k, pad, off);
    const double tol = fmt == KERNELS_BF16 ? 1e-2 : 1e-3;
    uint16_t *got = download_checked(G, what, dc, c_n * sizeof(uint16_t));
    uint16_t *sep = download_checked(G, what, dsep, c_n * sizeof(uint16_t));
    snprintf(what + len, sizeof what - len, "vs cpu");
    compare_block(what, got, cpu, m, n, ldc, off, fmt, tol);
    snprintf(what + len, sizeof what - len, "vs gemm_half + to_half_2d");
    compare_block(what, got, sep, m, n, ldc, off, fmt, tol);
    size_t outside_changed = 0;
    for (size_t at = 0; at < c_n; at++) {
        const size_t rel_at = at - (size_t)off;
        const bool inside = at >= (size_t)off && (int)(rel_at / ldc) < m && (int)(rel_at % ldc) < n;
        if (!inside) outside_changed += got[at] != 0xFFFF;
    }
    snprintf(what + len, sizeof what - len, "outside the block");
    CHECK_MSG(outside_changed == 0, "%s: %zu elements written", what, outside_changed);
    check_status(what);
    G->release(da), G->release(db), G->release(dc), G->release(dsep), G->release(dc32);
    free(a), free(b), free(cpu), free(sep), free(got);
}

static void test_gemm_half_to_half(void) {
    seed(17);
    const int shapes[][3] = {{1, 1, 1}, {17, 33, 9}, {64, 48, 128}, {130, 7, 65}, {256, 192, 512}};
    const kernels_half_format fmts[] = {KERNELS_BF16, KERNELS_FP16};
    for (int f = 0; f < 2; f++)
        for (int s = 0; s < 5; s++)
            for (int t = 0; t < 4; t++) {
                gemm_to_half_case(fmts[f], t & 1, t >> 1, shapes[s][0], shapes[s][1], shapes[s][2], 0, 0);
                gemm_to_half_case(fmts[f], t & 1, t >> 1, shapes[s][0], shapes[s][1], shapes[s][2], 3, 1);
            }
    for (int f = 0; f < 2; f++) gemm_to_half_case(fmts[f], false, true, 9, 11, 0, 2, 0); /* k = 0: zeros */
}

/* An unknown format is recorded (naming the op and the format) and nothing runs. */
/* The lookup in a table kept only in 16 bits: the CPU's bits (exact widening of every
 * 16-bit pattern the ids pick, NaN patterns included), table rows ld apart, output poisoned. */
static void test_embedding_fwd_half(void) {
    seed(15);
    const int vocab = 4099, hidden = 19, ld = 21, n = 3000;
    uint16_t *table = malloc((size_t)vocab * ld * sizeof(uint16_t));
    for (size_t i = 0; i < (size_t)vocab * ld; i++) table[i] = (uint16_t)(next_u64() >> 48);
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    for (int t = 0; t < n; t++) ids[t] = (int32_t)(next_u64() % vocab);
    uint16_t *dtable = dev_from(G, table, (size_t)vocab * ld * sizeof(uint16_t));
    int32_t *dids = dev_from(G, ids, (size_t)n * sizeof *ids);
    float *want = host_nan((size_t)n * hidden), *got = malloc((size_t)n * hidden * sizeof(float));
    float *dout = dev_nan(G, (size_t)n * hidden);
    const kernels_half_format fmts[2] = {KERNELS_BF16, KERNELS_FP16};
    for (int f = 0; f < 2; f++) {
        C->embedding_fwd_half(fmts[f], want, table, ld, ids, n, hidden);
        G->embedding_fwd_half(fmts[f], dout, dtable, ld, dids, n, hidden);
        G->download(got, dout, (size_t)n * hidden * sizeof(float));
        char what[64];
        snprintf(what, sizeof what, "embedding_fwd_half %s", fmt_name(fmts[f]));
        check_status(what);
        size_t bad = 0;
        for (size_t i = 0; i < (size_t)n * hidden; i++)
            bad += isnan(want[i]) ? !isnan(got[i]) : bits_of(got[i]) != bits_of(want[i]);
        CHECK_MSG(bad == 0, "%s: %zu of %d elements differ from the CPU's", what, bad, n * hidden);
    }
    G->release(dtable), G->release(dids), G->release(dout);
    free(table), free(ids), free(want), free(got);
}

static void test_half_errors(void) {
    float *x = dev_nan(G, 4);
    uint16_t *h = G->alloc(4 * sizeof(uint16_t));
    G->to_half(h, x, 4, (kernels_half_format)3);
    ct_error err = {{0}};
    CHECK(kernels_cuda_status(&err) == -1);
    CHECK_CONTAINS(err.msg, "to_half");
    CHECK_CONTAINS(err.msg, "format 3");
    G->gemm_half((kernels_half_format)0, false, false, 2, 2, 1, 1.0f, h, 1, h, 2, 0.0f, x, 2);
    ct_error err2 = {{0}};
    CHECK(kernels_cuda_status(&err2) == -1);
    CHECK_CONTAINS(err2.msg, "gemm_half");
    G->release(x);
    G->release(h);
}

int main(void) {
    if (!open_backends(&C, &G)) return 77;
    test_half_casts();
    test_half_cast_views();
    test_gemm_half();
    test_gemm_half_to_half();
    test_embedding_fwd_half();
    test_half_errors();
    check_status("end of tests");
    return check_summary("test_kernels_cuda_half");
}
