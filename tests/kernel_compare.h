/* kernel_compare: what the GPU kernel tests (tests/test_kernels_cuda*.c) share to check a
 * backend against the CPU reference: a seeded RNG for inputs, host buffers (random,
 * NaN-poisoned, copies), backend buffers made from them, the CUDA backend's sticky error
 * state, comparisons of a backend buffer with a host reference (fp32 by norm, 16-bit by units
 * in the last place, or bytes), opening the backends (or skipping), and random attention
 * problems (fp32, and the 16-bit inputs of the mixed-precision attention).
 *
 * It holds no backend: the table under test is passed in (`backend`), so the same checks run
 * against any table (the shadow backend included). Failures are counted CHECKs (check.h).
 * Include it from one test file per executable: its state is per translation unit. */
#ifndef CTUNE_TEST_KERNEL_COMPARE_H
#define CTUNE_TEST_KERNEL_COMPARE_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_status.h"
#include "kernels/kernels.h"
#include "tests/check.h"
#include "tests/half_bits.h"

/* Built against the host emulator (tests/emu: CMake's <test>_emu executables), where a GPU's
 * millisecond of work takes seconds, a test keeps every case that visits a code path but
 * skips repetitions of it (more blocks of the same shape, more spot checks). */
#ifdef CTUNE_CUDA_EMU
#define KERNELS_EMULATED 1
#else
#define KERNELS_EMULATED 0
#endif

/* The one piece of mutable state: the xorshift64 RNG of the including test file. Every test
 * function calls seed() first, so its inputs depend on its own seed only, not on which tests
 * ran before it. */
static uint64_t rng_state;

static inline void seed(uint64_t s) { rng_state = s * 0x9E3779B97F4A7C15ull + 1; }
static inline uint64_t next_u64(void) {
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return rng_state;
}
/* Uniform in [lo, hi) from the top 24 bits (every value exact in fp32). */
static inline float urand(float lo, float hi) {
    return lo + (hi - lo) * (float)((next_u64() >> 40) * 0x1p-24);
}

/* Host buffers (the caller frees); n == 0 still gives a valid pointer. */
static inline float *host_rand(size_t n, float lo, float hi) {
    float *x = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = urand(lo, hi);
    return x;
}
static inline float *host_nan(size_t n) {
    float *x = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = NAN;
    return x;
}
static inline float *host_copy(const float *x, size_t n) {
    float *y = malloc((n ? n : 1) * sizeof(float));
    memcpy(y, x, n * sizeof(float));
    return y;
}

/* Backend buffers (the caller releases them with backend->release). */
static inline void *dev_from(const kernels *backend, const void *host, size_t bytes) {
    void *d = backend->alloc(bytes);
    if (d && bytes) backend->upload(d, host, bytes);
    return d;
}
/* Outputs start as NaN: an element the op under test fails to write fails the comparison. */
static inline float *dev_nan(const kernels *backend, size_t n) {
    float *h = host_nan(n), *d = dev_from(backend, h, n * sizeof(float));
    free(h);
    return d;
}

/* The CUDA backend's error state must be clean after every op (always 0 without CUDA). */
static inline void check_status(const char *what) {
    ct_error err = {{0}};
    int rc = kernels_cuda_status(&err);
    CHECK_MSG(rc == 0, "%s: %s", what, err.msg);
}

/* A host copy of a backend buffer (the caller frees), then the status check for `what`. */
static inline void *download_checked(const kernels *backend, const char *what, const void *dev,
                                     size_t bytes) {
    void *host = malloc(bytes ? bytes : 1);
    backend->download(host, dev, bytes);
    check_status(what);
    return host;
}

/* ||dev - ref|| / ||ref|| < tol and every element of dev finite (NaN anywhere fails); with
 * ref all zero, ||dev|| < tol. */
static inline void compare(const kernels *backend, const char *what, const float *dev,
                           const float *ref, size_t n, double tol) {
    float *got = download_checked(backend, what, dev, n * sizeof(float));
    double diff = 0.0, norm = 0.0;
    size_t first_bad = n;
    for (size_t i = 0; i < n; i++) {
        double e = (double)got[i] - ref[i];
        if (!isfinite(got[i]) && first_bad == n) first_bad = i;
        diff += e * e;
        norm += (double)ref[i] * ref[i];
    }
    double rel = norm > 0 ? sqrt(diff / norm) : sqrt(diff);
    char where[48] = "";
    if (first_bad < n) snprintf(where, sizeof where, ", first non-finite at %zu", first_bad);
    CHECK_MSG(first_bad == n && rel < tol, "%s: n %zu rel err %.3g (tol %g)%s", what, n, rel, tol,
              where);
    free(got);
}

/* The backend buffer holds exactly the bytes of ref (the CPU's result, or an earlier run's). */
static inline void compare_exact(const kernels *backend, const char *what, const void *dev,
                                 const void *ref, size_t bytes) {
    unsigned char *got = download_checked(backend, what, dev, bytes);
    const unsigned char *want = ref;
    size_t differ = 0, first = bytes;
    for (size_t i = 0; i < bytes; i++)
        if (got[i] != want[i] && differ++ == 0) first = i;
    CHECK_MSG(differ == 0, "%s: %zu of %zu bytes differ from the expected ones, first at byte %zu",
              what, differ, bytes, first);
    free(got);
}

/* Distance in units in the last place between two 16-bit patterns of one format, counted
 * through zero (bf16 and fp16 are both sign-magnitude, so the magnitude bits order the
 * values): +0 and -0 are 0 apart, the largest finite value and inf 1. NaN is 0 from NaN and
 * far from everything else. */
static inline long half_ulps(uint16_t a, uint16_t b, kernels_half_format fmt) {
    if (half_is_nan(a, fmt) || half_is_nan(b, fmt))
        return half_is_nan(a, fmt) && half_is_nan(b, fmt) ? 0 : 1L << 20;
    long ka = a & 0x8000u ? -(long)(a & 0x7FFFu) : (long)a;
    long kb = b & 0x8000u ? -(long)(b & 0x7FFFu) : (long)b;
    return ka > kb ? ka - kb : kb - ka;
}

/* A backend's 16-bit output against the CPU's roundings of (nearly) the same fp32 values:
 * every element within 1 ulp (two fp32 values closer than a 16-bit ulp round at most one
 * step apart) and at most 1% of them (at least one) not identical. An unwritten element
 * keeps its NaN poison and fails. */
static inline void compare_half(const kernels *backend, const char *what, const uint16_t *dev,
                                const uint16_t *ref, size_t n, kernels_half_format fmt) {
    uint16_t *got = download_checked(backend, what, dev, n * sizeof(uint16_t));
    size_t differ = 0, worst_at = 0;
    long worst = 0;
    for (size_t i = 0; i < n; i++) {
        long d = half_ulps(got[i], ref[i], fmt);
        differ += d != 0;
        if (d > worst) worst = d, worst_at = i;
    }
    CHECK_MSG(worst <= 1 && differ <= (n + 99) / 100,
              "%s: n %zu, %zu not identical, worst %ld ulp at %zu (got %04x, cpu %04x)", what, n,
              differ, worst, worst_at, n ? got[worst_at] : 0u, n ? ref[worst_at] : 0u);
    free(got);
}

static inline const char *fmt_name(kernels_half_format fmt) {
    return fmt == KERNELS_BF16 ? "bf16" : "fp16";
}

/* The CPU reference and the CUDA backend. False, after printing "SKIPPED: <why>", where no
 * GPU is usable: the test's main then returns 77, which ctest counts as skipped. */
static inline bool open_backends(const kernels **cpu, const kernels **cuda) {
    ct_error err = {{0}};
    *cpu = kernels_cpu();
    if (kernels_cuda(cuda, &err) != 0) {
        printf("SKIPPED: %s\n", err.msg);
        return false;
    }
    CHECK_MSG(*cuda != NULL && strcmp((*cuda)->name, "cuda") == 0, "kernels_cuda gave %s",
              *cuda ? (*cuda)->name : "NULL");
    return true;
}

/* ------------------------------------------------------------------ attention problems */
typedef struct attn_case {
    int batch, seq, n_heads, n_kv, d;
    int doc_len; /* 0: no doc_ids; else documents of random length 1..doc_len */
} attn_case;

/* One attention problem on the host and on the backend: inputs q, k, v, doc (NULL without
 * documents) and the upstream gradient gy, drawn in that order; forward outputs (out, lse)
 * and gradients (gq, gk, gv) NaN on both sides. attn_problem_add_half adds the 16-bit part
 * (zero otherwise). */
typedef struct attn_problem {
    size_t q_n, kv_n, lse_n;
    float scale; /* head_dim^-0.5 */
    float *q, *k, *v, *gy, *out, *lse, *gq, *gk, *gv;
    int32_t *doc;
    float *d_q, *d_k, *d_v, *d_gy, *d_out, *d_lse, *d_gq, *d_gk, *d_gv;
    int32_t *d_doc;
    /* 16-bit: q, k, v rounded to fmt (hq, hk, hv; on the backend `offset` elements into their
     * buffers), and out_half, tokens rows of `width` values ld_out apart (out_half_n elements) */
    kernels_half_format fmt;
    size_t tokens, out_half_n;
    int width, ld_out, offset;
    uint16_t *hq, *hk, *hv, *out_half;
    uint16_t *d_hq, *d_hk, *d_hv, *d_out_half;
} attn_problem;

static inline attn_problem attn_problem_make(const kernels *backend, const attn_case *tc) {
    attn_problem p = {0};
    const size_t tokens = (size_t)tc->batch * tc->seq;
    p.q_n = tokens * tc->n_heads * tc->d;
    p.kv_n = tokens * tc->n_kv * tc->d;
    p.lse_n = (size_t)tc->batch * tc->n_heads * tc->seq;
    p.scale = 1.0f / sqrtf((float)tc->d);
    p.q = host_rand(p.q_n, -2, 2), p.k = host_rand(p.kv_n, -2, 2), p.v = host_rand(p.kv_n, -1, 1);
    if (tc->doc_len) {
        p.doc = malloc(tokens * sizeof(int32_t));
        for (int b = 0; b < tc->batch; b++) {
            int id = 0, left = 0;
            for (int s = 0; s < tc->seq; s++) {
                if (left == 0) id++, left = 1 + (int)(next_u64() % (uint64_t)tc->doc_len);
                p.doc[(size_t)b * tc->seq + s] = id;
                left--;
            }
        }
        p.d_doc = dev_from(backend, p.doc, tokens * sizeof(int32_t));
    }
    p.gy = host_rand(p.q_n, -1, 1);
    p.out = host_nan(p.q_n), p.lse = host_nan(p.lse_n);
    p.gq = host_nan(p.q_n), p.gk = host_nan(p.kv_n), p.gv = host_nan(p.kv_n);
    p.d_q = dev_from(backend, p.q, p.q_n * sizeof(float));
    p.d_k = dev_from(backend, p.k, p.kv_n * sizeof(float));
    p.d_v = dev_from(backend, p.v, p.kv_n * sizeof(float));
    p.d_gy = dev_from(backend, p.gy, p.q_n * sizeof(float));
    p.d_out = dev_nan(backend, p.q_n), p.d_lse = dev_nan(backend, p.lse_n);
    p.d_gq = dev_nan(backend, p.q_n), p.d_gk = dev_nan(backend, p.kv_n);
    p.d_gv = dev_nan(backend, p.kv_n);
    return p;
}

/* A NaN of the format with a payload no conversion produces (CUDA returns the canonical NaN,
 * the CPU's failure fill is 0x7FC0 / 0x7E00): an element still holding it was never written. */
static inline uint16_t half_poison(kernels_half_format fmt) {
    return fmt == KERNELS_BF16 ? 0x7FC1u : 0x7E01u;
}

/* n 16-bit values at `offset` elements into a fresh backend buffer of n + offset (the view;
 * release it with backend->release(view - offset)). */
static inline uint16_t *dev_half_at(const kernels *backend, const uint16_t *host, size_t n,
                                    int offset) {
    uint16_t *base = backend->alloc((n + (size_t)offset) * sizeof(uint16_t));
    if (!base) return NULL;
    if (n) backend->upload(base + offset, host, n * sizeof(uint16_t));
    return base + offset;
}

/* The 16-bit inputs of attention_fwd_half / attention_bwd_half for a problem of shape tc:
 * q, k, v rounded to fmt on the host by the CPU backend's to_half (the reference rounding,
 * so both backends see the same values) and uploaded `offset` elements into their backend
 * buffers (offset 1 leaves them 2-byte aligned only); out_half (rows ld_out apart) the
 * poison NaN on the host, between the rows too, and unset (the caller fills it) on the
 * backend. */
static inline void attn_problem_add_half(const kernels *cpu, const kernels *backend, attn_problem *p,
                                         const attn_case *tc, kernels_half_format fmt, int ld_out,
                                         int offset) {
    p->fmt = fmt;
    p->tokens = (size_t)tc->batch * tc->seq;
    p->width = tc->n_heads * tc->d;
    p->ld_out = ld_out;
    p->offset = offset;
    p->out_half_n = p->tokens * (size_t)ld_out;
    p->hq = malloc((p->q_n ? p->q_n : 1) * sizeof(uint16_t));
    p->hk = malloc((p->kv_n ? p->kv_n : 1) * sizeof(uint16_t));
    p->hv = malloc((p->kv_n ? p->kv_n : 1) * sizeof(uint16_t));
    cpu->to_half(p->hq, p->q, p->q_n, fmt);
    cpu->to_half(p->hk, p->k, p->kv_n, fmt);
    cpu->to_half(p->hv, p->v, p->kv_n, fmt);
    p->d_hq = dev_half_at(backend, p->hq, p->q_n, offset);
    p->d_hk = dev_half_at(backend, p->hk, p->kv_n, offset);
    p->d_hv = dev_half_at(backend, p->hv, p->kv_n, offset);
    p->out_half = malloc((p->out_half_n ? p->out_half_n : 1) * sizeof(uint16_t));
    for (size_t i = 0; i < p->out_half_n; i++) p->out_half[i] = half_poison(fmt);
    p->d_out_half = backend->alloc((p->out_half_n ? p->out_half_n : 1) * sizeof(uint16_t));
}

/* The backward runs on both sides from the CPU's forward outputs, so it is compared alone. */
static inline void attn_problem_upload_cpu_forward(const kernels *backend, attn_problem *p) {
    backend->upload(p->d_out, p->out, p->q_n * sizeof(float));
    backend->upload(p->d_lse, p->lse, p->lse_n * sizeof(float));
    if (p->d_out_half) backend->upload(p->d_out_half, p->out_half, p->out_half_n * sizeof(uint16_t));
}

static inline void attn_problem_free(const kernels *backend, attn_problem *p) {
    void *dev[] = {p->d_doc, p->d_q, p->d_k, p->d_v, p->d_gy, p->d_out, p->d_lse,
                   p->d_gq, p->d_gk, p->d_gv, p->d_out_half,
                   p->d_hq ? p->d_hq - p->offset : NULL, p->d_hk ? p->d_hk - p->offset : NULL,
                   p->d_hv ? p->d_hv - p->offset : NULL};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i]) backend->release(dev[i]);
    void *host[] = {p->q, p->k, p->v, p->gy, p->out, p->lse, p->gq, p->gk, p->gv,
                    p->hq, p->hk, p->hv, p->out_half};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    free(p->doc);
    *p = (attn_problem){0};
}

#endif
