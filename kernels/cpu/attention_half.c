/* Attention with 16-bit matrix-product operands, the CPU reference (kernels.h:
 * attention_fwd_half / attention_bwd_half).
 *
 * The reference rounds what a tensor-core kernel reads in 16 bits from memory, q, k, v (and
 * dout in the backward), to fmt exactly as to_half does (nearest, ties to even), and runs
 * the fp32 attention of attention.c on the rounded copies. Everything after the rounding is
 * fp32, including P and dS, which a GPU kernel additionally rounds where they enter a
 * product; that second rounding is the only difference the contract allows between the
 * backends (relative 1e-2). out and lse are not rounded: they are fp32 outputs of the
 * forward, and D = rowsum(dout * out) takes the rounded dout with the fp32 out.
 *
 * The rounded copies are malloc'd per call (four tensors at most, the size of the inputs):
 * the table's functions cannot report a failure, so where malloc fails the outputs are
 * filled with NaN, which the loss and grad-norm checks above the table see at once,
 * rather than left stale. */
#include <math.h>
#include <stdlib.h>

#include "kernels/cpu/cpu_ops.h"

/* Rounded through a small buffer of 16-bit values, so a call needs one fp32 copy per
 * tensor and no 16-bit copy of the whole tensor. */
#define ROUND_CHUNK 8192

static void round_to_half(float *dst, const float *src, size_t n, kernels_half_format fmt) {
    uint16_t bits[ROUND_CHUNK];
    for (size_t i = 0; i < n; i += ROUND_CHUNK) {
        const size_t len = n - i < ROUND_CHUNK ? n - i : ROUND_CHUNK;
        cpu_to_half(bits, src + i, len, fmt);
        cpu_from_half(dst + i, bits, len, fmt);
    }
}

/* A rounded copy of x (n elements), or NULL when malloc fails. */
static float *rounded_copy(const float *x, size_t n, kernels_half_format fmt) {
    float *copy = malloc((n ? n : 1) * sizeof(float));
    if (copy) round_to_half(copy, x, n, fmt);
    return copy;
}

static void fill_nan(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = NAN;
}

void cpu_attention_fwd_half(kernels_half_format fmt, float *out, float *lse, const float *q,
                            const float *k, const float *v, const int32_t *doc_ids, int batch,
                            int seq, int n_heads, int n_kv_heads, int head_dim, float scale) {
    const size_t tokens = (size_t)batch * seq;
    const size_t q_n = tokens * n_heads * head_dim, kv_n = tokens * n_kv_heads * head_dim;
    float *rq = rounded_copy(q, q_n, fmt), *rk = rounded_copy(k, kv_n, fmt),
          *rv = rounded_copy(v, kv_n, fmt);
    if (rq && rk && rv) {
        cpu_attention_fwd(out, lse, rq, rk, rv, doc_ids, batch, seq, n_heads, n_kv_heads,
                          head_dim, scale);
    } else {
        fill_nan(out, q_n);
        fill_nan(lse, tokens * n_heads);
    }
    free(rq);
    free(rk);
    free(rv);
}

void cpu_attention_bwd_half(kernels_half_format fmt, float *dq, float *dk, float *dv,
                            const float *dout, const float *q, const float *k, const float *v,
                            const float *out, const float *lse, const int32_t *doc_ids, int batch,
                            int seq, int n_heads, int n_kv_heads, int head_dim, float scale) {
    const size_t tokens = (size_t)batch * seq;
    const size_t q_n = tokens * n_heads * head_dim, kv_n = tokens * n_kv_heads * head_dim;
    float *rdout = rounded_copy(dout, q_n, fmt), *rq = rounded_copy(q, q_n, fmt),
          *rk = rounded_copy(k, kv_n, fmt), *rv = rounded_copy(v, kv_n, fmt);
    if (rdout && rq && rk && rv) {
        cpu_attention_bwd(dq, dk, dv, rdout, rq, rk, rv, out, lse, doc_ids, batch, seq, n_heads,
                          n_kv_heads, head_dim, scale);
    } else {
        fill_nan(dq, q_n);
        fill_nan(dk, kv_n);
        fill_nan(dv, kv_n);
    }
    free(rdout);
    free(rq);
    free(rk);
    free(rv);
}
