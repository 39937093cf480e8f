/* The CUDA tensor-core attention (kernels/cuda/attention_half.cu) against the CPU reference
 * attention_fwd_half / attention_bwd_half (label gpu; exit 77 = skipped where no GPU is
 * usable).
 *
 * Bound: ||cuda - cpu|| / ||cpu|| < 1e-2 for out, lse, dq, dk, dv, in bf16 and fp16 (the
 * kernels.h contract: the CPU reference keeps P and dS in fp32, the GPU rounds them to the
 * format where they enter a product; everything else is rounded alike). Shapes: seq 1, 7,
 * 65, 130 (ragged tiles), head_dim 8, 30, 64, 80, 128, 256 (padding to 16, both tile sizes),
 * GQA 8/2 and MHA, batch 2, with and without document masks, and seq 512 x head_dim 128 x
 * 16/8 heads for the tile loops. Outputs are poisoned with NaN first (an element the kernel
 * fails to write stays NaN and fails); the backward runs from the CPU's out and lse, so it
 * is compared alone (with one token dq and dk are zero, so there they must be within
 * 1e-4 of it); forward and backward run twice must give the same bits (no atomics);
 * the backend's sticky error state must be clean after every op, and report a shape that no
 * attention kernel runs (head_dim 300) and an unknown format. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/kernel_compare.h"

#define REL_TOL 1e-2

static const kernels *C; /* the CPU reference */
static const kernels *G; /* the CUDA backend */

/* Every element finite and at most bound in magnitude (a gradient that is exactly zero). */
static void compare_small(const char *what, const float *dev, size_t n, float bound) {
    float *got = download_checked(G, what, dev, n * sizeof(float));
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += !(fabsf(got[i]) <= bound);
    CHECK_MSG(bad == 0, "%s: %zu of %zu elements not within +-%g", what, bad, n, bound);
    free(got);
}

static void attention_case(const attn_case *tc, kernels_half_format fmt) {
    const int batch = tc->batch, seq = tc->seq, nh = tc->n_heads, nkv = tc->n_kv, d = tc->d;
    attn_problem p = attn_problem_make(G, tc);
    const size_t q_n = p.q_n, kv_n = p.kv_n;
    char what[160];
    const int len = snprintf(what, sizeof what, "%s b %d seq %d heads %d/%d d %d docs %d: ",
                             fmt_name(fmt), batch, seq, nh, nkv, d, tc->doc_len);

    C->attention_fwd_half(fmt, p.out, p.lse, p.q, p.k, p.v, p.doc, batch, seq, nh, nkv, d,
                          p.scale);
    G->attention_fwd_half(fmt, p.d_out, p.d_lse, p.d_q, p.d_k, p.d_v, p.d_doc, batch, seq, nh,
                          nkv, d, p.scale);
    snprintf(what + len, sizeof what - len, "out");
    compare(G, what, p.d_out, p.out, q_n, REL_TOL);
    snprintf(what + len, sizeof what - len, "lse");
    compare(G, what, p.d_lse, p.lse, p.lse_n, REL_TOL);
    snprintf(what + len, sizeof what - len, "out (first run)");
    float *first_out = download_checked(G, what, p.d_out, q_n * sizeof(float));
    G->attention_fwd_half(fmt, p.d_out, p.d_lse, p.d_q, p.d_k, p.d_v, p.d_doc, batch, seq, nh,
                          nkv, d, p.scale);
    snprintf(what + len, sizeof what - len, "out repeats bitwise");
    compare_exact(G, what, p.d_out, first_out, q_n * sizeof(float));

    attn_problem_upload_cpu_forward(G, &p);
    C->attention_bwd_half(fmt, p.gq, p.gk, p.gv, p.gy, p.q, p.k, p.v, p.out, p.lse, p.doc, batch,
                          seq, nh, nkv, d, p.scale);
    G->attention_bwd_half(fmt, p.d_gq, p.d_gk, p.d_gv, p.d_gy, p.d_q, p.d_k, p.d_v, p.d_out,
                          p.d_lse, p.d_doc, batch, seq, nh, nkv, d, p.scale);
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
    G->attention_bwd_half(fmt, p.d_gq, p.d_gk, p.d_gv, p.d_gy, p.d_q, p.d_k, p.d_v, p.d_out,
                          p.d_lse, p.d_doc, batch, seq, nh, nkv, d, p.scale);
    snprintf(what + len, sizeof what - len, "dq repeats bitwise");
    compare_exact(G, what, p.d_gq, first_dq, q_n * sizeof(float));
    snprintf(what + len, sizeof what - len, "dk repeats bitwise");
    compare_exact(G, what, p.d_gk, first_dk, kv_n * sizeof(float));
    snprintf(what + len, sizeof what - len, "dv repeats bitwise");
    compare_exact(G, what, p.d_gv, first_dv, kv_n * sizeof(float));

    free(first_out);
    free(first_dq);
    free(first_dk);
    free(first_dv);
    attn_problem_free(G, &p);
}

static void test_shapes(void) {
    seed(21);
    const attn_case cases[] = {
        {2, 1, 8, 2, 64, 0},    /* a single token */
        {2, 7, 8, 2, 8, 0},     /* GQA 8/2, head_dim 8 padded to 16 */
        {2, 7, 4, 4, 64, 3},    /* MHA, documents */
        {2, 65, 8, 2, 64, 0},   /* one row past a 64-row tile */
        {2, 65, 4, 4, 80, 9},   /* head_dim 80 (5 fragments) */
        {2, 130, 8, 2, 128, 0}, /* three tiles, head_dim 128 */
        {2, 130, 4, 4, 128, 17},
        {1, 33, 2, 1, 30, 5},   /* head_dim not a multiple of 16 */
        {1, 70, 2, 1, 256, 0},  /* the largest head_dim (32-row tiles) */
        {1, 512, 16, 8, 128, 0}, /* the tile loops at length */
        {1, 512, 16, 8, 128, 200},
        /* head_dim 64 (Llama-3.2-1B's) long enough for the tiles wholly below the diagonal,
         * which skip the mask (forward and dq from seq 80, dk/dv from 128; seq 200 is not a
         * multiple of 64), and the same shape with documents, which never skips it */
        {2, 200, 8, 2, 64, 0},
        {1, 256, 4, 4, 64, 0},
        {1, 256, 4, 4, 64, 40},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        attention_case(&cases[c], KERNELS_BF16);
        attention_case(&cases[c], KERNELS_FP16);
    }
}

/* A shape no attention kernel takes, and an unknown format, are recorded, not run. */
static void test_errors(void) {
    const size_t n = 2 * 300;
    float *x = dev_nan(G, n), *lse = dev_nan(G, 2);
    G->attention_fwd_half(KERNELS_BF16, x, lse, x, x, x, NULL, 1, 2, 1, 1, 300, 1.0f);
    ct_error err = {{0}};
    CHECK(kernels_cuda_status(&err) == -1);
    CHECK_CONTAINS(err.msg, "head_dim");
    G->attention_fwd_half((kernels_half_format)7, x, lse, x, x, x, NULL, 1, 2, 1, 1, 64, 1.0f);
    ct_error err2 = {{0}};
    CHECK(kernels_cuda_status(&err2) == -1);
    CHECK_CONTAINS(err2.msg, "unknown 16-bit format 7");
    check_status("cleared after the reports");
    G->release(x);
    G->release(lse);
}

int main(void) {
    if (!open_backends(&C, &G)) return 77;
    CHECK(G != NULL && G->attention_fwd_half != NULL && G->attention_bwd_half != NULL);
    test_shapes();
    test_errors();
    check_status("end of tests");
    return check_summary("test_kernels_cuda_attention");
}
