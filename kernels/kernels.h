/* kernels: the one backend-neutral table of compute operations the model calls.
 *
 * Every pointer argument is memory of the backend (host memory for the CPU backend,
 * device memory for CUDA). All floating point tensors are fp32, row-major, contiguous
 * unless a leading dimension (row stride, in elements) is given.
 *
 * Conventions every backend follows:
 *  - activation gradients (dx, dq, ...) are WRITTEN (overwritten);
 *  - parameter gradients (dweight, dtable) are ACCUMULATED (+=), so micro-batches add up;
 *  - token layout is [n_tokens, features] with n_tokens = batch * seq, token t = b*seq + s.
 * The CPU backend (kernels/cpu) is the reference; every other backend must agree with it.
 * This module owns no global state: a backend is a const table. */
#ifndef CTUNE_KERNELS_H
#define CTUNE_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "train/error.h"

/* 16-bit storage formats of mixed precision (kernels.to_half, from_half, gemm_half). */
typedef enum { KERNELS_BF16 = 1, KERNELS_FP16 = 2 } kernels_half_format;

/* One cast of kernels.to_half_2d_many: to_half_2d's arguments (pointers into backend memory). */
typedef struct kernels_half_block {
    uint16_t *out;
    const float *x;
    int ld_out, ld_x, rows, cols;
    float scale;
} kernels_half_block;

/* One AdamW update's settings (kernels.adamw). Hyper-parameters are doubles, as torch forms
 * its scalar factors (1 - b2, lr / bias1) in double from the recipe's decimals before
 * rounding each once to fp32; bias1 = 1 - b1^step and bias2 = 1 - b2^step. */
typedef struct kernels_adamw_step {
    double lr, beta1, beta2, eps, weight_decay, bias1, bias2;
    /* Every gradient is multiplied by this in fp32 before use (unscaling a loss scale and
     * clipping): the bits of scale(grad, grad_scale) then the update; the gradient buffer is
     * left as it was. 1 multiplies nothing. */
    float grad_scale;
    /* NULL, or the parameter's 16-bit copy: half[i] = to_half(param[i]) after the update,
     * in half_format (mixed precision's GEMM operands, without a separate cast pass). */
    uint16_t *half;
    kernels_half_format half_format;
    /* NULL, or backend memory holding the factor to use instead of grad_scale (clip_factor
     * wrote it, so the host never waited for the norm). A NaN factor, from either, means the
     * step is skipped: the call writes nothing. */
    const float *grad_scale_at;
} kernels_adamw_step;

/* The most dora_magnitude_grad may allocate on a GPU: a double per column per chunk of at least
 * 64 rows. */
#define DORA_GRAD_SCRATCH_BYTES(rows, cols) ((((size_t)(rows) + 63) / 64) * (size_t)(cols) * sizeof(double))

/* Blocks of gradient sums of squares that kernels.clip_factor adds on their own before
 * adding the groups' totals in order (so a GPU can add the groups side by side). */
#define KERNELS_NORM_GROUP ((size_t)256)

typedef struct kernels {
    const char *name; /* "cpu", "cuda" */
    bool host_memory; /* its buffers are host RAM (as the collectives' staging scratch is) */

    /* ---- memory ---- */
    void *(*alloc)(size_t bytes); /* zero-filled; NULL on failure */
    void (*release)(void *ptr);
    void (*zero)(void *ptr, size_t bytes);
    void (*copy)(void *dst, const void *src, size_t bytes);           /* backend -> backend */
    void (*upload)(void *dst, const void *host_src, size_t bytes);    /* host -> backend */
    void (*download)(void *host_dst, const void *src, size_t bytes);  /* backend -> host */
    /* Bytes this backend can still allocate, and its capacity: a GPU's free and total
     * memory; for the CPU the host's available and total RAM, within the cgroup (v2) memory
     * limit when one is set. 0, or -1 where it cannot tell (the values are then 0). */
    int (*memory_info)(size_t *free_bytes, size_t *total_bytes);
    /* Bytes of this backend's memory that the buffers alloc handed out hold now, and the most
     * they held at once since the process started (a run's peak). A GPU adds what its
     * kernels' own stream-ordered scratch holds now, and the most it held at once, as if that
     * came at the same moment (so its peak is an upper bound); the CPU kernels' temporary
     * host buffers are not counted. The counters are the backend's, process-wide. NULL where
     * the backend cannot tell. */
    void (*memory_held)(size_t *now, size_t *peak);
    /* The most memory one attention call allocates for itself and releases before it returns
     * (the backward is the larger: staged or widened copies, D, a GPU's stored dS), for the
     * given shape, fp32 (half false) or 16-bit operands: memory the run's estimate must leave
     * free beside its activations. NULL where it allocates none. */
    size_t (*attention_scratch_bytes)(bool half, int batch, int seq, int n_heads, int n_kv_heads, int head_dim);
    /* Memory the backend allocates once for itself at its first 16-bit product and keeps (a
     * GPU's cuBLASLt workspace): part of a mixed-precision run's kernel scratch. 0 where none. */
    size_t half_workspace_bytes;

    /* ---- dense algebra ----
     * C[m,n] = alpha * op(A) op(B) + beta * C; op(A) is [m,k], op(B) is [k,n].
     * A is stored [m,k] (trans_a=false) or [k,m] (trans_a=true), row stride lda; same for B.
     * A Linear layer y = x W^T is gemm(false, true, T, out, in, 1, x, in, W, in, 0, y, out). */
    void (*gemm)(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
                 int lda, const float *b, int ldb, float beta, float *c, int ldc);

    /* ---- element-wise ---- */
    void (*add)(float *out, const float *a, const float *b, size_t n); /* out = a + b (out may alias) */
    void (*axpy)(float *y, float alpha, const float *x, size_t n);     /* y += alpha * x */
    void (*scale)(float *x, float alpha, size_t n);                    /* x *= alpha */
    /* Inverted dropout with a counter-based mask, identical on every backend:
     * u_i = splitmix64(seed ^ splitmix64(offset + i)); keep_i = (u_i >> 40) * 2^-24 >= p;
     * out_i = keep_i ? x_i / (1 - p) : 0. The same call on a gradient is its backward.
     * splitmix64(z): z += 0x9E3779B97F4A7C15; z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
     * z = (z ^ (z >> 27)) * 0x94D049BB133111EB; return z ^ (z >> 31). */
    void (*dropout)(float *out, const float *x, float p, uint64_t seed, uint64_t offset, size_t n);
    /* y += dropout(x): the bits of dropout into a buffer then axpy(y, 1, buffer), in one pass
     * (LoRA's backward adds the masked adapter gradient to dx with it). */
    void (*dropout_add)(float *y, const float *x, float p, uint64_t seed, uint64_t offset, size_t n);
    /* out_half = to_half(dropout(x)) in one pass, the fp32 values never stored (LoRA's
     * dropped adapter input in mixed precision, read only by GEMMs). */
    void (*dropout_half)(kernels_half_format fmt, uint16_t *out_half, const float *x, float p, uint64_t seed,
                         uint64_t offset, size_t n);
    /* Sum of squares in double, result returned to the host (a reduction for grad norms). */
    double (*sum_squares)(const float *x, size_t n);
    /* The same per block, with one round trip for all: host_sums[b] = sum_squares(x + b*block,
     * min(block, n - b*block)) for every b < ceil(n / block), bit for bit what sum_squares
     * gives on that block (gradient norms over millions of blocks without a sync each). */
    void (*sum_squares_blocks)(const float *x, size_t n, size_t block, double *host_sums);
    /* The same sums left in backend memory (sums[ceil(n / block)]), without a wait. */
    void (*sum_squares_blocks_to)(const float *x, size_t n, size_t block, double *sums);
    /* Gradient clipping decided without the host: from the block sums (backend memory, which
     * this call may overwrite), with group g's total t_g = sums[gG] + sums[gG+1] + ... in
     * order (G = KERNELS_NORM_GROUP, the last group short), writes (backend memory)
     *   *norm = sqrt(t_0 + t_1 + ...) / loss_scale   (added in order, double), and
     *   *factor = (float)(c / loss_scale), c = max_norm / (*norm + 1e-6) when that is below 1
     *   and max_norm > 0, else 1 — clip_rule_coefficient (kernels/clip_rule.h) — or NaN when *norm
     *   is not finite (AdamW's grad_scale_at then skips the step).
     * The same double arithmetic as the host's, so the same bits as optim/zero.c's host path. */
    void (*clip_factor)(double *sums, size_t n_blocks, double max_norm, double loss_scale, double *norm,
                        float *factor);

    /* ---- embedding: out[t,:] = table[ids[t],:]; backward accumulates rows into dtable ----
     * Every element of dtable adds its tokens' contributions in token order. order is NULL or
     * the token indices sorted by (ids[t], t) (backend memory): with it a backend can give
     * each distinct id its own threads; the result is the same bits either way. */
    void (*embedding_fwd)(float *out, const float *table, const int32_t *ids, int n_tokens, int hidden);
    void (*embedding_bwd)(float *dtable, const float *dout, const int32_t *ids, const int32_t *order,
                          int n_tokens, int hidden);

    /* ---- RMSNorm as in transformers' LlamaRMSNorm (fp32):
     * rstd[r] = 1/sqrt(mean(x[r,:]^2) + eps); out = weight * (x * rstd).
     * Backward writes dx (add_to_dx: adds to it, the bits of writing a buffer and axpy with
     * alpha 1: a residual stream's gradient takes it in the same pass) and accumulates
     * dweight (dweight may be NULL for a frozen weight). */
    void (*rmsnorm_fwd)(float *out, float *rstd, const float *x, const float *weight, int n_rows,
                        int dim, float eps);
    void (*rmsnorm_bwd)(float *dx, float *dweight, const float *dout, const float *x,
                        const float *weight, const float *rstd, int n_rows, int dim, bool add_to_dx);

    /* ---- RoPE, rotate_half convention (transformers' Llama), in place.
     * x is [n_tokens, n_heads * head_dim]; half = head_dim/2; for j < half:
     *   angle = positions[t] * inv_freq[j]; c = cos(angle), s = sin(angle) (computed in fp32)
     *   x'[j] = x[j]*c - x[j+half]*s;  x'[j+half] = x[j+half]*c + x[j]*s.
     * Backward applies the inverse rotation (angle -> -angle) to the gradient in place. */
    void (*rope_fwd)(float *x, const int32_t *positions, const float *inv_freq, int n_tokens,
                     int n_heads, int head_dim);
    void (*rope_bwd)(float *dx, const int32_t *positions, const float *inv_freq, int n_tokens,
                     int n_heads, int head_dim);

    /* ---- SwiGLU: out = silu(gate) * up, silu(g) = g / (1 + exp(-g)); backward writes dgate, dup ---- */
    void (*swiglu_fwd)(float *out, const float *gate, const float *up, size_t n);
    void (*swiglu_bwd)(float *dgate, float *dup, const float *dout, const float *gate,
                       const float *up, size_t n);

    /* ---- causal grouped-query attention ----
     * q, out: [batch*seq, n_heads*head_dim]; k, v: [batch*seq, n_kv_heads*head_dim];
     * query head h uses kv head h / (n_heads / n_kv_heads) (transformers' repeat_kv).
     * Query token s of sequence b attends to keys s' <= s of the same sequence, and, when
     * doc_ids is not NULL, only to those with doc_ids[b*seq+s'] == doc_ids[b*seq+s]
     * (packed documents never see each other). scores = q.k * scale, softmax in fp32.
     * lse: [batch, n_heads, seq] log-sum-exp of the scaled scores, kept for the backward.
     * Scores are never materialised beyond a tile per thread (flash-attention style).
     * Backward writes dq, dk, dv. */
    void (*attention_fwd)(float *out, float *lse, const float *q, const float *k, const float *v,
                          const int32_t *doc_ids, int batch, int seq, int n_heads, int n_kv_heads,
                          int head_dim, float scale);
    void (*attention_bwd)(float *dq, float *dk, float *dv, const float *dout, const float *q,
                          const float *k, const float *v, const float *out, const float *lse,
                          const int32_t *doc_ids, int batch, int seq, int n_heads, int n_kv_heads,
                          int head_dim, float scale);
    /* ---- attention of new tokens against a KV cache (generation) ----
     * One sequence: q [n_new, n_heads*head_dim] holds the queries of the tokens at positions
     * n_past .. n_past+n_new-1; k, v [n_past+n_new, n_kv_heads*head_dim] every key and value
     * up to the last of them (the cache, the new tokens' rows last). Query i sees the keys
     * j <= n_past + i; heads and scale as attention_fwd. Writes out [n_new, n_heads*head_dim];
     * no lse (no backward). Scores, softmax and sums are fp32 on every backend, so a token's
     * output agrees with attention_fwd's over the whole sequence to rounding. */
    void (*attention_cached)(float *out, const float *q, const float *k, const float *v, int n_new, int n_past,
                             int n_heads, int n_kv_heads, int head_dim, float scale);

    /* ---- cross-entropy over a chunk of rows, fused forward + backward ----
     * logits [n_rows, vocab]; for each row r with targets[r] >= 0:
     *   loss[r] = logsumexp(logits[r,:]) - logits[r, targets[r]]
     *   and, when grad_scale != 0, logits[r,:] is overwritten with
     *   (softmax(logits[r,:]) - onehot(targets[r])) * grad_scale;
     * rows with targets[r] < 0 get loss 0 and (when grad_scale != 0) a zero gradient row.
     * With grad_scale == 0 the logits are left unchanged. loss is backend memory [n_rows]. */
    void (*cross_entropy)(float *logits, float *loss, const int32_t *targets, int n_rows,
                          int vocab, float grad_scale);

    /* ---- 16-bit tensors for bf16-mixed / fp16-mixed precision ----
     * A 16-bit tensor holds uint16_t bit patterns of fmt: KERNELS_BF16 (bfloat16, 8 exponent
     * and 7 mantissa bits) or KERNELS_FP16 (IEEE 754 binary16).
     * to_half rounds to nearest, ties to even, as torch's x.to(torch.bfloat16 / torch.float16):
     * fp16 overflows to +-inf (what fp16 loss scaling detects) and underflows gradually through
     * its subnormals; infinities stay infinite; NaN stays a NaN (its payload bits may differ
     * between backends). from_half is exact. out and x never alias. */
    void (*to_half)(uint16_t *out, const float *x, size_t n, kernels_half_format fmt);
    void (*from_half)(float *out, const uint16_t *x, size_t n, kernels_half_format fmt);
    /* embedding_fwd from a table kept only in 16 bits (rows ld apart, ld >= hidden):
     * out[t,:] = from_half(table[ids[t]*ld + 0..hidden)), exact. A frozen embedding table in
     * mixed precision, tied or not, has no fp32 value (train/model.c: half_only). */
    void (*embedding_fwd_half)(kernels_half_format fmt, float *out, const uint16_t *table, int ld,
                               const int32_t *ids, int n_tokens, int hidden);
    /* to_half on a [rows, cols] block with row strides ld_out and ld_x (>= cols), each value
     * first multiplied by scale in fp32 (scale 1 changes no bit):
     * out[i*ld_out + j] = to_half(scale * x[i*ld_x + j]); out's other elements are untouched.
     * Places a GEMM operand beside another inside one 16-bit matrix (a LoRA adapter's u next
     * to its Linear's input, A and scaling * B beside the base weight: model_graph.c). */
    void (*to_half_2d)(kernels_half_format fmt, uint16_t *out, int ld_out, const float *x, int ld_x,
                       int rows, int cols, float scale);
    /* to_half_2d on each of n blocks (an array in backend memory; their outputs must not
     * overlap), the same bits, in one pass where a GPU runs it: the many small casts of a
     * step's refresh (every LoRA adapter's A and scaling * B inside its base weight's copy,
     * 2 x 7 per layer) cost one launch instead of hundreds. */
    void (*to_half_2d_many)(kernels_half_format fmt, const kernels_half_block *blocks, int n);
    /* Reads back an NF4-quantized [rows, cols] weight (kernels/nf4.h: codes packed two to a
     * byte in bitsandbytes' order, absmax per NF4_BLOCK values of the flattened weight) into a
     * 16-bit matrix with row stride ld_out (>= cols): for e = i*cols + j,
     * out[i*ld_out + j] = to_half(NF4_VALUES[code e] * absmax[e / NF4_BLOCK]), one fp32
     * multiply then to_half's rounding; out's other elements are untouched. How a 4-bit
     * LoRA base (QLoRA) reaches the GEMMs, one layer at a time (train/model.c). */
    void (*nf4_to_half_2d)(kernels_half_format fmt, uint16_t *out, int ld_out, const uint8_t *codes,
                           const float *absmax, int rows, int cols);
    /* gemm (same layout, transposes, leading dimensions and beta == 0 rule) with A and B in
     * 16-bit format fmt and C in fp32. A product of two 16-bit values is exact in fp32 and the
     * sums are fp32 (tensor cores on a GPU), so backends differ only in summation order. */
    void (*gemm_half)(kernels_half_format fmt, bool trans_a, bool trans_b, int m, int n, int k,
                      float alpha, const uint16_t *a, int lda, const uint16_t *b, int ldb, float beta,
                      float *c, int ldc);
    /* c = op(a) op(b) + r, r fp32 [m, n] with c's row stride ldc (not overlapping c): the bits
     * of gemm_half (alpha 1, beta 0) then add(c, c, r), in one pass over c (a GPU adds r in
     * the GEMM's epilogue). A Linear's output joins the residual stream with it. */
    void (*gemm_half_add)(kernels_half_format fmt, bool trans_a, bool trans_b, int m, int n, int k,
                          const uint16_t *a, int lda, const uint16_t *b, int ldb, const float *r, float *c,
                          int ldc);
    /* c_half = to_half(op(a) op(b)), rows ldc (>= n) apart, the columns between untouched:
     * gemm_half (alpha 1, beta 0) then to_half, with the fp32 result never stored (a GPU
     * rounds in the GEMM's epilogue). For a Linear whose output is read only as a 16-bit
     * operand (SwiGLU's gate and up, attention's v). */
    void (*gemm_half_to_half)(kernels_half_format fmt, bool trans_a, bool trans_b, int m, int n, int k,
                              const uint16_t *a, int lda, const uint16_t *b, int ldb, uint16_t *c_half,
                              int ldc);

    /* ---- producers of 16-bit GEMM operands (mixed precision) ----
     * Each writes in one pass what its fp32 op followed by to_half would write, so a tensor
     * read only as a GEMM operand never round-trips through fp32 memory.
     * rmsnorm_fwd_half: rmsnorm_fwd's rstd and out_half = to_half(out), out_half's rows
     * ld_half (>= dim) apart (the columns between are untouched); out (the fp32 values,
     * contiguous) is written too unless NULL. */
    void (*rmsnorm_fwd_half)(kernels_half_format fmt, uint16_t *out_half, int ld_half, float *out, float *rstd,
                             const float *x, const float *weight, int n_rows, int dim, float eps);
    /* rmsnorm_bwd_half: rmsnorm_bwd (dx written or added to, dweight accumulated), and
     * dx_half = to_half(the dx it leaves), rows ld_half (>= dim) apart, the columns between
     * untouched: a residual stream's gradient, rounded for the next Linear's backward in the
     * pass that adds to it. */
    void (*rmsnorm_bwd_half)(kernels_half_format fmt, uint16_t *dx_half, int ld_half, float *dx, float *dweight,
                             const float *dout, const float *x, const float *weight, const float *rstd, int n_rows,
                             int dim, bool add_to_dx);
    /* rope_fwd_half / rope_bwd_half: rope_fwd's (rope_bwd's) rotation of x [n_tokens,
     * n_heads*head_dim] (x itself unchanged, contiguous), written only as out_half =
     * to_half(the rotated values), rows ld_half (>= n_heads*head_dim) apart, the columns
     * between untouched (room for an adapter's du beside a gradient). */
    void (*rope_fwd_half)(kernels_half_format fmt, uint16_t *out_half, int ld_half, const float *x,
                          const int32_t *positions, const float *inv_freq, int n_tokens, int n_heads, int head_dim);
    void (*rope_bwd_half)(kernels_half_format fmt, uint16_t *out_half, int ld_half, const float *dx,
                          const int32_t *positions, const float *inv_freq, int n_tokens, int n_heads, int head_dim);
    /* SwiGLU on 16-bit inputs, as under torch.autocast, where gate and up are the bf16/fp16
     * outputs of their projections, over [rows, cols]: gate_half = to_half(gate), up_half =
     * to_half(up) (kept for the backward), then with g, u their widened values, out = silu(g)
     * * u in swiglu_fwd's fp32 arithmetic, out_half = to_half(out), its rows ld_half (>= cols)
     * apart (the columns between are untouched: room for the next GEMM's other operand);
     * out is written unless NULL. gate, up, out, gate_half, up_half are contiguous. With gate
     * and up both NULL, gate_half and up_half are the inputs, already rounded (their
     * projections wrote them with gemm_half_to_half): the same out for the same roundings. */
    void (*swiglu_fwd_half)(kernels_half_format fmt, uint16_t *out_half, int ld_half, float *out,
                            uint16_t *gate_half, uint16_t *up_half, const float *gate,
                            const float *up, int rows, int cols);
    /* swiglu_bwd's arithmetic on the widened gate_half and up_half, dgate and dup written
     * only as their 16-bit roundings (they are read only as GEMM operands), rows ld_half
     * (>= cols) apart, the columns between untouched; dout, gate_half, up_half contiguous. */
    void (*swiglu_bwd_half)(kernels_half_format fmt, uint16_t *dgate_half, uint16_t *dup_half, int ld_half,
                            const float *dout, const uint16_t *gate_half, const uint16_t *up_half,
                            int rows, int cols);
    /* cross_entropy with the gradient in 16 bits: loss exactly as cross_entropy gives it;
     * when grad_scale != 0, dlogits_half = to_half(the gradient cross_entropy would write
     * into logits); with grad_scale == 0 dlogits_half is not written. logits are only read. */
    void (*cross_entropy_half)(kernels_half_format fmt, uint16_t *dlogits_half, const float *logits,
                               float *loss, const int32_t *targets, int n_rows, int vocab,
                               float grad_scale);

    /* ---- attention with 16-bit matrix-product operands (mixed precision; tensor cores) ----
     * The attention of attention_fwd / attention_bwd (same layouts, heads, masks and lse) as
     * bf16/fp16 flash attention computes it. q, k, v are 16-bit tensors of fmt (the model
     * rounds them once, after RoPE, and keeps only those for the backward); every product of
     * the score and output matrices takes 16-bit operands and sums in fp32; the softmax
     * statistics (max, sum, lse) are fp32.
     * Forward: out_half = to_half(the fp32 output), its rows ld_out (>= n_heads*head_dim)
     * apart, the columns between untouched (room for the o projection's adapter u); the fp32
     * output is also written to out (contiguous) unless out is NULL.
     * Backward: dout (fp32) is rounded to fmt; D = rowsum(rounded dout * widened out_half)
     * in fp32 (the output the forward kept, rows ld_out apart); writes fp32 dq, dk, dv.
     * The probabilities P and the score gradients dS are rounded to fmt where they enter a
     * product (a backend may round P relative to a per-tile running maximum). The CPU
     * reference is the fp32 attention on the widened q, k, v (rounded dout, widened out for
     * D) with P and dS exact, so backends agree to the rounding of P and dS:
     * ||gpu - cpu|| / ||cpu|| < 1e-2. */
    void (*attention_fwd_half)(kernels_half_format fmt, uint16_t *out_half, int ld_out, float *out, float *lse,
                               const uint16_t *q, const uint16_t *k, const uint16_t *v,
                               const int32_t *doc_ids, int batch, int seq, int n_heads, int n_kv_heads,
                               int head_dim, float scale);
    void (*attention_bwd_half)(kernels_half_format fmt, float *dq, float *dk, float *dv, const float *dout,
                               const uint16_t *q, const uint16_t *k, const uint16_t *v,
                               const uint16_t *out_half, int ld_out, const float *lse, const int32_t *doc_ids,
                               int batch, int seq, int n_heads, int n_kv_heads, int head_dim, float scale);
    /* attention_cached on 16-bit q, k, v of fmt (a mixed-precision model's cache), widened
     * exactly, every product and P in fp32: out_half = to_half(the fp32 output), rows ld_out
     * (>= n_heads*head_dim) apart; the fp32 output also in out (contiguous) unless NULL. */
    void (*attention_cached_half)(kernels_half_format fmt, uint16_t *out_half, int ld_out, float *out,
                                  const uint16_t *q, const uint16_t *k, const uint16_t *v, int n_new, int n_past,
                                  int n_heads, int n_kv_heads, int head_dim, float scale);

    /* ---- DoRA (weight-decomposed LoRA, peft's use_dora: train/model_graph.c) ----
     * dora_norm_scale: for the combined weight [rows, cols] (W + scaling * B A, formed by the
     * caller), norm[i] = ||combined[i, :]||_2, the squares summed in double and the root
     * rounded to fp32 once, and scale[i] = magnitude[i] / norm[i] in fp32 (a zero row gives
     * an infinite or NaN scale, as in peft). Every argument contiguous. */
    void (*dora_norm_scale)(float *norm, float *scale, const float *combined, const float *magnitude, int rows,
                            int cols);
    /* scale_cols over [rows, cols], contiguous: y[t, j] = (s_j * x[t, j]) with s_j = scale[j] +
     * offset (fp32), the product rounded to fp32, then, when add, y[t, j] + that product
     * rounded again (no fused multiply-add, so every backend gives the same bits). y may be
     * x itself only when add is false. */
    void (*scale_cols)(float *y, const float *x, const float *scale, float offset, int rows, int cols, bool add);
    /* dora_magnitude_grad: dmag[j] = (accumulate ? dmag[j] : 0) + (float)(sum_t dy[t, j] *
     * z[t, j] / norm[j]), the products and their sum over t in double (the order of the sum
     * is the backend's), over [rows, cols] contiguous dy and z: the gradient of the DoRA
     * magnitude m in y = (m / norm) * z (norm treated as a constant, as peft detaches it).
     * A GPU may allocate for itself up to DORA_GRAD_SCRATCH_BYTES(rows, cols), released before
     * it returns (kernel scratch, which the trainer's estimate counts). */
    void (*dora_magnitude_grad)(float *dmag, const float *dy, const float *z, const float *norm, int rows, int cols,
                                bool accumulate);
    /* ---- AdamW (decoupled weight decay, as torch.optim.AdamW) on n elements, with
     * g = grad * st->grad_scale:
     * m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
     * p -= lr * (wd * p + (m / bias1) / (sqrt(v / bias2) + eps)).
     * torch applies the decay first: p *= (1 - lr*wd), then the Adam step; implement it so.
     * With st->half, the updated parameters' 16-bit copies are written too. With
     * st->grad_scale_at, the factor is read from there, and a NaN writes nothing. */
    void (*adamw)(float *param, const float *grad, float *m, float *v, size_t n,
                  const kernels_adamw_step *st);
} kernels;

/* The CPU reference backend (OpenMP + BLAS). Always available. */
const kernels *kernels_cpu(void);

/* Call first thing in a process, before any BLAS call or thread: where OpenBLAS did not know
 * this CPU and fell back to its SSE3 (Prescott) kernels, switches it to the widest kernels
 * the CPU runs (SkylakeX, Haswell; openblas_get_corename() tells which). An
 * OPENBLAS_CORETYPE set by the user is left alone. kernels/cpu/blas_core.c. */
void kernels_cpu_tune_blas(void);

/* Test backend: the CPU kernels behind pointers the host cannot dereference (kernels/shadow.c),
 * so a run on it proves that nothing above the table touches backend memory directly. */
const kernels *kernels_shadow(void);

/* The CUDA backend. Fails with a clear message where no GPU (or no CUDA build) exists. */
int kernels_cuda(const kernels **out, ct_error *err);

#endif
