/* cpu_ops: the functions behind the CPU backend table (kernels_cpu in backend.c).
 * Each op family lives in its own file with the formula it implements; the semantics
 * are those documented in kernels/kernels.h. Private to kernels/cpu. */
#ifndef CTUNE_CPU_OPS_H
#define CTUNE_CPU_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kernels/kernels.h"

/* Arrays shorter than this run on one thread: spawning a team costs more than the work. */
#define CPU_PARALLEL_MIN 32768

/* expf for the softmax loops, inline so that `#pragma omp simd` loops vectorise it (libm's
 * expf is a scalar call, and the softmaxes spend most of their time in it).
 * x = n ln2 + r, n = round(x / ln2), |r| <= ln2/2: ln2 is split Cody-Waite style into a
 * 9-bit high part, so n * hi and x - n * hi are exact; exp(r) is its Taylor polynomial to
 * r^7 (truncation below 6e-9 relative); 2^n goes straight into the exponent bits.
 * Error within 2 ulp of the exact result (test_kernels_cpu checks it against libm).
 * Domain: x <= 88.3. Below -87.33, where expf turns subnormal, it returns 0 (so -inf
 * gives 0); NaN gives NaN. The softmax callers pass x - max <= 0. */
static inline float cpu_expf(float x) {
    const float round_magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float shifted = x * 1.44269504f + round_magic;
    float n = shifted - round_magic;
    float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* n sits in the low mantissa bits of shifted (offset by the magic's own bits). */
    uint32_t shifted_bits, magic_bits, scale_bits;
    memcpy(&shifted_bits, &shifted, sizeof shifted_bits);
    memcpy(&magic_bits, &round_magic, sizeof magic_bits);
    scale_bits = (shifted_bits - magic_bits + 127u) << 23;
    float scale;
    memcpy(&scale, &scale_bits, sizeof scale);
    /* Selected with a bit mask, not a branch: under -ftrapping-math GCC will not
     * if-convert a branch around the multiply, and the loops would stay scalar. */
    float result = p * scale;
    uint32_t result_bits, keep = x < -87.336544f ? 0u : ~0u;
    memcpy(&result_bits, &result, sizeof result_bits);
    result_bits &= keep;
    memcpy(&result, &result_bits, sizeof result);
    return result;
}

/* memory.c */
void *cpu_alloc(size_t bytes);
void cpu_release(void *ptr);
void cpu_zero(void *ptr, size_t bytes);
void cpu_copy(void *dst, const void *src, size_t bytes);
int cpu_memory_info(size_t *free_bytes, size_t *total_bytes);
void cpu_memory_held(size_t *now, size_t *peak);
/* One cgroup of the process: the hierarchy's mount point, the group's path below it ("" for
 * the root), and its version (v1: memory.limit_in_bytes / memory.usage_in_bytes; v2:
 * memory.max / memory.current). */
typedef struct cpu_cgroup {
    const char *root, *path;
    bool v1;
} cpu_cgroup;
/* cpu_memory_info from a meminfo file (MemAvailable, MemTotal: /proc/meminfo), bounded by the
 * groups and their parents up to their roots (missing files: no limit). For tests. */
int cpu_memory_info_from(const char *meminfo_path, const cpu_cgroup *groups, int n_groups, size_t *free_bytes,
                         size_t *total_bytes);

/* gemm.c */
void cpu_gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
              int lda, const float *b, int ldb, float beta, float *c, int ldc);
/* cpu_gemm's one-row path, tile by tile: C[0, n) of a row op(A) (k values, stride inc_x)
 * times op(B), whose first column is at b. gemm_half's one-row path widens B per tile and
 * calls it on the same tiles, so its bits are those of widening all of B first. */
enum { CPU_GEMV_COLS = 256 };
void cpu_gemv_tile(bool trans_b, int n, int k, float alpha, const float *x, int inc_x, const float *b, int ldb,
                   float beta, float *c);

/* elementwise.c */
void cpu_add(float *out, const float *a, const float *b, size_t n);
void cpu_axpy(float *y, float alpha, const float *x, size_t n);
void cpu_scale(float *x, float alpha, size_t n);
void cpu_dropout(float *out, const float *x, float p, uint64_t seed, uint64_t offset, size_t n);
void cpu_dropout_add(float *y, const float *x, float p, uint64_t seed, uint64_t offset, size_t n);
void cpu_dropout_half(kernels_half_format fmt, uint16_t *out_half, const float *x, float p, uint64_t seed,
                      uint64_t offset, size_t n);
double cpu_sum_squares(const float *x, size_t n);
void cpu_sum_squares_blocks(const float *x, size_t n, size_t block, double *host_sums);
void cpu_clip_factor(double *sums, size_t n_blocks, double max_norm, double loss_scale, double *norm,
                     float *factor);

/* embedding.c */
void cpu_embedding_fwd(float *out, const float *table, const int32_t *ids, int n_tokens,
                       int hidden);
void cpu_embedding_bwd(float *dtable, const float *dout, const int32_t *ids, const int32_t *order,
                       int n_tokens, int hidden);

/* rmsnorm.c */
void cpu_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *weight, int n_rows,
                     int dim, float eps);
void cpu_rmsnorm_bwd(float *dx, float *dweight, const float *dout, const float *x,
                     const float *weight, const float *rstd, int n_rows, int dim, bool add_to_dx);
void cpu_rmsnorm_fwd_half(kernels_half_format fmt, uint16_t *out_half, int ld_half, float *out,
                          float *rstd, const float *x, const float *weight, int n_rows, int dim,
                          float eps);
void cpu_rmsnorm_bwd_half(kernels_half_format fmt, uint16_t *dx_half, int ld_half, float *dx, float *dweight,
                          const float *dout, const float *x, const float *weight, const float *rstd, int n_rows,
                          int dim, bool add_to_dx);

/* rope.c */
void cpu_rope_fwd(float *x, const int32_t *positions, const float *inv_freq, int n_tokens,
                  int n_heads, int head_dim);
void cpu_rope_bwd(float *dx, const int32_t *positions, const float *inv_freq, int n_tokens,
                  int n_heads, int head_dim);
void cpu_rope_fwd_half(kernels_half_format fmt, uint16_t *out_half, int ld_half, const float *x,
                       const int32_t *positions, const float *inv_freq, int n_tokens, int n_heads, int head_dim);
void cpu_rope_bwd_half(kernels_half_format fmt, uint16_t *out_half, int ld_half, const float *dx,
                       const int32_t *positions, const float *inv_freq, int n_tokens, int n_heads, int head_dim);

/* swiglu.c */
void cpu_swiglu_fwd(float *out, const float *gate, const float *up, size_t n);
void cpu_swiglu_bwd(float *dgate, float *dup, const float *dout, const float *gate,
                    const float *up, size_t n);
void cpu_swiglu_fwd_half(kernels_half_format fmt, uint16_t *out_half, int ld_half, float *out,
                         uint16_t *gate_half, uint16_t *up_half, const float *gate, const float *up,
                         int rows, int cols);
void cpu_swiglu_bwd_half(kernels_half_format fmt, uint16_t *dgate_half, uint16_t *dup_half, int ld_half,
                         const float *dout, const uint16_t *gate_half, const uint16_t *up_half, int rows,
                         int cols);

/* attention.c */
void cpu_attention_fwd(float *out, float *lse, const float *q, const float *k, const float *v,
                       const int32_t *doc_ids, int batch, int seq, int n_heads, int n_kv_heads,
                       int head_dim, float scale);
void cpu_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q,
                       const float *k, const float *v, const float *out, const float *lse,
                       const int32_t *doc_ids, int batch, int seq, int n_heads, int n_kv_heads,
                       int head_dim, float scale);

/* attention_half.c: the fp32 attention on the widened 16-bit q, k, v (dout rounded) */
void cpu_attention_fwd_half(kernels_half_format fmt, uint16_t *out_half, int ld_out, float *out, float *lse,
                            const uint16_t *q, const uint16_t *k, const uint16_t *v, const int32_t *doc_ids,
                            int batch, int seq, int n_heads, int n_kv_heads, int head_dim, float scale);
void cpu_attention_bwd_half(kernels_half_format fmt, float *dq, float *dk, float *dv, const float *dout,
                            const uint16_t *q, const uint16_t *k, const uint16_t *v, const uint16_t *out_half,
                            int ld_out, const float *lse, const int32_t *doc_ids, int batch, int seq, int n_heads,
                            int n_kv_heads, int head_dim, float scale);
size_t cpu_attention_scratch_bytes(bool half, int batch, int seq, int n_heads, int n_kv_heads, int head_dim);
/* The widened values of a [rows, cols] 16-bit block with rows ld apart (a contiguous fp32
 * copy to free), or NULL when malloc fails. */
float *cpu_widened_copy(const uint16_t *x, size_t rows, size_t cols, size_t ld, kernels_half_format fmt);
/* A 16-bit attention forward's output: out_half = to_half(o) (rows ld_out apart) when o was
 * computed; otherwise o (if any) is filled with NaN and out_half with the format's NaN, which
 * the loss and grad-norm checks see at once (the table's functions cannot report failures). */
void cpu_attention_half_output(kernels_half_format fmt, uint16_t *out_half, int ld_out, float *o, bool computed,
                               size_t rows, size_t width);

/* attention_cached.c: attention against a KV cache (generation) */
void cpu_attention_cached(float *out, const float *q, const float *k, const float *v, int n_new, int n_past,
                          int n_heads, int n_kv_heads, int head_dim, float scale);
void cpu_attention_cached_half(kernels_half_format fmt, uint16_t *out_half, int ld_out, float *out, const uint16_t *q,
                               const uint16_t *k, const uint16_t *v, int n_new, int n_past, int n_heads,
                               int n_kv_heads, int head_dim, float scale);

/* cross_entropy.c */
void cpu_cross_entropy(float *logits, float *loss, const int32_t *targets, int n_rows, int vocab,
                       float grad_scale);
void cpu_cross_entropy_half(kernels_half_format fmt, uint16_t *dlogits_half, const float *logits,
                            float *loss, const int32_t *targets, int n_rows, int vocab,
                            float grad_scale);

/* half.c */
void cpu_to_half(uint16_t *out, const float *x, size_t n, kernels_half_format fmt);
void cpu_from_half(float *out, const uint16_t *x, size_t n, kernels_half_format fmt);
void cpu_embedding_fwd_half(kernels_half_format fmt, float *out, const uint16_t *table, int ld,
                            const int32_t *ids, int n_tokens, int hidden);
void cpu_to_half_2d(kernels_half_format fmt, uint16_t *out, int ld_out, const float *x, int ld_x,
                    int rows, int cols, float scale);
void cpu_to_half_2d_many(kernels_half_format fmt, const kernels_half_block *blocks, int n);
void cpu_nf4_to_half_2d(kernels_half_format fmt, uint16_t *out, int ld_out, const uint8_t *codes,
                        const float *absmax, int rows, int cols);
void cpu_gemm_half(kernels_half_format fmt, bool trans_a, bool trans_b, int m, int n, int k,
                   float alpha, const uint16_t *a, int lda, const uint16_t *b, int ldb, float beta,
                   float *c, int ldc);
void cpu_gemm_half_add(kernels_half_format fmt, bool trans_a, bool trans_b, int m, int n, int k,
                       const uint16_t *a, int lda, const uint16_t *b, int ldb, const float *r, float *c, int ldc);
void cpu_gemm_half_to_half(kernels_half_format fmt, bool trans_a, bool trans_b, int m, int n, int k,
                           const uint16_t *a, int lda, const uint16_t *b, int ldb, uint16_t *c_half, int ldc);

/* dora.c */
void cpu_dora_norm_scale(float *norm, float *scale, const float *combined, const float *magnitude, int rows,
                         int cols);
void cpu_scale_cols(float *y, const float *x, const float *scale, float offset, int rows, int cols, bool add);
void cpu_dora_magnitude_grad(float *dmag, const float *dy, const float *z, const float *norm, int rows, int cols,
                             bool accumulate);

/* adamw.c */
void cpu_adamw(float *param, const float *grad, float *m, float *v, size_t n, const kernels_adamw_step *st);

#endif
