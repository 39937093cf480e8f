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

#include "kernels/cuda/cuda_status.h"
#include "kernels/kernels.h"
#include "tests/check.h"

#define REL_TOL 1e-2

static const kernels *C; /* the CPU reference */
static const kernels *G; /* the CUDA backend */
static uint64_t rng_state;

static void seed(uint64_t s) { rng_state = s * 0x9E3779B97F4A7C15ull + 1; }
static uint64_t next_u64(void) {
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return rng_state;
}
static float urand(float lo, float hi) { return lo + (hi - lo) * (float)((next_u64() >> 40) * 0x1p-24); }
static float *host_rand(size_t n, float lo, float hi) {
    float *x = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = urand(lo, hi);
    return x;
}
static float *host_nan(size_t n) {
    float *x = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = NAN;
    return x;
}
static void *dev_from(const void *host, size_t bytes) {
    void *d = G->alloc(bytes);
    if (d && bytes) G->upload(d, host, bytes);
    return d;
}
static float *dev_nan(size_t n) {
    float *h = host_nan(n), *d = dev_from(h, n * sizeof(float));
    free(h);
    return d;
}
static const char *fmt_name(kernels_half_format fmt) { return fmt == KERNELS_BF16 ? "bf16" : "fp16"; }

static void check_status(const char *what) {
    ct_error err = {{0}};
    int rc = kernels_cuda_status(&err);
    CHECK_MSG(rc == 0, "%s: %s", what, err.msg);
}

/* ||dev - ref|| / ||ref|| < REL_TOL, every element finite. */
static void compare(const char *what, const float *dev, const float *ref, size_t n) {
    float *got = malloc((n ? n : 1) * sizeof(float));
    G->download(got, dev, n * sizeof(float));
    check_status(what);
    double diff = 0.0, norm = 0.0;
    size_t first_bad = n;
    for (size_t i = 0; i < n; i++) {
        double e = (double)got[i] - ref[i];
        if (!isfinite(got[i]) && first_bad == n) first_bad = i;
        diff += e * e;
        norm += (double)ref[i] * ref[i];
    }
    double rel = norm > 0 ? sqrt(diff / norm) : sqrt(diff);
    CHECK_MSG(first_bad == n && rel < REL_TOL, "%s: n %zu rel err %.3g (tol %g)%s%zu", what, n, rel,
              REL_TOL, first_bad < n ? ", first non-finite at " : "", first_bad < n ? first_bad : 0);
    free(got);
}

/* Every element finite and at most bound in magnitude (a gradient that is exactly zero). */
static void compare_small(const char *what, const float *dev, size_t n, float bound) {
    float *got = malloc((n ? n : 1) * sizeof(float));
    G->download(got, dev, n * sizeof(float));
    check_status(what);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += !(fabsf(got[i]) <= bound);
    CHECK_MSG(bad == 0, "%s: %zu of %zu elements not within +-%g", what, bad, n, bound);
    free(got);
}

/* The device buffer holds the same bits as a download taken earlier. */
static void compare_repeat(const char *what, const float *dev, const float *first, size_t n) {
    float *got = malloc((n ? n : 1) * sizeof(float));
    G->download(got, dev, n * sizeof(float));
    check_status(what);
    CHECK_MSG(memcmp(got, first, n * sizeof(float)) == 0, "%s: a second run changed the bits", what);
    free(got);
}

static float *download(const float *dev, size_t n) {
    float *h = malloc((n ? n : 1) * sizeof(float));
    G->download(h, dev, n * sizeof(float));
    return h;
}

typedef struct attn_case {
    int batch, seq, n_heads, n_kv, d;
    int doc_len; /* 0: no doc_ids; else documents of random length 1..doc_len */
} attn_case;

static void attention_case(const attn_case *tc, kernels_half_format fmt) {
    const int batch = tc->batch, seq = tc->seq, nh = tc->n_heads, nkv = tc->n_kv, d = tc->d;
    const size_t tokens = (size_t)batch * seq, q_n = tokens * nh * d, kv_n = tokens * nkv * d;
    const size_t lse_n = (size_t)batch * nh * seq;
    const float scale = 1.0f / sqrtf((float)d);
    float *q = host_rand(q_n, -2, 2), *k = host_rand(kv_n, -2, 2), *v = host_rand(kv_n, -1, 1);
    int32_t *doc = NULL, *d_doc = NULL;
    if (tc->doc_len) {
        doc = malloc(tokens * sizeof(int32_t));
        for (int b = 0; b < batch; b++) {
            int id = 0, left = 0;
            for (int s = 0; s < seq; s++) {
                if (left == 0) id++, left = 1 + (int)(next_u64() % (uint64_t)tc->doc_len);
                doc[(size_t)b * seq + s] = id;
                left--;
            }
        }
        d_doc = dev_from(doc, tokens * sizeof(int32_t));
    }
    char what[160];
    const int len = snprintf(what, sizeof what, "%s b %d seq %d heads %d/%d d %d docs %d: ",
                             fmt_name(fmt), batch, seq, nh, nkv, d, tc->doc_len);

    float *out = host_nan(q_n), *lse = host_nan(lse_n);
    float *d_q = dev_from(q, q_n * sizeof(float)), *d_k = dev_from(k, kv_n * sizeof(float));
    float *d_v = dev_from(v, kv_n * sizeof(float)), *d_out = dev_nan(q_n), *d_lse = dev_nan(lse_n);
    C->attention_fwd_half(fmt, out, lse, q, k, v, doc, batch, seq, nh, nkv, d, scale);
    G->attention_fwd_half(fmt, d_out, d_lse, d_q, d_k, d_v, d_doc, batch, seq, nh, nkv, d, scale);
    snprintf(what + len, sizeof what - len, "out");
    compare(what, d_out, out, q_n);
    snprintf(what + len, sizeof what - len, "lse");
    compare(what, d_lse, lse, lse_n);
    float *first_out = download(d_out, q_n);
    G->attention_fwd_half(fmt, d_out, d_lse, d_q, d_k, d_v, d_doc, batch, seq, nh, nkv, d, scale);
    snprintf(what + len, sizeof what - len, "out repeats bitwise");
    compare_repeat(what, d_out, first_out, q_n);

    float *gy = host_rand(q_n, -1, 1), *gq = host_nan(q_n), *gk = host_nan(kv_n),
          *gv = host_nan(kv_n);
    float *d_gy = dev_from(gy, q_n * sizeof(float)), *d_gq = dev_nan(q_n), *d_gk = dev_nan(kv_n),
          *d_gv = dev_nan(kv_n);
    G->upload(d_out, out, q_n * sizeof(float));
    G->upload(d_lse, lse, lse_n * sizeof(float));
    C->attention_bwd_half(fmt, gq, gk, gv, gy, q, k, v, out, lse, doc, batch, seq, nh, nkv, d,
                          scale);
    G->attention_bwd_half(fmt, d_gq, d_gk, d_gv, d_gy, d_q, d_k, d_v, d_out, d_lse, d_doc, batch,
                          seq, nh, nkv, d, scale);
    if (seq > 1) {
        snprintf(what + len, sizeof what - len, "dq");
        compare(what, d_gq, gq, q_n);
        snprintf(what + len, sizeof what - len, "dk");
        compare(what, d_gk, gk, kv_n);
    } else {
        /* One key: the softmax is constant, dq and dk are zero up to the rounding of
         * dP - D on both sides, so a relative comparison would compare noise. */
        snprintf(what + len, sizeof what - len, "dq (zero)");
        compare_small(what, d_gq, q_n, 1e-4f);
        snprintf(what + len, sizeof what - len, "dk (zero)");
        compare_small(what, d_gk, kv_n, 1e-4f);
    }
    snprintf(what + len, sizeof what - len, "dv");
    compare(what, d_gv, gv, kv_n);

    float *first_dq = download(d_gq, q_n), *first_dk = download(d_gk, kv_n);
    float *first_dv = download(d_gv, kv_n);
    G->attention_bwd_half(fmt, d_gq, d_gk, d_gv, d_gy, d_q, d_k, d_v, d_out, d_lse, d_doc, batch,
                          seq, nh, nkv, d, scale);
    snprintf(what + len, sizeof what - len, "dq repeats bitwise");
    compare_repeat(what, d_gq, first_dq, q_n);
    snprintf(what + len, sizeof what - len, "dk repeats bitwise");
    compare_repeat(what, d_gk, first_dk, kv_n);
    snprintf(what + len, sizeof what - len, "dv repeats bitwise");
    compare_repeat(what, d_gv, first_dv, kv_n);

    void *dev[] = {d_doc, d_q, d_k, d_v, d_out, d_lse, d_gy, d_gq, d_gk, d_gv};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i]) G->release(dev[i]);
    float *host[] = {q, k, v, out, lse, gy, gq, gk, gv, first_out, first_dq, first_dk, first_dv};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    free(doc);
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
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        attention_case(&cases[c], KERNELS_BF16);
        attention_case(&cases[c], KERNELS_FP16);
    }
}

/* A shape no attention kernel takes, and an unknown format, are recorded, not run. */
static void test_errors(void) {
    const size_t n = 2 * 300;
    float *x = dev_nan(n), *lse = dev_nan(2);
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
    ct_error err = {{0}};
    C = kernels_cpu();
    if (kernels_cuda(&G, &err) != 0) {
        printf("SKIPPED: %s\n", err.msg);
        return 77;
    }
    CHECK(G != NULL && G->attention_fwd_half != NULL && G->attention_bwd_half != NULL);
    test_shapes();
    test_errors();
    check_status("end of tests");
    return check_summary("test_kernels_cuda_attention");
}
