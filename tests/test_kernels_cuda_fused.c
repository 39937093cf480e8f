/* The CUDA backend's producers of 16-bit GEMM operands (kernels.h: rmsnorm_fwd_half,
 * rmsnorm_bwd_half, rope_fwd_half, rope_bwd_half, swiglu_fwd_half, swiglu_bwd_half,
 * cross_entropy_half, the strided casts to_half_2d, to_half_2d_many and QLoRA's read-back
 * nf4_to_half_2d), label gpu, exit 77 = skipped where no GPU is usable. Every
 * case runs in both formats with every output poisoned first (all bytes 0xFF: a NaN in fp32,
 * bf16 and fp16), and checks three things:
 *  (a) against the CPU reference: fp32 outputs to the relative tolerance of
 *      test_kernels_cuda.c, 16-bit outputs within 1 ulp and at most 1% not identical
 *      (kernel_compare.h: compare_half; rope: identical or the rounding of a value within
 *      the fp32 tolerance of the CPU's rotation, see compare_rope_half), the roundings of
 *      inputs exactly;
 *  (b) on the device, bit for bit: the fused op's 16-bit output is to_half of the fp32 op's
 *      output (swiglu: on the widened 16-bit inputs; rope: the in-place op on a copy), the
 *      fp32 outputs and rstd / loss are the fp32 op's;
 *  (c) the optional fp32 output absent (NULL) changes nothing else; cross_entropy_half leaves
 *      the logits as they were and, with grad_scale 0, the 16-bit buffer too; rope_*_half
 *      leave x as it was.
 * Buffers are views into padded allocations: nothing may be written outside a view, and
 * views that start off a 16-byte boundary (together, or by different amounts) take the
 * kernels' scalar paths. Strided 16-bit outputs (rmsnorm_fwd_half's, rope_*_half's and
 * swiglu_*_half's ld_half, to_half_2d's ld_out) keep the poison between their rows;
 * to_half_2d is the CPU's bits exactly. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/nf4.h"
#include "tests/kernel_compare.h"

static const kernels *C; /* the CPU reference */
static const kernels *G; /* the CUDA backend */

/* ------------------------------------------------------------------ padded device views */
#define PAD 4 /* elements of margin on each side of a view */

typedef struct dbuf {
    unsigned char *base;
    size_t n, size, off; /* the view: n elements of `size` bytes from element off */
} dbuf;

static void *at(dbuf b) { return b.base + b.off * b.size; }

static dbuf db_poison(size_t n, size_t size, size_t off) {
    dbuf b = {NULL, n, size, off};
    const size_t bytes = (n + 2 * PAD) * size;
    unsigned char *h = malloc(bytes);
    memset(h, 0xFF, bytes);
    b.base = dev_from(G, h, bytes);
    free(h);
    return b;
}

static dbuf db_input(const void *host, size_t n, size_t size, size_t off) {
    dbuf b = db_poison(n, size, off);
    if (n) G->upload(at(b), host, n * size);
    return b;
}

static void db_free(dbuf b) { G->release(b.base); }

/* The view's contents (the caller frees). */
static void *db_get(const char *what, dbuf b) {
    return download_checked(G, what, at(b), b.n * b.size);
}

/* Nothing written outside the view. */
static void db_check_margins(const char *what, dbuf b) {
    const size_t bytes = (b.n + 2 * PAD) * b.size;
    unsigned char *h = download_checked(G, what, b.base, bytes);
    size_t changed = 0;
    for (size_t i = 0; i < bytes; i++) {
        const bool inside = i >= b.off * b.size && i < (b.off + b.n) * b.size;
        changed += !inside && h[i] != 0xFF;
    }
    CHECK_MSG(changed == 0, "%s: %zu bytes written outside the view", what, changed);
    free(h);
}

static uint16_t *host_poison16(size_t n) {
    uint16_t *h = malloc((n ? n : 1) * sizeof(uint16_t));
    memset(h, 0xFF, (n ? n : 1) * sizeof(uint16_t));
    return h;
}

/* The device's to_half of a device fp32 view (host copy; the caller frees). */
static uint16_t *device_rounding(const char *what, const float *dev, size_t n,
                                 kernels_half_format fmt) {
    dbuf t = db_poison(n, 2, 0);
    G->to_half(at(t), dev, n, fmt);
    uint16_t *h = db_get(what, t);
    db_free(t);
    return h;
}

/* rows of cols contiguous 16-bit values placed ld apart in a poisoned [rows, ld] buffer: what
 * a strided 16-bit output holds (the caller frees). */
static uint16_t *spread_rows(const uint16_t *dense, int rows, int cols, int ld) {
    uint16_t *h = host_poison16((size_t)rows * ld);
    for (int r = 0; r < rows; r++)
        memcpy(h + (size_t)r * ld, dense + (size_t)r * cols, (size_t)cols * sizeof(uint16_t));
    return h;
}

static const kernels_half_format formats[2] = {KERNELS_BF16, KERNELS_FP16};

/* ------------------------------------------------------------------ rmsnorm_fwd_half */
static void rmsnorm_case(int rows, int dim, kernels_half_format fmt) {
    const size_t n = (size_t)rows * dim;
    const float eps = 1e-5f;
    char what[128];
    const int len = snprintf(what, sizeof what, "rmsnorm_fwd_half %s rows %d dim %d: ",
                             fmt_name(fmt), rows, dim);
    float *x = host_rand(n, -2, 2), *w = host_rand(dim, 0.5f, 1.5f);
    float *out = host_nan(n), *rstd = host_nan(rows);
    uint16_t *half = host_poison16(n);
    C->rmsnorm_fwd_half(fmt, half, dim, out, rstd, x, w, rows, dim, eps);

    dbuf dx = db_input(x, n, 4, 0), dw = db_input(w, dim, 4, 0);
    dbuf dout = db_poison(n, 4, 0), dhalf = db_poison(n, 2, 0), drstd = db_poison(rows, 4, 0);
    G->rmsnorm_fwd_half(fmt, at(dhalf), dim, at(dout), at(drstd), at(dx), at(dw), rows, dim, eps);
    snprintf(what + len, sizeof what - len, "out vs cpu");
    compare(G, what, at(dout), out, n, 1e-6);
    snprintf(what + len, sizeof what - len, "rstd vs cpu");
    compare(G, what, at(drstd), rstd, rows, 1e-6);
    snprintf(what + len, sizeof what - len, "out_half vs cpu");
    compare_half(G, what, at(dhalf), half, n, fmt);

    /* (b) rmsnorm_fwd then to_half on the device. */
    dbuf ref_out = db_poison(n, 4, 0), ref_rstd = db_poison(rows, 4, 0);
    G->rmsnorm_fwd(at(ref_out), at(ref_rstd), at(dx), at(dw), rows, dim, eps);
    snprintf(what + len, sizeof what - len, "fp32 reference");
    float *want_out = db_get(what, ref_out), *want_rstd = db_get(what, ref_rstd);
    uint16_t *want_half = device_rounding(what, at(ref_out), n, fmt);
    snprintf(what + len, sizeof what - len, "out == rmsnorm_fwd");
    compare_exact(G, what, at(dout), want_out, n * 4);
    snprintf(what + len, sizeof what - len, "rstd == rmsnorm_fwd");
    compare_exact(G, what, at(drstd), want_rstd, rows * 4);
    snprintf(what + len, sizeof what - len, "out_half == to_half(rmsnorm_fwd)");
    compare_exact(G, what, at(dhalf), want_half, n * 2);

    /* (c) without the fp32 output. */
    dbuf dhalf2 = db_poison(n, 2, 0), drstd2 = db_poison(rows, 4, 0);
    G->rmsnorm_fwd_half(fmt, at(dhalf2), dim, NULL, at(drstd2), at(dx), at(dw), rows, dim, eps);
    snprintf(what + len, sizeof what - len, "out NULL: out_half");
    compare_exact(G, what, at(dhalf2), want_half, n * 2);
    snprintf(what + len, sizeof what - len, "out NULL: rstd");
    compare_exact(G, what, at(drstd2), want_rstd, rows * 4);
    snprintf(what + len, sizeof what - len, "margins");
    db_check_margins(what, dout), db_check_margins(what, dhalf), db_check_margins(what, drstd);

    dbuf dev[] = {dx, dw, dout, dhalf, drstd, ref_out, ref_rstd, dhalf2, drstd2};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) db_free(dev[i]);
    void *host[] = {x, w, out, rstd, half, want_out, want_rstd, want_half};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
}

/* 16-bit rows ld_half apart, the view starting off at element off: against the CPU (same
 * tolerance as above), and bit for bit the device's contiguous call row by row, with the
 * poison kept between rows. */
static void rmsnorm_ld_case(int rows, int dim, int ld, size_t off, kernels_half_format fmt) {
    const size_t n = (size_t)rows * dim, n_ld = (size_t)rows * ld;
    const float eps = 1e-5f;
    char what[128];
    const int len = snprintf(what, sizeof what,
                             "rmsnorm_fwd_half %s rows %d dim %d ld %d off %zu: ", fmt_name(fmt),
                             rows, dim, ld, off);
    float *x = host_rand(n, -2, 2), *w = host_rand(dim, 0.5f, 1.5f);
    float *out = host_nan(n), *rstd = host_nan(rows);
    uint16_t *half = host_poison16(n_ld);
    C->rmsnorm_fwd_half(fmt, half, ld, out, rstd, x, w, rows, dim, eps);

    dbuf dx = db_input(x, n, 4, 0), dw = db_input(w, dim, 4, 0);
    dbuf dout = db_poison(n, 4, 0), dhalf = db_poison(n_ld, 2, off), drstd = db_poison(rows, 4, 0);
    G->rmsnorm_fwd_half(fmt, at(dhalf), ld, at(dout), at(drstd), at(dx), at(dw), rows, dim, eps);
    snprintf(what + len, sizeof what - len, "out vs cpu");
    compare(G, what, at(dout), out, n, 1e-6);
    snprintf(what + len, sizeof what - len, "rstd vs cpu");
    compare(G, what, at(drstd), rstd, rows, 1e-6);
    snprintf(what + len, sizeof what - len, "out_half vs cpu"); /* gaps: poison on both sides */
    compare_half(G, what, at(dhalf), half, n_ld, fmt);

    dbuf dense = db_poison(n, 2, 0), drstd2 = db_poison(rows, 4, 0);
    G->rmsnorm_fwd_half(fmt, at(dense), dim, NULL, at(drstd2), at(dx), at(dw), rows, dim, eps);
    snprintf(what + len, sizeof what - len, "contiguous call");
    uint16_t *rows_half = db_get(what, dense), *want = spread_rows(rows_half, rows, dim, ld);
    snprintf(what + len, sizeof what - len, "out_half == contiguous call's rows, gaps untouched");
    compare_exact(G, what, at(dhalf), want, n_ld * 2);
    snprintf(what + len, sizeof what - len, "margins");
    db_check_margins(what, dhalf), db_check_margins(what, dout);

    dbuf dev[] = {dx, dw, dout, dhalf, drstd, dense, drstd2};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) db_free(dev[i]);
    void *host[] = {x, w, out, rstd, half, rows_half, want};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
}

static void test_rmsnorm_fwd_half(void) {
    seed(21);
    const int shapes[][2] = {{1, 1}, {5, 7}, {3, 2049}, {16, 2048}, {70, 1000}, {2, 4097}};
    for (int f = 0; f < 2; f++) {
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            rmsnorm_case(shapes[s][0], shapes[s][1], formats[f]);
        /* A LoRA rank's columns beside each row (aligned rows), an odd gap, an odd start. */
        rmsnorm_ld_case(16, 2048, 2048 + 16, 0, formats[f]);
        rmsnorm_ld_case(5, 1000, 1003, 0, formats[f]);
        rmsnorm_ld_case(3, 2049, 2060, 1, formats[f]);
    }
}

/* ------------------------------------------------------------------ rmsnorm_bwd_half */
/* dx (written, or added to: add) and dweight (accumulated; NULL: frozen) against the CPU, and
 * bit for bit the device's rmsnorm_bwd; dx_half is to_half of that dx, rows ld apart from
 * element off of a poisoned view, the gaps untouched. */
static void rmsnorm_bwd_case(int rows, int dim, int ld, size_t off, bool add, bool frozen, kernels_half_format fmt) {
    const size_t n = (size_t)rows * dim, n_ld = (size_t)rows * ld;
    char what[160];
    const int len = snprintf(what, sizeof what, "rmsnorm_bwd_half %s rows %d dim %d ld %d off %zu%s%s: ",
                             fmt_name(fmt), rows, dim, ld, off, add ? " adds" : "", frozen ? " frozen" : "");
    float *x = host_rand(n, -2, 2), *w = host_rand(dim, 0.5f, 1.5f), *dy = host_rand(n, -1, 1);
    float *dx0 = host_rand(n, -1, 1), *dw0 = host_rand(dim, -1, 1), *y = host_nan(n), *rstd = host_nan(rows);
    C->rmsnorm_fwd(y, rstd, x, w, rows, dim, 1e-5f);
    float *dx = malloc(n * sizeof(float)), *dw = malloc(dim * sizeof(float));
    memcpy(dx, dx0, n * sizeof(float)), memcpy(dw, dw0, dim * sizeof(float));
    uint16_t *half = host_poison16(n_ld);
    C->rmsnorm_bwd_half(fmt, half, ld, dx, frozen ? NULL : dw, dy, x, w, rstd, rows, dim, add);

    dbuf dx_ = db_input(x, n, 4, 0), dw_ = db_input(w, dim, 4, 0), ddy = db_input(dy, n, 4, 0);
    dbuf drstd = db_input(rstd, rows, 4, 0), ddx = db_input(dx0, n, 4, 0), ddw = db_input(dw0, dim, 4, 0);
    dbuf dhalf = db_poison(n_ld, 2, off);
    G->rmsnorm_bwd_half(fmt, at(dhalf), ld, at(ddx), frozen ? NULL : at(ddw), at(ddy), at(dx_), at(dw_), at(drstd),
                        rows, dim, add);
    snprintf(what + len, sizeof what - len, "dx vs cpu");
    compare(G, what, at(ddx), dx, n, 1e-5);
    snprintf(what + len, sizeof what - len, "dweight vs cpu");
    compare(G, what, at(ddw), dw, dim, 1e-5);
    snprintf(what + len, sizeof what - len, "dx_half vs cpu"); /* gaps: poison on both sides */
    compare_half(G, what, at(dhalf), half, n_ld, fmt);

    dbuf rdx = db_input(dx0, n, 4, 0), rdw = db_input(dw0, dim, 4, 0);
    G->rmsnorm_bwd(at(rdx), frozen ? NULL : at(rdw), at(ddy), at(dx_), at(dw_), at(drstd), rows, dim, add);
    snprintf(what + len, sizeof what - len, "rmsnorm_bwd reference");
    float *want_dx = db_get(what, rdx), *want_dw = db_get(what, rdw);
    uint16_t *dense = device_rounding(what, at(rdx), n, fmt), *want_half = spread_rows(dense, rows, dim, ld);
    snprintf(what + len, sizeof what - len, "dx == rmsnorm_bwd");
    compare_exact(G, what, at(ddx), want_dx, n * 4);
    snprintf(what + len, sizeof what - len, "dweight == rmsnorm_bwd");
    compare_exact(G, what, at(ddw), want_dw, dim * 4);
    snprintf(what + len, sizeof what - len, "dx_half == to_half(rmsnorm_bwd), gaps untouched");
    compare_exact(G, what, at(dhalf), want_half, n_ld * 2);
    snprintf(what + len, sizeof what - len, "margins");
    db_check_margins(what, dhalf), db_check_margins(what, ddx), db_check_margins(what, ddw);

    dbuf dev[] = {dx_, dw_, ddy, drstd, ddx, ddw, dhalf, rdx, rdw};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) db_free(dev[i]);
    void *host[] = {x, w, dy, dx0, dw0, y, rstd, dx, dw, half, want_dx, want_dw, dense, want_half};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
}

static void test_rmsnorm_bwd_half(void) {
    seed(23);
    for (int f = 0; f < 2; f++) {
        rmsnorm_bwd_case(1, 1, 1, 0, false, false, formats[f]);
        rmsnorm_bwd_case(5, 7, 7, 0, true, true, formats[f]);
        /* the residual stream at a LoRA rank's columns beside each row; an odd gap and start */
        rmsnorm_bwd_case(16, 2048, 2048 + 16, 0, true, false, formats[f]);
        rmsnorm_bwd_case(3, 2049, 2060, 1, false, false, formats[f]);
        rmsnorm_bwd_case(70, 1000, 1003, 0, true, false, formats[f]);
    }
}

/* ------------------------------------------------------------------ rope_*_half */
/* rope_fwd's fp32 rotation differs between the backends by their cosf / sinf (CUDA's within
 * 2 ulp) and nothing else (same products, same order), so a 16-bit value may round the other
 * way where the two fp32 values straddle a rounding boundary: each element of the device's
 * out_half is the CPU's, or a rounding of a value within test_kernels_cuda.c's rope tolerance
 * (1e-5, here of its pair's norm, which the rotation keeps) of the CPU's fp32 rotation y;
 * at most 1% (at least one) not identical; the gap columns the CPU's poison. */
static long half_order(uint16_t h) { return h & 0x8000u ? -(long)(h & 0x7FFFu) : (long)h; }

static void compare_rope_half(const char *what, const uint16_t *dev, const uint16_t *cpu_half,
                              const float *x, const float *y, int tokens, int heads, int d, int ld,
                              kernels_half_format fmt) {
    const size_t width = (size_t)heads * d, n_ld = (size_t)tokens * ld;
    const int half = d / 2;
    uint16_t *got = download_checked(G, what, dev, n_ld * sizeof(uint16_t));
    size_t differ = 0, bad = 0, first_bad = n_ld;
    for (size_t i = 0; i < n_ld; i++) {
        if (got[i] == cpu_half[i]) continue;
        differ++;
        const size_t t = i / ld, col = i % ld;
        bool ok = col < width && !half_is_nan(got[i], fmt);
        if (ok) {
            const size_t pair = t * width + col / d * d + col % d % half;
            const float r = hypotf(x[pair], x[pair + half]), e = 1e-5f * r;
            const float bounds[2] = {y[t * width + col] - e, y[t * width + col] + e};
            uint16_t window[2];
            C->to_half(window, bounds, 2, fmt);
            ok = half_order(window[0]) <= half_order(got[i]) &&
                 half_order(got[i]) <= half_order(window[1]);
        }
        if (!ok && bad++ == 0) first_bad = i;
    }
    CHECK_MSG(bad == 0 && differ <= (n_ld + 99) / 100,
              "%s: n %zu, %zu not identical, %zu outside the fp32 tolerance, first at %zu (got "
              "%04x, cpu %04x)",
              what, n_ld, differ, bad, first_bad, first_bad < n_ld ? got[first_bad] : 0u,
              first_bad < n_ld ? cpu_half[first_bad] : 0u);
    free(got);
}

typedef void (*rope_fn)(float *x, const int32_t *positions, const float *inv_freq, int n_tokens,
                        int n_heads, int head_dim);
typedef void (*rope_half_fn)(kernels_half_format fmt, uint16_t *out_half, int ld_half,
                             const float *x, const int32_t *positions, const float *inv_freq,
                             int n_tokens, int n_heads, int head_dim);

/* [tokens, heads * d] rotated into 16-bit rows ld apart, the view from element off;
 * positions in [0, 4096) (the first 0: the identity), Llama's inv_freq (theta 500000). */
static void rope_half_case(bool backward, int tokens, int heads, int d, int ld, size_t off,
                           kernels_half_format fmt) {
    const size_t width = (size_t)heads * d, n = (size_t)tokens * width, n_ld = (size_t)tokens * ld;
    const int half = d / 2;
    const rope_half_fn cpu_half_op = backward ? C->rope_bwd_half : C->rope_fwd_half;
    const rope_half_fn gpu_half_op = backward ? G->rope_bwd_half : G->rope_fwd_half;
    const rope_fn cpu_op = backward ? C->rope_bwd : C->rope_fwd;
    const rope_fn gpu_op = backward ? G->rope_bwd : G->rope_fwd;
    char what[160];
    const int len = snprintf(what, sizeof what, "%s %s tokens %d heads %d d %d ld %d off %zu: ",
                             backward ? "rope_bwd_half" : "rope_fwd_half", fmt_name(fmt), tokens,
                             heads, d, ld, off);
    int32_t *pos = malloc((tokens ? tokens : 1) * sizeof(int32_t));
    for (int t = 0; t < tokens; t++) pos[t] = t ? (int32_t)(next_u64() % 4096) : 0;
    float *inv_freq = malloc(half * sizeof(float));
    for (int j = 0; j < half; j++) inv_freq[j] = powf(500000.0f, -2.0f * j / d);
    float *x = host_rand(n, -2, 2), *y = host_copy(x, n);
    cpu_op(y, pos, inv_freq, tokens, heads, d);
    uint16_t *cpu_half = host_poison16(n_ld);
    cpu_half_op(fmt, cpu_half, ld, x, pos, inv_freq, tokens, heads, d);

    dbuf dx = db_input(x, n, 4, 0), dpos = db_input(pos, tokens, 4, 0);
    dbuf dinv = db_input(inv_freq, half, 4, 0), dhalf = db_poison(n_ld, 2, off);
    gpu_half_op(fmt, at(dhalf), ld, at(dx), at(dpos), at(dinv), tokens, heads, d);
    snprintf(what + len, sizeof what - len, "out_half vs cpu");
    compare_rope_half(what, at(dhalf), cpu_half, x, y, tokens, heads, d, ld, fmt);
    snprintf(what + len, sizeof what - len, "x unchanged");
    compare_exact(G, what, at(dx), x, n * 4);

    /* (b) the fp32 op in place on a copy, then to_half, its rows placed ld apart. */
    dbuf copy = db_input(x, n, 4, 0);
    gpu_op(at(copy), at(dpos), at(dinv), tokens, heads, d);
    snprintf(what + len, sizeof what - len, "fp32 reference vs cpu");
    compare(G, what, at(copy), y, n, 1e-5);
    uint16_t *dense = device_rounding(what, at(copy), n, fmt);
    uint16_t *want = spread_rows(dense, tokens, (int)width, ld);
    snprintf(what + len, sizeof what - len, "out_half == to_half(fp32 op), gaps untouched");
    compare_exact(G, what, at(dhalf), want, n_ld * 2);
    snprintf(what + len, sizeof what - len, "margins");
    db_check_margins(what, dhalf), db_check_margins(what, dx);

    dbuf dev[] = {dx, dpos, dinv, dhalf, copy};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) db_free(dev[i]);
    void *host[] = {pos, inv_freq, x, y, cpu_half, dense, want};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
}

static void test_rope_half(void) {
    seed(25);
    /* [tokens, heads, d, ld, off]: Llama-3.2-1B's q (32 x 64) and k (8 x 64), 8B's k (8 x
     * 128) and a q of 32 x 128, token counts off the 256-thread blocks; ld the width, a LoRA
     * rank's 16 columns beside it, an odd gap (with views off a 4-byte boundary); one pair;
     * a head_dim that is no power of two; no tokens. */
    const int cases[][5] = {{37, 32, 64, 2048, 0},   {37, 32, 64, 2048 + 16, 0},
                            {37, 32, 64, 2048 + 3, 1}, {257, 8, 64, 512, 0},
                            {257, 8, 128, 1024, 0},  {257, 8, 128, 1024 + 16, 0},
                            {5, 8, 128, 1024 + 3, 3}, {129, 32, 128, 4096 + 16, 0},
                            {1, 1, 2, 2, 0},         {3, 1, 2, 5, 1},
                            {20, 3, 40, 120 + 3, 0}, {0, 8, 64, 512 + 16, 0}};
    for (int f = 0; f < 2; f++)
        for (int b = 0; b < 2; b++)
            for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
                const int *k = cases[c];
                rope_half_case(b == 1, k[0], k[1], k[2], k[3], (size_t)k[4], formats[f]);
            }
    /* More (token, pair) threads than the capped grid covers: the loop strides. */
    rope_half_case(false, 270000, 1, 128, 128 + 16, 0, KERNELS_BF16);
    rope_half_case(true, 270000, 1, 128, 128 + 16, 0, KERNELS_FP16);
}

/* ------------------------------------------------------------------ to_half_2d */
/* A [rows, cols] block of x (row stride ld_x, view from element x_off) into a 16-bit buffer
 * (row stride ld_out, view from element out_off) at column col0: the CPU's bits exactly
 * (finite values over fp16's range and past it, and infinities: no NaN, whose payload may
 * differ), every other element of the view and its margins untouched. */
static void to_half_2d_case(kernels_half_format fmt, int rows, int cols, int ld_x, int ld_out,
                            int col0, size_t x_off, size_t out_off, float scale) {
    const size_t nx = (size_t)rows * ld_x, nout = (size_t)rows * ld_out;
    char what[160];
    snprintf(what, sizeof what,
             "to_half_2d %s rows %d cols %d ld %d/%d col %d offsets %zu/%zu scale %g",
             fmt_name(fmt), rows, cols, ld_x, ld_out, col0, x_off, out_off, scale);
    float *x = malloc((nx ? nx : 1) * sizeof(float));
    for (size_t i = 0; i < nx; i++)
        x[i] = float_of(((uint32_t)(next_u64() >> 32) & 0x807FFFFFu) |
                        ((uint32_t)(95 + next_u64() % 55) << 23));
    if (nx > 2) x[1] = INFINITY, x[2] = -INFINITY;
    uint16_t *want = host_poison16(nout);
    C->to_half_2d(fmt, want + col0, ld_out, x, ld_x, rows, cols, scale);

    dbuf dx = db_input(x, nx, 4, x_off), dout = db_poison(nout, 2, out_off);
    G->to_half_2d(fmt, (uint16_t *)at(dout) + col0, ld_out, at(dx), ld_x, rows, cols, scale);
    compare_exact(G, what, at(dout), want, nout * 2);
    db_check_margins(what, dout);
    db_free(dx), db_free(dout);
    free(x), free(want);
}

static void test_to_half_2d(void) {
    seed(24);
    for (int f = 0; f < 2; f++) {
        const kernels_half_format fmt = formats[f];
        for (int si = 0; si < 2; si++) {
            const float scale = si ? 2.5f : 1.0f;
            to_half_2d_case(fmt, 7, 37, 37, 37, 0, 0, 0, scale);      /* contiguous, odd cols */
            to_half_2d_case(fmt, 7, 37, 41, 53, 5, 0, 0, scale);      /* strided, odd */
            to_half_2d_case(fmt, 9, 37, 41, 53, 5, 3, 1, scale);      /* unaligned starts */
            to_half_2d_case(fmt, 33, 16, 16, 2064, 2048, 0, 0, scale); /* groups of 4 */
            to_half_2d_case(fmt, 33, 16, 16, 2064, 2048, 1, 0, scale); /* x off: scalar */
            to_half_2d_case(fmt, 33, 16, 16, 2064, 2048, 0, 2, scale); /* out off: scalar */
            to_half_2d_case(fmt, 33, 16, 20, 2066, 2048, 0, 0, scale); /* ld_out odd: scalar */
            to_half_2d_case(fmt, 1000, 2048, 2048, 2048 + 16, 0, 0, 0, scale);
            to_half_2d_case(fmt, 1, 1, 1, 1, 0, 0, 0, scale);
            to_half_2d_case(fmt, 0, 5, 5, 8, 1, 0, 0, scale); /* nothing to write */
            to_half_2d_case(fmt, 5, 0, 5, 8, 1, 0, 0, scale);
        }
    }
    /* More rows than the capped grid covers (the row loop strides), and many narrow rows. */
    to_half_2d_case(KERNELS_BF16, 100, 170001, 170001, 170003, 1, 0, 0, 1.0f);
    to_half_2d_case(KERNELS_FP16, 70000, 3, 3, 5, 2, 0, 0, 2.5f);
}

/* ------------------------------------------------------------------ to_half_2d_many */
/* A fused adapter's padded copy [out + r, ld] (A's rows below W's, scaling * B in columns
 * u_col.. of W's rows), a block of nothing, and one long block (the grid-stride loop): the
 * CPU's bits exactly (to_half_2d's are), W's part and the margins untouched. */
static void test_to_half_2d_many(void) {
    seed(25);
    const int in = 520, out = 384, r = 16, u_col = in + 8, ld = u_col + r + 3, long_cols = 70001;
    const size_t n = (size_t)(out + r) * ld, n_long = (size_t)3 * long_cols;
    float *a = host_rand((size_t)r * in, -3, 3), *b = host_rand((size_t)out * r, -3, 3);
    float *x_long = host_rand(n_long, -1e5f, 1e5f); /* fp16 overflows to inf on many */
    for (int f = 0; f < 2; f++) {
        const kernels_half_format fmt = formats[f];
        uint16_t *want = host_poison16(n), *want_long = host_poison16(n_long);
        const kernels_half_block host_blocks[4] = {{want + (size_t)out * ld, a, ld, in, r, in, 1.0f},
                                                   {want + u_col, b, ld, r, out, r, 2.5f},
                                                   {want, a, ld, in, 0, in, 1.0f},
                                                   {want_long, x_long, long_cols, long_cols, 3, long_cols, 1.0f}};
        C->to_half_2d_many(fmt, host_blocks, 4);
        dbuf dw = db_poison(n, 2, 0), dlong = db_poison(n_long, 2, 1);
        dbuf da = db_input(a, (size_t)r * in, 4, 0), dbb = db_input(b, (size_t)out * r, 4, 0);
        dbuf dxl = db_input(x_long, n_long, 4, 0);
        uint16_t *w = at(dw);
        const kernels_half_block dev_blocks[4] = {{w + (size_t)out * ld, at(da), ld, in, r, in, 1.0f},
                                                  {w + u_col, at(dbb), ld, r, out, r, 2.5f},
                                                  {w, at(da), ld, in, 0, in, 1.0f},
                                                  {at(dlong), at(dxl), long_cols, long_cols, 3, long_cols, 1.0f}};
        kernels_half_block *blocks = dev_from(G, dev_blocks, sizeof dev_blocks);
        G->to_half_2d_many(fmt, blocks, 4);
        char what[96];
        snprintf(what, sizeof what, "to_half_2d_many %s: adapter copy", fmt_name(fmt));
        compare_exact(G, what, at(dw), want, n * 2);
        snprintf(what, sizeof what, "to_half_2d_many %s: long block", fmt_name(fmt));
        compare_exact(G, what, at(dlong), want_long, n_long * 2);
        db_check_margins(what, dw), db_check_margins(what, dlong);
        G->release(blocks);
        dbuf dev[] = {dw, dlong, da, dbb, dxl};
        for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) db_free(dev[i]);
        free(want), free(want_long);
    }
    free(a), free(b), free(x_long);
}

/* ------------------------------------------------------------------ nf4_to_half_2d */
/* A QLoRA weight's read-back (kernels/nf4.h) into a strided 16-bit matrix: the CPU's bits
 * exactly, the columns between the rows and the margins untouched. Codes from nf4_quantize of
 * random values (zero blocks and a short last block included); shapes take the 8-wide path
 * (cols and ld multiples of 8, aligned views) and the scalar one (odd cols, an odd count,
 * views off alignment, ld not a multiple of 8). */
static void nf4_case(kernels_half_format fmt, int rows, int cols, int ld, size_t code_off, size_t out_off) {
    const size_t n = (size_t)rows * cols, n_out = rows ? (size_t)(rows - 1) * ld + cols : 0;
    const size_t code_bytes = nf4_code_bytes(n), blocks = nf4_block_count(n);
    char what[128];
    snprintf(what, sizeof what, "nf4_to_half_2d %s rows %d cols %d ld %d offsets %zu/%zu", fmt_name(fmt), rows, cols,
             ld, code_off, out_off);
    float *x = host_rand(n ? n : 1, -2, 2);
    for (size_t i = 0; i < n && i < NF4_BLOCK; i++) x[i] = 0.0f; /* a zero block */
    uint8_t *codes = malloc(code_bytes + 1);
    float *absmax = malloc((blocks + 1) * sizeof(float));
    nf4_quantize(x, n, codes, absmax);
    uint16_t *want = host_poison16(n_out ? n_out : 1);
    C->nf4_to_half_2d(fmt, want, ld, codes, absmax, rows, cols);
    dbuf dcodes = db_input(codes, code_bytes, 1, code_off), dabs = db_input(absmax, blocks, 4, 0);
    dbuf dout = db_poison(n_out, 2, out_off);
    G->nf4_to_half_2d(fmt, at(dout), ld, at(dcodes), at(dabs), rows, cols);
    compare_exact(G, what, at(dout), want, n_out * 2);
    db_check_margins(what, dout);
    db_free(dcodes), db_free(dabs), db_free(dout);
    free(x), free(codes), free(absmax), free(want);
}

static void test_nf4_to_half_2d(void) {
    seed(26);
    for (int f = 0; f < 2; f++) {
        const kernels_half_format fmt = formats[f];
        nf4_case(fmt, 48, 128, 128, 0, 0);      /* contiguous, 8-wide */
        nf4_case(fmt, 48, 128, 168, 0, 0);      /* a fused copy's wider rows, 8-wide */
        nf4_case(fmt, 33, 96, 100, 0, 0);       /* ld not a multiple of 8: scalar */
        nf4_case(fmt, 33, 96, 104, 1, 0);       /* codes off alignment: scalar */
        nf4_case(fmt, 33, 96, 104, 0, 2);       /* output off alignment: scalar */
        nf4_case(fmt, 7, 37, 41, 0, 0);         /* odd cols and count, a short last block */
        nf4_case(fmt, 1, 1, 1, 0, 0);
        nf4_case(fmt, 0, 8, 8, 0, 0);           /* nothing to write */
        nf4_case(fmt, 600, 2048, 2048 + 32, 0, 0); /* more units than the grid: the loop strides */
    }
}

/* ------------------------------------------------------------------ swiglu_fwd_half */
/* [rows, cols], the 16-bit outputs (out_half here, dgate_half and dup_half below) ld apart
 * (ld == cols: contiguous), every other tensor contiguous. in_off / out_off: where the input
 * / output views start in their padded buffers. */
static void swiglu_fwd_case(int rows, int cols, int ld, kernels_half_format fmt, size_t in_off,
                            size_t out_off) {
    const size_t n = (size_t)rows * cols, n_ld = (size_t)rows * ld;
    char what[160];
    const int len = snprintf(what, sizeof what,
                             "swiglu_fwd_half %s rows %d cols %d ld %d offsets %zu/%zu: ",
                             fmt_name(fmt), rows, cols, ld, in_off, out_off);
    float *gate = host_rand(n, -6, 6), *up = host_rand(n, -2, 2), *out = host_nan(n);
    uint16_t *half = host_poison16(n_ld);
    uint16_t *gate_half = host_poison16(n), *up_half = host_poison16(n);
    C->swiglu_fwd_half(fmt, half, ld, out, gate_half, up_half, gate, up, rows, cols);

    dbuf dgate = db_input(gate, n, 4, in_off), dup = db_input(up, n, 4, in_off);
    dbuf dout = db_poison(n, 4, out_off), dhalf = db_poison(n_ld, 2, out_off);
    dbuf dgh = db_poison(n, 2, out_off), duh = db_poison(n, 2, out_off);
    G->swiglu_fwd_half(fmt, at(dhalf), ld, at(dout), at(dgh), at(duh), at(dgate), at(dup), rows,
                       cols);
    snprintf(what + len, sizeof what - len, "gate_half == cpu");
    compare_exact(G, what, at(dgh), gate_half, n * 2);
    snprintf(what + len, sizeof what - len, "up_half == cpu");
    compare_exact(G, what, at(duh), up_half, n * 2);
    snprintf(what + len, sizeof what - len, "out vs cpu");
    compare(G, what, at(dout), out, n, 1e-6);
    snprintf(what + len, sizeof what - len, "out_half vs cpu"); /* gaps: poison on both sides */
    compare_half(G, what, at(dhalf), half, n_ld, fmt);

    /* (b) swiglu_fwd on from_half(to_half(gate)), from_half(to_half(up)), then to_half, its
     * rows placed ld apart between the poison. */
    dbuf gh = db_poison(n, 2, 0), uh = db_poison(n, 2, 0), gw = db_poison(n, 4, 0);
    dbuf uw = db_poison(n, 4, 0), y = db_poison(n, 4, 0);
    G->to_half(at(gh), at(dgate), n, fmt);
    G->to_half(at(uh), at(dup), n, fmt);
    G->from_half(at(gw), at(gh), n, fmt);
    G->from_half(at(uw), at(uh), n, fmt);
    G->swiglu_fwd(at(y), at(gw), at(uw), n);
    snprintf(what + len, sizeof what - len, "fp32 reference");
    float *want_out = db_get(what, y);
    uint16_t *want_dense = device_rounding(what, at(y), n, fmt);
    uint16_t *want_half = spread_rows(want_dense, rows, cols, ld);
    uint16_t *want_gh = db_get(what, gh), *want_uh = db_get(what, uh);
    snprintf(what + len, sizeof what - len, "out == swiglu_fwd(widened)");
    compare_exact(G, what, at(dout), want_out, n * 4);
    snprintf(what + len, sizeof what - len,
             "out_half == to_half(swiglu_fwd(widened)), gaps untouched");
    compare_exact(G, what, at(dhalf), want_half, n_ld * 2);
    snprintf(what + len, sizeof what - len, "gate_half == to_half(gate)");
    compare_exact(G, what, at(dgh), want_gh, n * 2);
    snprintf(what + len, sizeof what - len, "up_half == to_half(up)");
    compare_exact(G, what, at(duh), want_uh, n * 2);

    /* (c) without the fp32 output. */
    dbuf dhalf2 = db_poison(n_ld, 2, out_off), dgh2 = db_poison(n, 2, out_off);
    dbuf duh2 = db_poison(n, 2, out_off);
    G->swiglu_fwd_half(fmt, at(dhalf2), ld, NULL, at(dgh2), at(duh2), at(dgate), at(dup), rows,
                       cols);
    snprintf(what + len, sizeof what - len, "out NULL: out_half");
    compare_exact(G, what, at(dhalf2), want_half, n_ld * 2);
    snprintf(what + len, sizeof what - len, "out NULL: gate_half");
    compare_exact(G, what, at(dgh2), want_gh, n * 2);
    snprintf(what + len, sizeof what - len, "out NULL: up_half");
    compare_exact(G, what, at(duh2), want_uh, n * 2);

    /* (d) gate and up NULL: from the 16-bit gate and up (the roundings of (b), at the inputs'
     * offset), the same outputs; the 16-bit inputs left as they are. */
    dbuf ghin = db_input(want_gh, n, 2, in_off), uhin = db_input(want_uh, n, 2, in_off);
    dbuf dhalf3 = db_poison(n_ld, 2, out_off), dout3 = db_poison(n, 4, out_off);
    G->swiglu_fwd_half(fmt, at(dhalf3), ld, at(dout3), at(ghin), at(uhin), NULL, NULL, rows, cols);
    snprintf(what + len, sizeof what - len, "16-bit in: out_half");
    compare_exact(G, what, at(dhalf3), want_half, n_ld * 2);
    snprintf(what + len, sizeof what - len, "16-bit in: out");
    compare_exact(G, what, at(dout3), want_out, n * 4);
    snprintf(what + len, sizeof what - len, "16-bit in: gate_half kept");
    compare_exact(G, what, at(ghin), want_gh, n * 2);
    snprintf(what + len, sizeof what - len, "16-bit in: up_half kept");
    compare_exact(G, what, at(uhin), want_uh, n * 2);
    snprintf(what + len, sizeof what - len, "margins");
    dbuf written[] = {dout, dhalf, dgh, duh, dhalf2, dgh2, duh2, dhalf3, dout3};
    for (size_t i = 0; i < sizeof written / sizeof written[0]; i++)
        db_check_margins(what, written[i]);

    dbuf dev[] = {dgate, dup, dout, dhalf, dgh, duh, gh, uh, gw, uw, y, dhalf2, dgh2, duh2, ghin, uhin, dhalf3, dout3};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) db_free(dev[i]);
    void *host[] = {gate,     up,         out,       half,    gate_half, up_half,
                    want_out, want_dense, want_half, want_gh, want_uh};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
}

/* ------------------------------------------------------------------ swiglu_bwd_half */
/* 1 + g (1 - sigmoid(g)) in dgate crosses zero at g = -1.27846: near there fp32 cancellation
 * leaves CPU and GPU (different expf, FMA) more than a 16-bit ulp apart, so the cases
 * compared with the CPU keep gate out of [-1.29, -1.27]; near_root draws gate only there and
 * checks (b) alone, the bits against the device's own swiglu_bwd. */
static void swiglu_bwd_case(int rows, int cols, int ld, kernels_half_format fmt, size_t in_off,
                            size_t out_off, bool near_root) {
    const size_t n = (size_t)rows * cols, n_ld = (size_t)rows * ld;
    char what[160];
    const int len = snprintf(what, sizeof what,
                             "swiglu_bwd_half %s rows %d cols %d ld %d offsets %zu/%zu%s: ",
                             fmt_name(fmt), rows, cols, ld, in_off, out_off,
                             near_root ? " near root" : "");
    float *gate = near_root ? host_rand(n, -1.29f, -1.27f) : host_rand(n, -6, 6);
    float *up = host_rand(n, -2, 2), *dy = host_rand(n, -1, 1);
    for (size_t i = 0; i < n && !near_root; i++)
        if (gate[i] > -1.29f && gate[i] < -1.27f) gate[i] += 0.05f;
    uint16_t *gate_half = host_poison16(n), *up_half = host_poison16(n);
    C->to_half(gate_half, gate, n, fmt);
    C->to_half(up_half, up, n, fmt);
    uint16_t *dgate = host_poison16(n_ld), *dup = host_poison16(n_ld);
    C->swiglu_bwd_half(fmt, dgate, dup, ld, dy, gate_half, up_half, rows, cols);

    dbuf dgh = db_input(gate_half, n, 2, in_off), duh = db_input(up_half, n, 2, in_off);
    dbuf ddy = db_input(dy, n, 4, in_off);
    dbuf ddg = db_poison(n_ld, 2, out_off), ddu = db_poison(n_ld, 2, out_off);
    G->swiglu_bwd_half(fmt, at(ddg), at(ddu), ld, at(ddy), at(dgh), at(duh), rows, cols);
    if (!near_root) {
        snprintf(what + len, sizeof what - len, "dgate_half vs cpu");
        compare_half(G, what, at(ddg), dgate, n_ld, fmt);
    }
    snprintf(what + len, sizeof what - len, "dup_half vs cpu");
    compare_half(G, what, at(ddu), dup, n_ld, fmt);

    /* (b) swiglu_bwd on the widened inputs, then to_half, rows placed ld apart. */
    dbuf gw = db_poison(n, 4, 0), uw = db_poison(n, 4, 0);
    dbuf dg = db_poison(n, 4, 0), du = db_poison(n, 4, 0);
    G->from_half(at(gw), at(dgh), n, fmt);
    G->from_half(at(uw), at(duh), n, fmt);
    G->swiglu_bwd(at(dg), at(du), at(ddy), at(gw), at(uw), n);
    snprintf(what + len, sizeof what - len, "fp32 reference");
    uint16_t *dense_dg = device_rounding(what, at(dg), n, fmt);
    uint16_t *dense_du = device_rounding(what, at(du), n, fmt);
    uint16_t *want_dg = spread_rows(dense_dg, rows, cols, ld);
    uint16_t *want_du = spread_rows(dense_du, rows, cols, ld);
    snprintf(what + len, sizeof what - len,
             "dgate_half == to_half(swiglu_bwd(widened)), gaps untouched");
    compare_exact(G, what, at(ddg), want_dg, n_ld * 2);
    snprintf(what + len, sizeof what - len,
             "dup_half == to_half(swiglu_bwd(widened)), gaps untouched");
    compare_exact(G, what, at(ddu), want_du, n_ld * 2);
    snprintf(what + len, sizeof what - len, "margins");
    db_check_margins(what, ddg), db_check_margins(what, ddu);

    dbuf dev[] = {dgh, duh, ddy, ddg, ddu, gw, uw, dg, du};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) db_free(dev[i]);
    void *host[] = {gate,  up,       dy,       gate_half, up_half, dgate,
                    dup,   dense_dg, dense_du, want_dg,   want_du};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
}

static void test_swiglu_half(void) {
    seed(22);
    const int sizes[] = {1, 3, 5, 999, 1001, 4099, 65537};
    for (int f = 0; f < 2; f++) {
        const kernels_half_format fmt = formats[f];
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) { /* one flat row */
            swiglu_fwd_case(1, sizes[s], sizes[s], fmt, 0, 0);
            swiglu_bwd_case(1, sizes[s], sizes[s], fmt, 0, 0, false);
        }
        /* Contiguous rows (the flat launch over rows * cols); views off a 16-byte boundary:
         * together (a scalar head, then aligned groups) and by different amounts (all
         * scalar). */
        const size_t offsets[][2] = {{0, 0}, {1, 1}, {3, 3}, {1, 2}, {0, 3}};
        for (int o = 0; o < 5; o++) {
            swiglu_fwd_case(7, 143, 143, fmt, offsets[o][0], offsets[o][1]);
            swiglu_bwd_case(7, 143, 143, fmt, offsets[o][0], offsets[o][1], false);
        }
        swiglu_bwd_case(1, 4099, 4099, fmt, 0, 0, true);
        /* 16-bit rows ld apart. [rows, cols, ld, in_off, out_off]: a LoRA rank's columns
         * beside each row, groups of four (then inputs or outputs off their boundaries:
         * scalar); an odd ld (scalar); rows * cols not a multiple of 4; one column; one row
         * (the flat launch); many narrow rows. */
        const int ld_cases[][5] = {{16, 2048, 2048 + 16, 0, 0}, {16, 2048, 2048 + 16, 1, 0},
                                   {16, 2048, 2048 + 16, 0, 2}, {16, 2048, 2048 + 16, 3, 3},
                                   {5, 1000, 1003, 0, 0},       {3, 5, 9, 0, 0},
                                   {3, 5, 9, 1, 3},             {7, 1, 3, 0, 0},
                                   {7, 1, 2, 0, 1},             {1, 7, 12, 1, 1},
                                   {1, 1, 4, 0, 0},             {70000, 3, 5, 0, 0}};
        for (size_t c = 0; c < sizeof ld_cases / sizeof ld_cases[0]; c++) {
            const int *k = ld_cases[c];
            swiglu_fwd_case(k[0], k[1], k[2], fmt, (size_t)k[3], (size_t)k[4]);
            swiglu_bwd_case(k[0], k[1], k[2], fmt, (size_t)k[3], (size_t)k[4], false);
        }
        swiglu_bwd_case(9, 4096, 4096 + 64, fmt, 0, 0, true);
    }
    /* More rows than the capped grid covers: the row loop strides. */
    swiglu_fwd_case(100, 170001, 170003, KERNELS_BF16, 0, 0);
    swiglu_bwd_case(100, 170001, 170003, KERNELS_FP16, 0, 0, false);
}

/* ------------------------------------------------------------------ cross_entropy_half */
static void cross_entropy_case(int rows, int vocab, kernels_half_format fmt, float grad_scale,
                               float spread) {
    const size_t n = (size_t)rows * vocab;
    char what[160];
    const int len = snprintf(what, sizeof what, "cross_entropy_half %s rows %d vocab %d scale %g: ",
                             fmt_name(fmt), rows, vocab, grad_scale);
    int32_t *targets = malloc(rows * sizeof(int32_t));
    for (int r = 0; r < rows; r++) targets[r] = (int32_t)(next_u64() % (uint64_t)vocab);
    if (rows > 2) targets[2] = -100; /* ignored rows */
    if (rows > 4) targets[rows - 1] = -1;
    float *logits = host_rand(n, -spread, spread), *loss = host_nan(rows);
    uint16_t *grad = host_poison16(n);
    C->cross_entropy_half(fmt, grad, logits, loss, targets, rows, vocab, grad_scale);

    dbuf dt = db_input(targets, rows, 4, 0), dl = db_input(logits, n, 4, 0);
    dbuf dloss = db_poison(rows, 4, 0), dgrad = db_poison(n, 2, 0);
    G->cross_entropy_half(fmt, at(dgrad), at(dl), at(dloss), at(dt), rows, vocab, grad_scale);
    snprintf(what + len, sizeof what - len, "loss vs cpu");
    compare(G, what, at(dloss), loss, rows, 1e-5);
    snprintf(what + len, sizeof what - len, "logits unchanged");
    compare_exact(G, what, at(dl), logits, n * 4);
    if (grad_scale != 0.0f) {
        snprintf(what + len, sizeof what - len, "gradient vs cpu");
        compare_half(G, what, at(dgrad), grad, n, fmt);
    } else { /* no gradient: the 16-bit buffer is not written (the CPU's grad is the poison) */
        snprintf(what + len, sizeof what - len, "no gradient: buffer untouched");
        compare_exact(G, what, at(dgrad), grad, n * 2);
    }

    /* (b) cross_entropy in place on a copy, then to_half. */
    dbuf copy = db_input(logits, n, 4, 0), copy_loss = db_poison(rows, 4, 0);
    G->cross_entropy(at(copy), at(copy_loss), at(dt), rows, vocab, grad_scale);
    snprintf(what + len, sizeof what - len, "fp32 reference");
    float *want_loss = db_get(what, copy_loss);
    snprintf(what + len, sizeof what - len, "loss == cross_entropy");
    compare_exact(G, what, at(dloss), want_loss, rows * 4);
    if (grad_scale != 0.0f) {
        uint16_t *want = device_rounding(what, at(copy), n, fmt);
        snprintf(what + len, sizeof what - len, "gradient == to_half(cross_entropy)");
        compare_exact(G, what, at(dgrad), want, n * 2);
        free(want);
    }
    snprintf(what + len, sizeof what - len, "margins");
    db_check_margins(what, dloss), db_check_margins(what, dgrad);

    dbuf dev[] = {dt, dl, dloss, dgrad, copy, copy_loss};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) db_free(dev[i]);
    free(targets), free(logits), free(loss), free(grad), free(want_loss);
}

static void test_cross_entropy_half(void) {
    seed(23);
    /* Logits within +-8 keep every probability away from 1, where p - 1 at the target
     * cancels (fp32 noise larger than a 16-bit ulp between CPU and GPU). */
    const int shapes[][2] = {{1, 1}, {3, 7}, {33, 128}, {5, 1001}, {7, 5003}, {4, 32000}};
    for (int f = 0; f < 2; f++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            const int rows = shapes[s][0], vocab = shapes[s][1];
            const float spread = vocab < 10 ? 3.0f : 8.0f;
            cross_entropy_case(rows, vocab, formats[f], 1.0f / 37.0f, spread);
            cross_entropy_case(rows, vocab, formats[f], 0.0f, spread);
        }
    /* A loss scale that overflows fp16 (to +-inf, what the scaler detects) and not bf16. */
    cross_entropy_case(6, 1001, KERNELS_FP16, 65536.0f * 256.0f, 4.0f);
    cross_entropy_case(6, 1001, KERNELS_BF16, 65536.0f * 256.0f, 4.0f);
}

/* An unknown format is recorded, naming the op, and nothing runs. */
static void test_fused_errors(void) {
    dbuf h = db_poison(4, 2, 0), x = db_poison(4, 4, 0);
    G->swiglu_bwd_half((kernels_half_format)7, at(h), at(h), 2, at(x), at(h), at(h), 2, 2);
    ct_error err = {{0}};
    CHECK(kernels_cuda_status(&err) == -1);
    CHECK_CONTAINS(err.msg, "swiglu_bwd_half");
    CHECK_CONTAINS(err.msg, "format 7");
    G->to_half_2d((kernels_half_format)0, at(h), 2, at(x), 2, 2, 2, 1.0f);
    ct_error err2 = {{0}};
    CHECK(kernels_cuda_status(&err2) == -1);
    CHECK_CONTAINS(err2.msg, "to_half_2d");
    G->rope_fwd_half((kernels_half_format)5, at(h), 2, at(x), at(x), at(x), 1, 1, 2);
    ct_error err3 = {{0}};
    CHECK(kernels_cuda_status(&err3) == -1);
    CHECK_CONTAINS(err3.msg, "rope_fwd_half");
    CHECK_CONTAINS(err3.msg, "format 5");
    G->rope_bwd_half((kernels_half_format)-1, at(h), 2, at(x), at(x), at(x), 1, 1, 2);
    ct_error err4 = {{0}};
    CHECK(kernels_cuda_status(&err4) == -1);
    CHECK_CONTAINS(err4.msg, "rope_bwd_half");
    db_free(h), db_free(x);
}

int main(void) {
    if (!open_backends(&C, &G)) return 77;
    const kernels *both[2] = {C, G};
    for (int b = 0; b < 2; b++)
        CHECK_MSG(both[b]->rmsnorm_fwd_half && both[b]->rmsnorm_bwd_half && both[b]->to_half_2d_many &&
                      both[b]->rope_fwd_half &&
                      both[b]->rope_bwd_half && both[b]->swiglu_fwd_half &&
                      both[b]->swiglu_bwd_half && both[b]->cross_entropy_half &&
                      both[b]->to_half_2d && both[b]->nf4_to_half_2d,
                  "the %s backend lacks one of the 16-bit producers", both[b]->name);
    if (check_failed_count) return check_summary("test_kernels_cuda_fused");
    test_rmsnorm_fwd_half();
    test_rmsnorm_bwd_half();
    test_rope_half();
    test_swiglu_half();
    test_cross_entropy_half();
    test_to_half_2d();
    test_to_half_2d_many();
    test_nf4_to_half_2d();
    test_fused_errors();
    check_status("end of tests");
    return check_summary("test_kernels_cuda_fused");
}
