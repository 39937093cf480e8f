/* Attention with 16-bit matrix-product operands, the CPU reference (kernels.h:
 * attention_fwd_half / attention_bwd_half).
 *
 * q, k, v arrive as 16-bit values; the reference widens them (exactly) and runs the fp32
 * attention of attention.c. In the backward it rounds dout to fmt as to_half does (nearest,
 * ties to even), and D = rowsum(dout * out) takes the widened 16-bit output the forward
 * kept, as a bf16/fp16 flash attention does. Everything after that is fp32, including P and
 * dS, which a GPU kernel additionally rounds where they enter a product; that second
 * rounding is the only difference the contract allows between the backends (relative 1e-2).
 * The forward's out_half is the rounding of the fp32 output; lse stays fp32.
 *
 * The fp32 copies are malloc'd per call (five tensors at most, the size of the inputs): the
 * table's functions cannot report a failure, so where malloc fails the outputs are filled
 * with NaN (out_half with the format's NaN), which the loss and grad-norm checks above the
 * table see at once, rather than left stale. */
#include <math.h>
#include <stdlib.h>

#include "kernels/cpu/cpu_ops.h"

/* Rounded through a small buffer of 16-bit values, so a call needs one fp32 copy per
 * tensor and no 16-bit copy of the whole tensor. */
#define ROUND_CHUNK 8192

/* An fp32 copy of x (n elements) rounded to fmt, or NULL when malloc fails. */
static float *rounded_copy(const float *x, size_t n, kernels_half_format fmt) {
    float *copy = malloc((n ? n : 1) * sizeof(float));
    if (!copy) return NULL;
    uint16_t bits[ROUND_CHUNK];
    for (size_t i = 0; i < n; i += ROUND_CHUNK) {
        const size_t len = n - i < ROUND_CHUNK ? n - i : ROUND_CHUNK;
        cpu_to_half(bits, x + i, len, fmt);
        cpu_from_half(copy + i, bits, len, fmt);
    }
    return copy;
}

float *cpu_widened_copy(const uint16_t *x, size_t rows, size_t cols, size_t ld, kernels_half_format fmt) {
    float *copy = malloc((rows * cols > 0 ? rows * cols : 1) * sizeof(float));
    if (!copy) return NULL;
    if (ld == cols) cpu_from_half(copy, x, rows * cols, fmt);
    else
        for (size_t r = 0; r < rows; r++) cpu_from_half(copy + r * cols, x + r * ld, cols, fmt);
    return copy;
}

static void fill_nan(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = NAN;
}

void cpu_attention_half_output(kernels_half_format fmt, uint16_t *out_half, int ld_out, float *o, bool computed,
                               size_t rows, size_t width) {
    if (!computed && o) fill_nan(o, rows * width);
    if (o) {
        cpu_to_half_2d(fmt, out_half, ld_out, o, (int)width, (int)rows, (int)width, 1.0f);
    } else { /* the format's quiet NaN, so the GEMM reading it sees the failure */
        const uint16_t nan_bits = fmt == KERNELS_BF16 ? 0x7FC0u : 0x7E00u;
        for (size_t t = 0; t < rows; t++)
            for (size_t j = 0; j < width; j++) out_half[t * (size_t)ld_out + j] = nan_bits;
    }
}

void cpu_attention_fwd_half(kernels_half_format fmt, uint16_t *out_half, int ld_out, float *out, float *lse,
                            const uint16_t *q, const uint16_t *k, const uint16_t *v, const int32_t *doc_ids,
                            int batch, int seq, int n_heads, int n_kv_heads, int head_dim, float scale) {
    const size_t tokens = (size_t)batch * seq, width = (size_t)n_heads * head_dim;
    const size_t kv_width = (size_t)n_kv_heads * head_dim, q_n = tokens * width;
    float *wq = cpu_widened_copy(q, tokens, width, width, fmt);
    float *wk = cpu_widened_copy(k, tokens, kv_width, kv_width, fmt);
    float *wv = cpu_widened_copy(v, tokens, kv_width, kv_width, fmt);
    float *o = out ? out : malloc((q_n ? q_n : 1) * sizeof(float));
    const bool computed = wq && wk && wv && o;
    if (computed) cpu_attention_fwd(o, lse, wq, wk, wv, doc_ids, batch, seq, n_heads, n_kv_heads, head_dim, scale);
    else fill_nan(lse, tokens * n_heads);
    cpu_attention_half_output(fmt, out_half, ld_out, o, computed, tokens, width);
    if (o != out) free(o);
    free(wq);
    free(wk);
    free(wv);
}

void cpu_attention_bwd_half(kernels_half_format fmt, float *dq, float *dk, float *dv, const float *dout,
                            const uint16_t *q, const uint16_t *k, const uint16_t *v, const uint16_t *out_half,
                            int ld_out, const float *lse, const int32_t *doc_ids, int batch, int seq, int n_heads,
                            int n_kv_heads, int head_dim, float scale) {
    const size_t tokens = (size_t)batch * seq, width = (size_t)n_heads * head_dim;
    const size_t kv_width = (size_t)n_kv_heads * head_dim, q_n = tokens * width, kv_n = tokens * kv_width;
    float *rdout = rounded_copy(dout, q_n, fmt), *wq = cpu_widened_copy(q, tokens, width, width, fmt);
    float *wk = cpu_widened_copy(k, tokens, kv_width, kv_width, fmt);
    float *wv = cpu_widened_copy(v, tokens, kv_width, kv_width, fmt);
    float *wout = cpu_widened_copy(out_half, tokens, width, (size_t)ld_out, fmt);
    if (rdout && wq && wk && wv && wout) {
        cpu_attention_bwd(dq, dk, dv, rdout, wq, wk, wv, wout, lse, doc_ids, batch, seq, n_heads, n_kv_heads,
                          head_dim, scale);
    } else {
        fill_nan(dq, q_n);
        fill_nan(dk, kv_n);
        fill_nan(dv, kv_n);
    }
    free(rdout);
    free(wq);
    free(wk);
    free(wv);
    free(wout);
}

/* The backward's five fp32 copies (rounded dout, widened q, k, v and output) are the most
 * either direction allocates; the fp32 attention allocates nothing. */
size_t cpu_attention_scratch_bytes(bool half, int batch, int seq, int n_heads, int n_kv_heads, int head_dim) {
    if (!half || batch <= 0 || seq <= 0 || n_heads <= 0 || n_kv_heads <= 0 || head_dim <= 0) return 0;
    const size_t tokens = (size_t)batch * seq;
    return tokens * (3 * (size_t)n_heads + 2 * (size_t)n_kv_heads) * (size_t)head_dim * sizeof(float);
}
