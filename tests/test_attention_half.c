/* The CPU reference of attention with 16-bit operands (kernels/cpu/attention_half.c) and its
 * shadow-backend wrappers, for bf16 and fp16 (kernels.h: q, k, v arrive in 16 bits, the
 * output leaves in 16 bits with a row stride, D comes from that 16-bit output):
 *  - forward: on 16-bit q, k, v it gives bit for bit what attention_fwd gives on the same
 *    values rounded here independently (frexp + nearbyint in double, not the library's
 *    to_half): the fp32 out (when asked for) and lse; out_half is that output rounded
 *    independently, its rows ld_out apart, the gap columns untouched; with out NULL the
 *    same out_half and lse;
 *  - backward: bit for bit attention_bwd on the rounded q, k, v, dout, with the widened
 *    16-bit output for D; and not the bits of the fp32 output's D (dq, dk depend on D);
 *  - the rounding really happens, at the format's scale: the result differs from fp32
 *    attention on the unrounded inputs by a relative norm in [tol/20, tol], tol 1e-2 for
 *    bf16 and 1.5e-3 for fp16 (inputs carry relative errors up to 2^-9 / 2^-12, which the
 *    softmax passes on scaled by the score magnitudes, a few units here; measured
 *    1.4e-3..3.5e-3 and 1.7e-4..4.3e-4, so a rounding to the wrong format falls outside);
 *  - the shadow backend's wrappers give the CPU bits.
 * Outputs are poisoned with NaN first, so an unwritten element fails. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "tests/check.h"

static uint64_t rng_state = 0x243F6A8885A308D3ull;

static float urand(float lo, float hi) {
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return lo + (hi - lo) * (float)((rng_state >> 40) * 0x1p-24);
}

static const char *fmt_name(kernels_half_format fmt) { return fmt == KERNELS_BF16 ? "bf16" : "fp16"; }

/* x rounded to nearest (ties to even, the default rounding mode of nearbyint) with the
 * format's significand: 8 bits for bf16, 11 for fp16 (whose quantum stops shrinking at its
 * subnormals, 2^-24). Inputs here are far from both formats' overflow. */
static float round_independent(float x, kernels_half_format fmt) {
    if (x == 0.0f) return x;
    int e;
    frexp((double)x, &e); /* |x| in [2^(e-1), 2^e) */
    const int bits = fmt == KERNELS_BF16 ? 8 : 11;
    int quantum_exp = e - bits;
    if (fmt == KERNELS_FP16 && quantum_exp < -24) quantum_exp = -24;
    return (float)ldexp(nearbyint(ldexp((double)x, -quantum_exp)), quantum_exp);
}

static float *rand_array(size_t n, float lo, float hi) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = urand(lo, hi);
    return x;
}
static float *rounded(const float *x, size_t n, kernels_half_format fmt) {
    float *y = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) y[i] = round_independent(x[i], fmt);
    return y;
}
static float *nan_array(size_t n) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = NAN;
    return x;
}
/* The 16-bit tensor of x's values through the backend's to_half (checked against the
 * independent rounding, so the inputs are what this test says they are). */
static uint16_t *to_bits(const float *x, const float *rx, size_t n, kernels_half_format fmt) {
    const kernels *K = kernels_cpu();
    uint16_t *h = malloc(n * sizeof(uint16_t));
    float *back = malloc(n * sizeof(float));
    K->to_half(h, x, n, fmt);
    K->from_half(back, h, n, fmt);
    CHECK_MSG(memcmp(back, rx, n * sizeof(float)) == 0, "%s: to_half disagrees with the independent rounding",
              fmt_name(fmt));
    free(back);
    return h;
}

static double rel_diff(const float *a, const float *ref, size_t n) {
    double diff = 0.0, norm = 0.0;
    for (size_t i = 0; i < n; i++) {
        double e = (double)a[i] - ref[i];
        diff += e * e;
        norm += (double)ref[i] * ref[i];
    }
    return norm > 0 ? sqrt(diff / norm) : sqrt(diff);
}
static size_t count_different(const float *a, const float *b, size_t n) {
    size_t count = 0;
    for (size_t i = 0; i < n; i++) count += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    return count;
}
static bool all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return false;
    return true;
}

typedef struct half_case {
    int batch, seq, n_heads, n_kv, d;
    int doc_len; /* 0: no doc_ids; else documents of length doc_len (the last one shorter) */
    int gap;     /* ld_out - n_heads * d */
} half_case;

enum { SENTINEL = 0x5A5A, POISON_BF16 = 0x7FC1, POISON_FP16 = 0x7E01 };

/* Bitwise equality of a table output with the expectation, plus everything written. */
static void check_bits(const char *what, const float *got, const float *want, size_t n) {
    CHECK_MSG(all_finite(got, n), "%s: non-finite output", what);
    size_t differ = count_different(got, want, n);
    CHECK_MSG(differ == 0, "%s: %zu of %zu elements differ from the expectation", what, differ, n);
}

/* out_half [tokens, ld] poisoned in its rows' first width columns, the sentinel beyond. */
static uint16_t *poisoned_out(size_t tokens, size_t width, size_t ld, kernels_half_format fmt) {
    uint16_t *h = malloc(tokens * ld * sizeof(uint16_t));
    for (size_t i = 0; i < tokens * ld; i++)
        h[i] = i % ld < width ? (fmt == KERNELS_BF16 ? POISON_BF16 : POISON_FP16) : SENTINEL;
    return h;
}

/* out_half holds want rounded independently in its first width columns, the sentinel in
 * the gap; returns its widened contiguous values. */
static float *check_out_half(const char *what, const uint16_t *h, const float *want, size_t tokens, size_t width,
                             size_t ld, kernels_half_format fmt) {
    const kernels *K = kernels_cpu();
    float *wide = malloc(tokens * width * sizeof(float));
    size_t bad = 0, gap_bad = 0;
    for (size_t t = 0; t < tokens; t++) {
        K->from_half(wide + t * width, h + t * ld, width, fmt);
        for (size_t j = width; j < ld; j++) gap_bad += h[t * ld + j] != SENTINEL;
    }
    for (size_t i = 0; i < tokens * width; i++) {
        const float r = round_independent(want[i], fmt);
        bad += memcmp(&wide[i], &r, sizeof r) != 0;
    }
    CHECK_MSG(bad == 0, "%s: %zu of %zu 16-bit outputs are not the fp32 output rounded", what, bad, tokens * width);
    CHECK_MSG(gap_bad == 0, "%s: %zu gap elements written", what, gap_bad);
    return wide;
}

/* Shadow wrappers: the same call through shifted pointers gives the same bits. */
static void check_shadow(const half_case *tc, kernels_half_format fmt, const uint16_t *hq, const uint16_t *hk,
                         const uint16_t *hv, const int32_t *doc, const float *dout, const uint16_t *out_half,
                         const float *lse, const float *dq, const float *dk, const float *dv) {
    const kernels *S = kernels_shadow();
    const size_t tokens = (size_t)tc->batch * tc->seq, width = (size_t)tc->n_heads * tc->d;
    const size_t q_n = tokens * width, ld = width + (size_t)tc->gap;
    const size_t kv_n = tokens * tc->n_kv * tc->d, lse_n = tokens * tc->n_heads;
    const float scale = 1.0f / sqrtf((float)tc->d);
    uint16_t *sq = S->alloc(q_n * 2), *sk = S->alloc(kv_n * 2), *sv = S->alloc(kv_n * 2);
    uint16_t *sout_h = S->alloc(tokens * ld * 2);
    float *sdout = S->alloc(q_n * 4), *sout = S->alloc(q_n * 4), *slse = S->alloc(lse_n * 4);
    float *sdq = S->alloc(q_n * 4), *sdk = S->alloc(kv_n * 4), *sdv = S->alloc(kv_n * 4);
    int32_t *sdoc = doc ? S->alloc(tokens * sizeof(int32_t)) : NULL;
    S->upload(sq, hq, q_n * 2);
    S->upload(sk, hk, kv_n * 2);
    S->upload(sv, hv, kv_n * 2);
    S->upload(sout_h, out_half, tokens * ld * 2); /* the gap's sentinel, overwritten elsewhere */
    S->upload(sdout, dout, q_n * 4);
    if (doc) S->upload(sdoc, doc, tokens * sizeof(int32_t));
    S->attention_fwd_half(fmt, sout_h, (int)ld, sout, slse, sq, sk, sv, sdoc, tc->batch, tc->seq, tc->n_heads,
                          tc->n_kv, tc->d, scale);
    S->attention_bwd_half(fmt, sdq, sdk, sdv, sdout, sq, sk, sv, sout_h, (int)ld, slse, sdoc, tc->batch, tc->seq,
                          tc->n_heads, tc->n_kv, tc->d, scale);
    uint16_t *host_h = malloc(tokens * ld * 2);
    S->download(host_h, sout_h, tokens * ld * 2);
    CHECK_MSG(memcmp(host_h, out_half, tokens * ld * 2) == 0, "%s shadow out_half: not the CPU bits",
              fmt_name(fmt));
    free(host_h);
    float *host = malloc(q_n * 4);
    const struct {
        const char *name;
        const float *dev, *want;
        size_t n;
    } outs[] = {{"lse", slse, lse, lse_n}, {"dq", sdq, dq, q_n}, {"dk", sdk, dk, kv_n}, {"dv", sdv, dv, kv_n}};
    for (size_t i = 0; i < sizeof outs / sizeof outs[0]; i++) {
        S->download(host, outs[i].dev, outs[i].n * 4);
        CHECK_MSG(memcmp(host, outs[i].want, outs[i].n * 4) == 0, "%s shadow %s: not the CPU bits",
                  fmt_name(fmt), outs[i].name);
    }
    free(host);
    void *bufs[] = {sq, sk, sv, sout_h, sdout, sout, slse, sdq, sdk, sdv, sdoc};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) S->release(bufs[i]);
}

static void run_case(const half_case *tc, kernels_half_format fmt) {
    const kernels *K = kernels_cpu();
    const int batch = tc->batch, seq = tc->seq, nh = tc->n_heads, nkv = tc->n_kv, d = tc->d;
    const size_t tokens = (size_t)batch * seq, width = (size_t)nh * d, q_n = tokens * width;
    const size_t kv_n = tokens * nkv * d, lse_n = tokens * nh, ld = width + (size_t)tc->gap;
    const float scale = 1.0f / sqrtf((float)d);
    char what[160];
    const int len = snprintf(what, sizeof what, "%s b %d seq %d heads %d/%d d %d docs %d gap %d: ", fmt_name(fmt),
                             batch, seq, nh, nkv, d, tc->doc_len, tc->gap);

    int32_t *doc = NULL;
    if (tc->doc_len) {
        doc = malloc(tokens * sizeof(int32_t));
        for (size_t t = 0; t < tokens; t++) doc[t] = (int32_t)((t % (size_t)seq) / tc->doc_len);
    }
    float *q = rand_array(q_n, -2, 2), *k = rand_array(kv_n, -2, 2), *v = rand_array(kv_n, -1, 1);
    float *dout = rand_array(q_n, -1, 1);
    float *rq = rounded(q, q_n, fmt), *rk = rounded(k, kv_n, fmt), *rv = rounded(v, kv_n, fmt);
    float *rdout = rounded(dout, q_n, fmt);
    uint16_t *hq = to_bits(q, rq, q_n, fmt), *hk = to_bits(k, rk, kv_n, fmt), *hv = to_bits(v, rv, kv_n, fmt);

    /* Forward: 16-bit inputs == fp32 on the independently rounded values. */
    float *out = nan_array(q_n), *lse = nan_array(lse_n);
    float *want_out = nan_array(q_n), *want_lse = nan_array(lse_n);
    uint16_t *out_half = poisoned_out(tokens, width, ld, fmt);
    K->attention_fwd_half(fmt, out_half, (int)ld, out, lse, hq, hk, hv, doc, batch, seq, nh, nkv, d, scale);
    K->attention_fwd(want_out, want_lse, rq, rk, rv, doc, batch, seq, nh, nkv, d, scale);
    snprintf(what + len, sizeof what - len, "out == fp32 on rounded inputs");
    check_bits(what, out, want_out, q_n);
    snprintf(what + len, sizeof what - len, "lse == fp32 on rounded inputs");
    check_bits(what, lse, want_lse, lse_n);
    snprintf(what + len, sizeof what - len, "out_half");
    float *wide_out = check_out_half(what, out_half, want_out, tokens, width, ld, fmt);

    /* Without the fp32 output: the same 16-bit output and lse. */
    float *lse2 = nan_array(lse_n);
    uint16_t *out_half2 = poisoned_out(tokens, width, ld, fmt);
    K->attention_fwd_half(fmt, out_half2, (int)ld, NULL, lse2, hq, hk, hv, doc, batch, seq, nh, nkv, d, scale);
    CHECK_MSG(memcmp(out_half2, out_half, tokens * ld * 2) == 0, "%sout NULL: other 16-bit output", what);
    snprintf(what + len, sizeof what - len, "out NULL: lse");
    check_bits(what, lse2, want_lse, lse_n);

    /* ... and differs from fp32 on the raw inputs, within the format's error. */
    const double tol = fmt == KERNELS_BF16 ? 1e-2 : 1.5e-3;
    float *fp_out = nan_array(q_n), *fp_lse = nan_array(lse_n);
    K->attention_fwd(fp_out, fp_lse, q, k, v, doc, batch, seq, nh, nkv, d, scale);
    const size_t out_differ = count_different(out, fp_out, q_n);
    const double out_rel = rel_diff(out, fp_out, q_n);
    what[len] = '\0';
    CHECK_MSG(out_differ > q_n / 2, "%sonly %zu of %zu outputs changed by rounding", what, out_differ, q_n);
    CHECK_MSG(out_rel < tol && out_rel > tol / 20, "%sout vs fp32: rel %.3g (expected %g..%g)", what, out_rel,
              tol / 20, tol);

    /* Backward, from the half forward's 16-bit out and lse (as the model calls it). */
    float *dq = nan_array(q_n), *dk = nan_array(kv_n), *dv = nan_array(kv_n);
    float *want_dq = nan_array(q_n), *want_dk = nan_array(kv_n), *want_dv = nan_array(kv_n);
    K->attention_bwd_half(fmt, dq, dk, dv, dout, hq, hk, hv, out_half, (int)ld, lse, doc, batch, seq, nh, nkv, d,
                          scale);
    K->attention_bwd(want_dq, want_dk, want_dv, rdout, rq, rk, rv, wide_out, lse, doc, batch, seq, nh, nkv, d,
                     scale);
    snprintf(what + len, sizeof what - len, "dq == fp32 on rounded inputs");
    check_bits(what, dq, want_dq, q_n);
    snprintf(what + len, sizeof what - len, "dk == fp32 on rounded inputs");
    check_bits(what, dk, want_dk, kv_n);
    snprintf(what + len, sizeof what - len, "dv == fp32 on rounded inputs");
    check_bits(what, dv, want_dv, kv_n);

    /* D really comes from the 16-bit output: with the fp32 one dq differs (seq > 1: with
     * one key dq is zero up to rounding either way). */
    float *fo_dq = nan_array(q_n), *fo_dk = nan_array(kv_n), *fo_dv = nan_array(kv_n);
    K->attention_bwd(fo_dq, fo_dk, fo_dv, rdout, rq, rk, rv, out, lse, doc, batch, seq, nh, nkv, d, scale);
    what[len] = '\0';
    if (seq > 1)
        CHECK_MSG(count_different(dq, fo_dq, q_n) > 0, "%sdq does not depend on the output's rounding", what);

    float *fp_dq = nan_array(q_n), *fp_dk = nan_array(kv_n), *fp_dv = nan_array(kv_n);
    K->attention_bwd(fp_dq, fp_dk, fp_dv, dout, q, k, v, fp_out, fp_lse, doc, batch, seq, nh, nkv, d, scale);
    const struct {
        const char *name;
        const float *half, *fp;
        size_t n;
    } grads[] = {{"dq", dq, fp_dq, q_n}, {"dk", dk, fp_dk, kv_n}, {"dv", dv, fp_dv, kv_n}};
    /* With one key the softmax is constant: dq and dk are zero up to rounding. */
    for (int i = seq == 1 ? 2 : 0; i < 3; i++) {
        const double rel = rel_diff(grads[i].half, grads[i].fp, grads[i].n);
        CHECK_MSG(rel < tol && rel > tol / 20, "%s%s vs fp32: rel %.3g (expected %g..%g)", what, grads[i].name,
                  rel, tol / 20, tol);
    }

    check_shadow(tc, fmt, hq, hk, hv, doc, dout, out_half, lse, dq, dk, dv);

    void *bufs[] = {q,      k,      v,       dout,    rq,      rk,      rv,    rdout, hq,    hk,    hv,
                    out,    lse,    want_out, want_lse, out_half, wide_out, lse2, out_half2, fp_out, fp_lse, dq,
                    dk,     dv,     want_dq, want_dk, want_dv, fo_dq,   fo_dk, fo_dv, fp_dq, fp_dk, fp_dv};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(doc);
}

/* The independent rounding itself, on values whose roundings are known by hand. */
static void test_rounding_helper(void) {
    CHECK(round_independent(1.0f + 0x1p-8f, KERNELS_BF16) == 1.0f);           /* tie to even */
    CHECK(round_independent(1.0f + 3 * 0x1p-8f, KERNELS_BF16) == 1.0f + 0x1p-6f); /* tie up */
    CHECK(round_independent(1.0f + 0x1p-11f, KERNELS_FP16) == 1.0f);
    CHECK(round_independent(1.0f + 0x1p-10f + 0x1p-11f, KERNELS_FP16) == 1.0f + 0x1p-9f);
    CHECK(round_independent(-3.0f * 0x1p-26f, KERNELS_FP16) == -0x1p-24f); /* subnormal fp16 */
    CHECK(round_independent(0.1f, KERNELS_BF16) == 0.10009765625f);
}

int main(void) {
    test_rounding_helper();
    const half_case cases[] = {
        {2, 7, 4, 2, 8, 0, 0},     /* GQA 2, a partial tile */
        {2, 70, 4, 2, 40, 23, 16}, /* documents across the 64-row tile edge; room for an adapter */
        {1, 130, 4, 1, 64, 0, 48}, /* multi-query, three tiles */
        {1, 1, 2, 2, 16, 0, 3},    /* a single token, an odd gap */
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        run_case(&cases[c], KERNELS_BF16);
        run_case(&cases[c], KERNELS_FP16);
    }
    return check_summary("test_attention_half");
}
