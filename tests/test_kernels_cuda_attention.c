/* The CUDA tensor-core attention (kernels/cuda/attention_half.cu, attention_mma.cu) against
 * the CPU reference attention_fwd_half / attention_bwd_half (label gpu; exit 77 = skipped
 * where no GPU is usable).
 *
 * Both backends get the same 16-bit q, k, v: fp32 values drawn on the host and rounded there
 * by the CPU backend's to_half. Bound: ||cuda - cpu|| / ||cpu|| < 1e-2 for out_half (widened),
 * out, lse, dq, dk, dv, in bf16 and fp16 (the kernels.h contract: the CPU reference keeps P
 * and dS in fp32, the GPU rounds them to the format where they enter a product; everything
 * else is rounded alike). Where the fp32 out is asked for (some cases pass NULL), out_half
 * must be its to_half bit for bit. Shapes: seq 1, 7, 65, 130 (ragged tiles), head_dim 8, 30,
 * 64, 80, 128, 256 (padding to 16, both tile sizes), GQA 8/2 and MHA, batch 2, with and
 * without document masks, and seq 512 x head_dim 128 x 16/8 heads for the tile loops; out_half
 * rows ld_out = n_heads * head_dim (+ 16, or + 3: rows not 4-byte aligned) apart, and inputs
 * 2-byte aligned only in some cases (attention_mma.cu then leaves them to the WMMA kernels).
 * Outputs are poisoned with NaN first (an element the kernel fails to write stays NaN and
 * fails; in out_half the poison payload itself is looked for) and the columns between
 * out_half's rows hold a sentinel that must survive; the backward runs from the CPU's
 * out_half (NaN between its rows, which it must not read) and lse, so it is compared alone
 * (with one token dq and dk are zero, so there they must be within 1e-4 of it); forward and
 * backward run twice must give the same bits (no atomics); the backend's sticky error state
 * must be clean after every op, and report a shape that no attention kernel runs (head_dim
 * 300), an unknown format and out_half rows closer than n_heads * head_dim.
 * The head_dim 64/128 backward's two ways to dq (dk/dv store the 16-bit dS and dq multiplies
 * it, in chunks of kv heads that fit a scratch budget; or dq recomputes dS) run side by side
 * (cuda_attention_bwd_half_budget): each within 1e-2 of the CPU, dk and dv the same bits
 * either way (the same kernel arithmetic, one storing what it multiplies), dq the same bits
 * whatever the chunking. The forward with 32 query rows per warp (cuda_attention_fwd_half_rows)
 * must give the table's bits (16 rows per warp). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/kernel_compare.h"
#ifdef CTUNE_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h" /* cuda_attention_bwd_half_budget */
#endif

#define REL_TOL 1e-2
#define GAP_SENTINEL 0x7E7Eu /* between out_half's rows: the forward leaves it alone */

static const kernels *C; /* the CPU reference */
static const kernels *G; /* the CUDA backend */

/* A shape and how the 16-bit attention is called on it. */
typedef struct half_case {
    attn_case shape;
    int ld_pad;   /* ld_out = n_heads * head_dim + ld_pad */
    int fp32_out; /* the forward also writes the fp32 out (else out is NULL) */
    int offset;   /* q, k, v this many elements into their buffers (1: 2-byte aligned) */
} half_case;

/* Every element finite and at most bound in magnitude (a gradient that is exactly zero). */
static void compare_small(const char *what, const float *dev, size_t n, float bound) {
    float *got = download_checked(G, what, dev, n * sizeof(float));
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += !(fabsf(got[i]) <= bound);
    CHECK_MSG(bad == 0, "%s: %zu of %zu elements not within +-%g", what, bad, n, bound);
    free(got);
}

/* The rows of a host out_half (ld_out apart) widened into contiguous fp32 (the caller frees). */
static float *widen_rows(const attn_problem *p, const uint16_t *out_half) {
    const size_t n = p->tokens * p->width;
    float *x = malloc((n ? n : 1) * sizeof(float));
    for (size_t t = 0; t < p->tokens; t++)
        C->from_half(x + t * p->width, out_half + t * p->ld_out, (size_t)p->width, p->fmt);
    return x;
}

/* The backend's out_half (got, a host copy) against the CPU's: no element left holding the
 * poison, every element between the rows still the sentinel, the widened values within
 * REL_TOL (and finite). */
static void check_out_half(const char *what, const attn_problem *p, const uint16_t *got) {
    const uint16_t poison = half_poison(p->fmt);
    size_t unwritten = 0, gap_changed = 0;
    for (size_t t = 0; t < p->tokens; t++)
        for (int j = 0; j < p->ld_out; j++) {
            const uint16_t h = got[t * p->ld_out + j];
            if (j < p->width)
                unwritten += h == poison;
            else
                gap_changed += h != GAP_SENTINEL;
        }
    CHECK_MSG(unwritten == 0, "%s: %zu elements not written", what, unwritten);
    CHECK_MSG(gap_changed == 0, "%s: %zu elements between the rows changed", what, gap_changed);
    float *gpu = widen_rows(p, got), *cpu = widen_rows(p, p->out_half);
    const size_t n = p->tokens * p->width;
    double diff = 0.0, norm = 0.0;
    size_t first_bad = n;
    for (size_t i = 0; i < n; i++) {
        const double e = (double)gpu[i] - cpu[i];
        if (!isfinite(gpu[i]) && first_bad == n) first_bad = i;
        diff += e * e;
        norm += (double)cpu[i] * cpu[i];
    }
    const double rel = norm > 0 ? sqrt(diff / norm) : sqrt(diff);
    char where[48] = "";
    if (first_bad < n) snprintf(where, sizeof where, ", first non-finite at %zu", first_bad);
    CHECK_MSG(first_bad == n && rel < REL_TOL, "%s: n %zu rel err %.3g (tol %g)%s", what, n, rel,
              REL_TOL, where);
    free(gpu);
    free(cpu);
}

/* out_half (got, a host copy) is to_half of the backend's fp32 out, bit for bit. */
static void check_rounds_out(const char *what, const attn_problem *p, const uint16_t *got) {
    float *out = download_checked(G, what, p->d_out, p->q_n * sizeof(float));
    uint16_t *rounded = malloc((size_t)p->width * sizeof(uint16_t));
    size_t differ = 0;
    for (size_t t = 0; t < p->tokens; t++) {
        C->to_half(rounded, out + t * p->width, (size_t)p->width, p->fmt);
        differ += memcmp(rounded, got + t * p->ld_out, (size_t)p->width * sizeof(uint16_t)) != 0;
    }
    CHECK_MSG(differ == 0, "%s: %zu of %zu rows differ from to_half(out)", what, differ, p->tokens);
    free(rounded);
    free(out);
}

/* The backend's out_half: the poison in every row, the sentinel between the rows. */
static void fill_out_half(const attn_problem *p) {
    uint16_t *h = malloc((p->out_half_n ? p->out_half_n : 1) * sizeof(uint16_t));
    for (size_t t = 0; t < p->tokens; t++)
        for (int j = 0; j < p->ld_out; j++)
            h[t * p->ld_out + j] = j < p->width ? half_poison(p->fmt) : GAP_SENTINEL;
    G->upload(p->d_out_half, h, p->out_half_n * sizeof(uint16_t));
    free(h);
}

#ifdef CTUNE_HAVE_CUDA
/* Refills a backend buffer with NaN (each run must write every element again). */
static void poison(float *dev, size_t n) {
    float *h = host_nan(n);
    G->upload(dev, h, n * sizeof(float));
    free(h);
}
#endif

static void attention_case(const half_case *hc, kernels_half_format fmt) {
    const attn_case *tc = &hc->shape;
    const int batch = tc->batch, seq = tc->seq, nh = tc->n_heads, nkv = tc->n_kv, d = tc->d;
    attn_problem p = attn_problem_make(G, tc);
    attn_problem_add_half(C, G, &p, tc, fmt, nh * d + hc->ld_pad, hc->offset);
    const size_t q_n = p.q_n, kv_n = p.kv_n, half_bytes = p.out_half_n * sizeof(uint16_t);
    float *d_out = hc->fp32_out ? p.d_out : NULL;
    char what[192];
    const int len = snprintf(what, sizeof what, "%s b %d seq %d heads %d/%d d %d docs %d ld +%d%s%s: ",
                             fmt_name(fmt), batch, seq, nh, nkv, d, tc->doc_len, hc->ld_pad,
                             hc->fp32_out ? " out" : "", hc->offset ? " unaligned" : "");

    C->attention_fwd_half(fmt, p.out_half, p.ld_out, p.out, p.lse, p.hq, p.hk, p.hv, p.doc, batch, seq,
                          nh, nkv, d, p.scale);
    fill_out_half(&p);
    G->attention_fwd_half(fmt, p.d_out_half, p.ld_out, d_out, p.d_lse, p.d_hq, p.d_hk, p.d_hv, p.d_doc,
                          batch, seq, nh, nkv, d, p.scale);
    snprintf(what + len, sizeof what - len, "out_half");
    uint16_t *first_half = download_checked(G, what, p.d_out_half, half_bytes);
    check_out_half(what, &p, first_half);
    float *first_out = NULL;
    if (d_out) {
        snprintf(what + len, sizeof what - len, "out");
        compare(G, what, p.d_out, p.out, q_n, REL_TOL);
        snprintf(what + len, sizeof what - len, "out_half is to_half(out)");
        check_rounds_out(what, &p, first_half);
        snprintf(what + len, sizeof what - len, "out (first run)");
        first_out = download_checked(G, what, p.d_out, q_n * sizeof(float));
    }
    snprintf(what + len, sizeof what - len, "lse");
    compare(G, what, p.d_lse, p.lse, p.lse_n, REL_TOL);
    G->attention_fwd_half(fmt, p.d_out_half, p.ld_out, d_out, p.d_lse, p.d_hq, p.d_hk, p.d_hv, p.d_doc,
                          batch, seq, nh, nkv, d, p.scale);
    snprintf(what + len, sizeof what - len, "out_half repeats bitwise");
    compare_exact(G, what, p.d_out_half, first_half, half_bytes);
    if (d_out) {
        snprintf(what + len, sizeof what - len, "out repeats bitwise");
        compare_exact(G, what, p.d_out, first_out, q_n * sizeof(float));
    }

#ifdef CTUNE_HAVE_CUDA
    /* 32 query rows per warp (tiles of 128 rows) instead of the table's 16: the same bits. */
    snprintf(what + len, sizeof what - len, "lse (first run)");
    float *first_lse = download_checked(G, what, p.d_lse, p.lse_n * sizeof(float));
    fill_out_half(&p);
    if (d_out) poison(d_out, q_n);
    poison(p.d_lse, p.lse_n);
    cuda_attention_fwd_half_rows(32, fmt, p.d_out_half, p.ld_out, d_out, p.d_lse, p.d_hq, p.d_hk, p.d_hv, p.d_doc,
                                 batch, seq, nh, nkv, d, p.scale);
    snprintf(what + len, sizeof what - len, "out_half with 32 rows per warp: the same bits");
    compare_exact(G, what, p.d_out_half, first_half, half_bytes);
    snprintf(what + len, sizeof what - len, "lse with 32 rows per warp: the same bits");
    compare_exact(G, what, p.d_lse, first_lse, p.lse_n * sizeof(float));
    if (d_out) {
        snprintf(what + len, sizeof what - len, "out with 32 rows per warp: the same bits");
        compare_exact(G, what, p.d_out, first_out, q_n * sizeof(float));
    }
    free(first_lse);
#endif

    attn_problem_upload_cpu_forward(G, &p);
    C->attention_bwd_half(fmt, p.gq, p.gk, p.gv, p.gy, p.hq, p.hk, p.hv, p.out_half, p.ld_out, p.lse,
                          p.doc, batch, seq, nh, nkv, d, p.scale);
    G->attention_bwd_half(fmt, p.d_gq, p.d_gk, p.d_gv, p.d_gy, p.d_hq, p.d_hk, p.d_hv, p.d_out_half,
                          p.ld_out, p.d_lse, p.d_doc, batch, seq, nh, nkv, d, p.scale);
    if (seq > 1) {
        snprintf(what + len, sizeof what - len, "dq");
        compare(G, what, p.d_gq, p.gq, q_n, REL_TOL);
        snprintf(what + len, sizeof what - len, "dk");
        compare(G, what, p.d_gk, p.gk, kv_n, REL_TOL);
    } else {
        /* One key: the softmax is constant, dq and dk are zero up to the rounding of
         * dP - D on both sides, so a relative comparison would compare noise. */
        snprintf(what + len, sizeof what - len, "dq (zero)");
        compare_small(what, p.d_gq, q_n, 1e-4f);
        snprintf(what + len, sizeof what - len, "dk (zero)");
        compare_small(what, p.d_gk, kv_n, 1e-4f);
    }
    snprintf(what + len, sizeof what - len, "dv");
    compare(G, what, p.d_gv, p.gv, kv_n, REL_TOL);

    snprintf(what + len, sizeof what - len, "gradients (first run)");
    float *first_dq = download_checked(G, what, p.d_gq, q_n * sizeof(float));
    float *first_dk = download_checked(G, what, p.d_gk, kv_n * sizeof(float));
    float *first_dv = download_checked(G, what, p.d_gv, kv_n * sizeof(float));
    G->attention_bwd_half(fmt, p.d_gq, p.d_gk, p.d_gv, p.d_gy, p.d_hq, p.d_hk, p.d_hv, p.d_out_half,
                          p.ld_out, p.d_lse, p.d_doc, batch, seq, nh, nkv, d, p.scale);
    snprintf(what + len, sizeof what - len, "dq repeats bitwise");
    compare_exact(G, what, p.d_gq, first_dq, q_n * sizeof(float));
    snprintf(what + len, sizeof what - len, "dk repeats bitwise");
    compare_exact(G, what, p.d_gk, first_dk, kv_n * sizeof(float));
    snprintf(what + len, sizeof what - len, "dv repeats bitwise");
    compare_exact(G, what, p.d_gv, first_dv, kv_n * sizeof(float));

    free(first_half);
    free(first_out);
    free(first_dq);
    free(first_dk);
    free(first_dv);
    attn_problem_free(G, &p);
}

static void test_shapes(void) {
    seed(21);
    /* {batch, seq, n_heads, n_kv, head_dim, doc_len}, ld_out pad, fp32 out, input offset.
     * head_dim 64 and 128 with aligned inputs run attention_mma.cu, the rest the WMMA kernels. */
    const half_case cases[] = {
        {{2, 1, 8, 2, 64, 0}, 0, 1, 0},     /* a single token */
        {{2, 7, 8, 2, 8, 0}, 16, 0, 0},     /* GQA 8/2, head_dim 8 padded to 16 */
        {{2, 7, 4, 4, 64, 3}, 16, 1, 0},    /* MHA, documents */
        {{2, 65, 8, 2, 64, 0}, 3, 0, 0},    /* one row past a 64-row tile */
        {{2, 65, 4, 4, 80, 9}, 0, 0, 0},    /* head_dim 80 (5 fragments) */
        {{2, 130, 8, 2, 128, 0}, 16, 0, 0}, /* three tiles, head_dim 128 */
        {{2, 130, 4, 4, 128, 17}, 0, 1, 0},
        {{2, 130, 4, 4, 128, 17}, 3, 1, 1}, /* unaligned inputs: the WMMA kernels */
        {{1, 33, 2, 1, 30, 5}, 3, 1, 0},    /* head_dim not a multiple of 16 */
        {{1, 70, 2, 1, 256, 0}, 16, 1, 0},  /* the largest head_dim (32-row tiles) */
        {{1, 512, 16, 8, 128, 0}, 0, 1, 0}, /* the tile loops at length */
        {{1, 512, 16, 8, 128, 200}, 16, 0, 0},
        /* head_dim 64 (Llama-3.2-1B's) long enough for the tiles wholly below the diagonal,
         * which skip the mask (forward and dq from seq 80, dk/dv from 128; seq 200 is not a
         * multiple of 64), and the same shape with documents, which never skips it */
        {{2, 200, 8, 2, 64, 0}, 0, 0, 0},
        {{1, 256, 4, 4, 64, 0}, 16, 1, 0},
        {{1, 256, 4, 4, 64, 40}, 3, 1, 0},
        {{1, 256, 4, 4, 64, 40}, 16, 0, 1}, /* unaligned inputs: the WMMA kernels */
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        if (KERNELS_EMULATED && cases[c].shape.seq >= 512) continue; /* more tiles of what 256 runs */
        attention_case(&cases[c], KERNELS_BF16);
        attention_case(&cases[c], KERNELS_FP16);
    }
}

/* A shape no attention kernel takes, an unknown format, and out_half rows closer than
 * n_heads * head_dim are recorded, not run. */
/* attention_cached(_half) against the CPU on fresh random inputs: a cache of n_past tokens
 * and n_new queries; outputs poisoned first, so an unwritten element fails. Both backends
 * keep P in fp32, so the fp32 outputs agree to rounding (1e-5) and the 16-bit ones within an
 * ulp, with out_half's rows ld apart and the gap between them untouched. */
static void cached_case(int n_past, int n_new, int nh, int nkv, int d, kernels_half_format fmt) {
    const size_t width = (size_t)nh * d, kv_width = (size_t)nkv * d, kv_rows = (size_t)(n_past + n_new);
    const size_t q_n = (size_t)n_new * width, kv_n = kv_rows * kv_width;
    const int ld = (int)width + 5;
    const float scale = 1.0f / sqrtf((float)d);
    float *q = host_rand(q_n, -1, 1), *k = host_rand(kv_n, -1, 1), *v = host_rand(kv_n, -1, 1);
    float *ref = malloc(q_n * sizeof(float));
    C->attention_cached(ref, q, k, v, n_new, n_past, nh, nkv, d, scale);
    float *d_q = dev_from(G, q, q_n * sizeof(float)), *d_k = dev_from(G, k, kv_n * sizeof(float));
    float *d_v = dev_from(G, v, kv_n * sizeof(float)), *d_out = dev_nan(G, q_n);
    G->attention_cached(d_out, d_q, d_k, d_v, n_new, n_past, nh, nkv, d, scale);
    char what[96];
    snprintf(what, sizeof what, "attention_cached past %d new %d heads %d/%d d %d", n_past, n_new, nh, nkv, d);
    compare(G, what, d_out, ref, q_n, 1e-5);

    uint16_t *hq = malloc(q_n * 2), *hk = malloc(kv_n * 2), *hv = malloc(kv_n * 2);
    C->to_half(hq, q, q_n, fmt);
    C->to_half(hk, k, kv_n, fmt);
    C->to_half(hv, v, kv_n, fmt);
    uint16_t *ref_half = malloc((size_t)n_new * ld * 2), *init = malloc((size_t)n_new * ld * 2);
    for (size_t e = 0; e < (size_t)n_new * ld; e++) init[e] = (int)(e % ld) < (int)width ? half_poison(fmt) : GAP_SENTINEL;
    memcpy(ref_half, init, (size_t)n_new * ld * 2);
    C->attention_cached_half(fmt, ref_half, ld, ref, hq, hk, hv, n_new, n_past, nh, nkv, d, scale);
    uint16_t *d_hq = dev_from(G, hq, q_n * 2), *d_hk = dev_from(G, hk, kv_n * 2), *d_hv = dev_from(G, hv, kv_n * 2);
    uint16_t *d_out_half = dev_from(G, init, (size_t)n_new * ld * 2);
    G->release(d_out);
    d_out = dev_nan(G, q_n);
    G->attention_cached_half(fmt, d_out_half, ld, d_out, d_hq, d_hk, d_hv, n_new, n_past, nh, nkv, d, scale);
    snprintf(what, sizeof what, "attention_cached_half %s past %d new %d heads %d/%d d %d", fmt_name(fmt), n_past,
             n_new, nh, nkv, d);
    compare(G, what, d_out, ref, q_n, 1e-5);
    compare_half(G, what, d_out_half, ref_half, (size_t)n_new * ld, fmt); /* the gap's sentinels are equal bits */
    check_status(what);
    free(q), free(k), free(v), free(ref), free(hq), free(hk), free(hv), free(ref_half), free(init);
    G->release(d_q), G->release(d_k), G->release(d_v), G->release(d_out);
    G->release(d_hq), G->release(d_hk), G->release(d_hv), G->release(d_out_half);
}

static void test_cached(void) {
    seed(41);
    cached_case(0, 5, 4, 2, 64, KERNELS_BF16);   /* a prompt */
    cached_case(37, 1, 4, 2, 64, KERNELS_FP16);  /* one token, keys not a multiple of the warps */
    cached_case(20, 3, 6, 1, 40, KERNELS_BF16);  /* several, MQA, head_dim not a multiple of 32 */
    cached_case(130, 1, 2, 2, 128, KERNELS_FP16);
    cached_case(9, 2, 2, 1, 256, KERNELS_BF16);  /* the widest head */
    /* what no cached kernel takes: head_dim above 256, out_half rows too close */
    float *x = dev_nan(G, 600);
    uint16_t *h = G->alloc(600 * sizeof(uint16_t));
    G->attention_cached(x, x, x, x, 1, 0, 1, 1, 300, 1.0f);
    ct_error err = {{0}};
    CHECK(kernels_cuda_status(&err) == -1);
    CHECK_CONTAINS(err.msg, "head_dim <= 256");
    G->attention_cached_half(KERNELS_BF16, h, 63, x, h, h, h, 1, 0, 1, 1, 64, 1.0f);
    ct_error err2 = {{0}};
    CHECK(kernels_cuda_status(&err2) == -1);
    CHECK_CONTAINS(err2.msg, "ld_out");
    check_status("cleared after the cached reports");
    G->release(x);
    G->release(h);
}

static void test_errors(void) {
    const size_t n = 2 * 300;
    float *x = dev_nan(G, n), *lse = dev_nan(G, 2);
    uint16_t *h = G->alloc(n * sizeof(uint16_t));
    G->attention_fwd_half(KERNELS_BF16, h, 300, x, lse, h, h, h, NULL, 1, 2, 1, 1, 300, 1.0f);
    ct_error err = {{0}};
    CHECK(kernels_cuda_status(&err) == -1);
    CHECK_CONTAINS(err.msg, "head_dim");
    G->attention_fwd_half((kernels_half_format)7, h, 64, x, lse, h, h, h, NULL, 1, 2, 1, 1, 64, 1.0f);
    ct_error err2 = {{0}};
    CHECK(kernels_cuda_status(&err2) == -1);
    CHECK_CONTAINS(err2.msg, "unknown 16-bit format 7");
    G->attention_fwd_half(KERNELS_FP16, h, 63, NULL, lse, h, h, h, NULL, 1, 2, 1, 1, 64, 1.0f);
    ct_error err3 = {{0}};
    CHECK(kernels_cuda_status(&err3) == -1);
    CHECK_CONTAINS(err3.msg, "ld_out 63");
    G->attention_bwd_half(KERNELS_BF16, x, x, x, x, h, h, h, h, 63, lse, NULL, 1, 2, 1, 1, 64, 1.0f);
    ct_error err4 = {{0}};
    CHECK(kernels_cuda_status(&err4) == -1);
    CHECK_CONTAINS(err4.msg, "ld_out 63");
    check_status("cleared after the reports");
    G->release(x);
    G->release(lse);
    G->release(h);
}

#ifdef CTUNE_HAVE_CUDA

/* The backward under three dS budgets: the table's (one chunk), one kv head's worth of dS
 * (one chunk per kv head) and 0 (dq recomputes dS). */
static void ds_budget_case(const attn_case *tc, kernels_half_format fmt) {
    const int batch = tc->batch, seq = tc->seq, nh = tc->n_heads, nkv = tc->n_kv, d = tc->d;
    attn_problem p = attn_problem_make(G, tc);
    attn_problem_add_half(C, G, &p, tc, fmt, nh * d, 0);
    const size_t q_n = p.q_n, kv_n = p.kv_n;
    C->attention_fwd_half(fmt, p.out_half, p.ld_out, p.out, p.lse, p.hq, p.hk, p.hv, p.doc, batch, seq, nh, nkv, d,
                          p.scale);
    attn_problem_upload_cpu_forward(G, &p);
    C->attention_bwd_half(fmt, p.gq, p.gk, p.gv, p.gy, p.hq, p.hk, p.hv, p.out_half, p.ld_out, p.lse, p.doc, batch,
                          seq, nh, nkv, d, p.scale);
    const size_t tiles = (size_t)(seq + 63) / 64;
    const size_t per_kv = (size_t)batch * (size_t)(nh / nkv) * tiles * (tiles + 1) / 2 * 64 * 64 * 2;
    const size_t budgets[3] = {(size_t)1 << 30, per_kv, 0};
    const char *names[3] = {"one chunk", "a chunk per kv head", "dq recomputes dS"};
    float *got[3][3] = {{NULL}};
    char what[192];
    for (int b = 0; b < 3; b++) {
        poison(p.d_gq, q_n), poison(p.d_gk, kv_n), poison(p.d_gv, kv_n);
        cuda_attention_bwd_half_budget(budgets[b], fmt, p.d_gq, p.d_gk, p.d_gv, p.d_gy, p.d_hq, p.d_hk, p.d_hv,
                                       p.d_out_half, p.ld_out, p.d_lse, p.d_doc, batch, seq, nh, nkv, d, p.scale);
        const int len = snprintf(what, sizeof what, "%s b %d seq %d heads %d/%d d %d docs %d, %s: ", fmt_name(fmt),
                                 batch, seq, nh, nkv, d, tc->doc_len, names[b]);
        snprintf(what + len, sizeof what - len, "dq");
        compare(G, what, p.d_gq, p.gq, q_n, REL_TOL);
        snprintf(what + len, sizeof what - len, "dk");
        compare(G, what, p.d_gk, p.gk, kv_n, REL_TOL);
        snprintf(what + len, sizeof what - len, "dv");
        compare(G, what, p.d_gv, p.gv, kv_n, REL_TOL);
        got[b][0] = download_checked(G, what, p.d_gq, q_n * sizeof(float));
        got[b][1] = download_checked(G, what, p.d_gk, kv_n * sizeof(float));
        got[b][2] = download_checked(G, what, p.d_gv, kv_n * sizeof(float));
    }
    for (int b = 1; b < 3; b++) {
        const char *which[3] = {"dq", "dk", "dv"};
        for (int t = b == 2 ? 1 : 0; t < 3; t++) {
            const size_t n = t == 0 ? q_n : kv_n;
            CHECK_MSG(memcmp(got[0][t], got[b][t], n * sizeof(float)) == 0,
                      "%s b %d seq %d heads %d/%d d %d docs %d: %s differs between %s and %s", fmt_name(fmt), batch,
                      seq, nh, nkv, d, tc->doc_len, which[t], names[0], names[b]);
        }
    }
    for (int b = 0; b < 3; b++)
        for (int t = 0; t < 3; t++) free(got[b][t]);
    attn_problem_free(G, &p);
}

static void test_ds_budgets(void) {
    seed(22);
    const attn_case cases[] = {
        {2, 200, 8, 2, 64, 0},    /* GQA 4 per kv head, a ragged last tile, unmasked tiles */
        {2, 65, 8, 2, 64, 9},     /* documents */
        {1, 512, 16, 8, 128, 0},  /* head_dim 128, 8 tiles */
        {2, 130, 4, 4, 128, 17},  /* MHA with documents */
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        if (KERNELS_EMULATED && cases[c].seq >= 512) continue; /* as in test_shapes */
        ds_budget_case(&cases[c], KERNELS_BF16);
        ds_budget_case(&cases[c], KERNELS_FP16);
    }
    check_status("after the dS budgets");
}
#endif

int main(void) {
    if (!open_backends(&C, &G)) return 77;
    CHECK(G != NULL && G->attention_fwd_half != NULL && G->attention_bwd_half != NULL);
    test_shapes();
#ifdef CTUNE_HAVE_CUDA
    test_ds_budgets();
#endif
    test_errors();
    test_cached();
    check_status("end of tests");
    return check_summary("test_kernels_cuda_attention");
}
