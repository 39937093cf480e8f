/* kernels_shadow: the CPU backend behind pointers the host cannot use.
 *
 * A test backend for what a GPU run needs from everything above the kernel table: that no
 * code (model, optimizer, collectives, checkpoints, evaluation) touches backend memory
 * except through the table. Every buffer it hands out is a CPU-backend buffer seen through
 * an address shifted by 2^44 bytes, which no process here maps: a direct read or write
 * crashes, while the table's functions shift the pointers back and run the CPU kernels,
 * so results are the CPU backend's bits. Selected by the trainer only under the test
 * variable CTUNE_TEST_SHADOW_MEMORY=1 (docs/distributed.md lists the test hooks). */
#include <stdint.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/kernels.h"

#define SHADOW_OFFSET ((uintptr_t)1 << 44)

/* NULL stays NULL (optional arguments such as a frozen dweight or absent doc_ids). */
#define REAL(T, p) ((T)((p) ? (uintptr_t)(p) - SHADOW_OFFSET : 0))
#define RF(p) REAL(float *, p)
#define RCF(p) REAL(const float *, p)
#define RCI(p) REAL(const int32_t *, p)
#define RH(p) REAL(uint16_t *, p)
#define RCH(p) REAL(const uint16_t *, p)

static void *shadow_alloc(size_t bytes) {
    void *p = cpu_alloc(bytes);
    return p ? (void *)((uintptr_t)p + SHADOW_OFFSET) : NULL;
}
static void shadow_release(void *p) { cpu_release(REAL(void *, p)); }
static void shadow_zero(void *p, size_t bytes) { cpu_zero(REAL(void *, p), bytes); }
static void shadow_copy(void *dst, const void *src, size_t bytes) {
    cpu_copy(REAL(void *, dst), REAL(const void *, src), bytes);
}
static void shadow_upload(void *dst, const void *host, size_t bytes) { cpu_copy(REAL(void *, dst), host, bytes); }
static void shadow_download(void *host, const void *src, size_t bytes) {
    cpu_copy(host, REAL(const void *, src), bytes);
}
static void shadow_gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float *a, int lda,
                        const float *b, int ldb, float beta, float *c, int ldc) {
    cpu_gemm(ta, tb, m, n, k, alpha, RCF(a), lda, RCF(b), ldb, beta, RF(c), ldc);
}
static void shadow_add(float *out, const float *a, const float *b, size_t n) { cpu_add(RF(out), RCF(a), RCF(b), n); }
static void shadow_axpy(float *y, float alpha, const float *x, size_t n) { cpu_axpy(RF(y), alpha, RCF(x), n); }
static void shadow_scale(float *x, float alpha, size_t n) { cpu_scale(RF(x), alpha, n); }
static void shadow_dropout(float *out, const float *x, float p, uint64_t seed, uint64_t offset, size_t n) {
    cpu_dropout(RF(out), RCF(x), p, seed, offset, n);
}
static void shadow_dropout_add(float *y, const float *x, float p, uint64_t seed, uint64_t offset, size_t n) {
    cpu_dropout_add(RF(y), RCF(x), p, seed, offset, n);
}
static void shadow_dropout_half(kernels_half_format fmt, uint16_t *out_half, const float *x, float p, uint64_t seed,
                                uint64_t offset, size_t n) {
    cpu_dropout_half(fmt, RH(out_half), RCF(x), p, seed, offset, n);
}
static double shadow_sum_squares(const float *x, size_t n) { return cpu_sum_squares(RCF(x), n); }
static void shadow_sum_squares_blocks(const float *x, size_t n, size_t block, double *host_sums) {
    cpu_sum_squares_blocks(RCF(x), n, block, host_sums);
}
static void shadow_sum_squares_blocks_to(const float *x, size_t n, size_t block, double *sums) {
    cpu_sum_squares_blocks(RCF(x), n, block, REAL(double *, sums));
}
static void shadow_clip_factor(double *sums, size_t n_blocks, double max_norm, double loss_scale, double *norm,
                               float *factor) {
    cpu_clip_factor(REAL(double *, sums), n_blocks, max_norm, loss_scale, REAL(double *, norm), RF(factor));
}
static void shadow_embedding_fwd(float *out, const float *table, const int32_t *ids, int n, int h) {
    cpu_embedding_fwd(RF(out), RCF(table), RCI(ids), n, h);
}
static void shadow_embedding_bwd(float *dtable, const float *dout, const int32_t *ids, const int32_t *order,
                                 int n, int h) {
    cpu_embedding_bwd(RF(dtable), RCF(dout), RCI(ids), RCI(order), n, h);
}
static void shadow_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int rows, int dim,
                               float eps) {
    cpu_rmsnorm_fwd(RF(out), RF(rstd), RCF(x), RCF(w), rows, dim, eps);
}
static void shadow_rmsnorm_bwd(float *dx, float *dw, const float *dout, const float *x, const float *w,
                               const float *rstd, int rows, int dim, bool add) {
    cpu_rmsnorm_bwd(RF(dx), RF(dw), RCF(dout), RCF(x), RCF(w), RCF(rstd), rows, dim, add);
}
static void shadow_rope_fwd(float *x, const int32_t *pos, const float *inv_freq, int n, int heads, int d) {
    cpu_rope_fwd(RF(x), RCI(pos), RCF(inv_freq), n, heads, d);
}
static void shadow_rope_bwd(float *dx, const int32_t *pos, const float *inv_freq, int n, int heads, int d) {
    cpu_rope_bwd(RF(dx), RCI(pos), RCF(inv_freq), n, heads, d);
}
static void shadow_rope_fwd_half(kernels_half_format fmt, uint16_t *oh, int ld, const float *x, const int32_t *pos,
                                 const float *inv_freq, int n, int heads, int d) {
    cpu_rope_fwd_half(fmt, RH(oh), ld, RCF(x), RCI(pos), RCF(inv_freq), n, heads, d);
}
static void shadow_rope_bwd_half(kernels_half_format fmt, uint16_t *oh, int ld, const float *dx, const int32_t *pos,
                                 const float *inv_freq, int n, int heads, int d) {
    cpu_rope_bwd_half(fmt, RH(oh), ld, RCF(dx), RCI(pos), RCF(inv_freq), n, heads, d);
}
static void shadow_swiglu_fwd(float *out, const float *gate, const float *up, size_t n) {
    cpu_swiglu_fwd(RF(out), RCF(gate), RCF(up), n);
}
static void shadow_swiglu_bwd(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                              size_t n) {
    cpu_swiglu_bwd(RF(dgate), RF(dup), RCF(dout), RCF(gate), RCF(up), n);
}
static void shadow_attention_fwd(float *out, float *lse, const float *q, const float *k, const float *v,
                                 const int32_t *doc_ids, int batch, int seq, int nh, int nkv, int d,
                                 float scale) {
    cpu_attention_fwd(RF(out), RF(lse), RCF(q), RCF(k), RCF(v), RCI(doc_ids), batch, seq, nh, nkv, d, scale);
}
static void shadow_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                 const float *k, const float *v, const float *out, const float *lse,
                                 const int32_t *doc_ids, int batch, int seq, int nh, int nkv, int d,
                                 float scale) {
    cpu_attention_bwd(RF(dq), RF(dk), RF(dv), RCF(dout), RCF(q), RCF(k), RCF(v), RCF(out), RCF(lse),
                      RCI(doc_ids), batch, seq, nh, nkv, d, scale);
}
static void shadow_cross_entropy(float *logits, float *loss, const int32_t *targets, int rows, int vocab,
                                 float grad_scale) {
    cpu_cross_entropy(RF(logits), RF(loss), RCI(targets), rows, vocab, grad_scale);
}
static void shadow_to_half(uint16_t *out, const float *x, size_t n, kernels_half_format fmt) {
    cpu_to_half(RH(out), RCF(x), n, fmt);
}
static void shadow_from_half(float *out, const uint16_t *x, size_t n, kernels_half_format fmt) {
    cpu_from_half(RF(out), RCH(x), n, fmt);
}
static void shadow_embedding_fwd_half(kernels_half_format fmt, float *out, const uint16_t *table, int ld,
                                      const int32_t *ids, int n, int h) {
    cpu_embedding_fwd_half(fmt, RF(out), RCH(table), ld, RCI(ids), n, h);
}
static void shadow_to_half_2d(kernels_half_format fmt, uint16_t *out, int ld_out, const float *x, int ld_x,
                              int rows, int cols, float scale) {
    cpu_to_half_2d(fmt, RH(out), ld_out, RCF(x), ld_x, rows, cols, scale);
}
/* The blocks' array and the pointers inside it are shadow addresses: both shifted back. */
static void shadow_to_half_2d_many(kernels_half_format fmt, const kernels_half_block *blocks, int n) {
    const kernels_half_block *real = REAL(const kernels_half_block *, blocks);
    for (int i = 0; i < n; i++) {
        const kernels_half_block *b = &real[i];
        cpu_to_half_2d(fmt, RH(b->out), b->ld_out, RCF(b->x), b->ld_x, b->rows, b->cols, b->scale);
    }
}
static void shadow_nf4_to_half_2d(kernels_half_format fmt, uint16_t *out, int ld_out, const uint8_t *codes,
                                  const float *absmax, int rows, int cols) {
    cpu_nf4_to_half_2d(fmt, RH(out), ld_out, REAL(const uint8_t *, codes), RCF(absmax), rows, cols);
}
static void shadow_gemm_half(kernels_half_format fmt, bool ta, bool tb, int m, int n, int k, float alpha,
                             const uint16_t *a, int lda, const uint16_t *b, int ldb, float beta, float *c,
                             int ldc) {
    cpu_gemm_half(fmt, ta, tb, m, n, k, alpha, RCH(a), lda, RCH(b), ldb, beta, RF(c), ldc);
}
static void shadow_gemm_half_add(kernels_half_format fmt, bool ta, bool tb, int m, int n, int k, const uint16_t *a,
                                 int lda, const uint16_t *b, int ldb, const float *r, float *c, int ldc) {
    cpu_gemm_half_add(fmt, ta, tb, m, n, k, RCH(a), lda, RCH(b), ldb, RCF(r), RF(c), ldc);
}
static void shadow_gemm_half_to_half(kernels_half_format fmt, bool ta, bool tb, int m, int n, int k,
                                     const uint16_t *a, int lda, const uint16_t *b, int ldb, uint16_t *c_half,
                                     int ldc) {
    cpu_gemm_half_to_half(fmt, ta, tb, m, n, k, RCH(a), lda, RCH(b), ldb, RH(c_half), ldc);
}
static void shadow_rmsnorm_fwd_half(kernels_half_format fmt, uint16_t *out_half, int ld_half, float *out,
                                    float *rstd, const float *x, const float *w, int rows, int dim, float eps) {
    cpu_rmsnorm_fwd_half(fmt, RH(out_half), ld_half, RF(out), RF(rstd), RCF(x), RCF(w), rows, dim, eps);
}
static void shadow_rmsnorm_bwd_half(kernels_half_format fmt, uint16_t *dx_half, int ld_half, float *dx, float *dw,
                                    const float *dout, const float *x, const float *w, const float *rstd, int rows,
                                    int dim, bool add) {
    cpu_rmsnorm_bwd_half(fmt, RH(dx_half), ld_half, RF(dx), RF(dw), RCF(dout), RCF(x), RCF(w), RCF(rstd), rows, dim,
                         add);
}
static void shadow_swiglu_fwd_half(kernels_half_format fmt, uint16_t *out_half, int ld_half, float *out,
                                   uint16_t *gate_half, uint16_t *up_half, const float *gate, const float *up,
                                   int rows, int cols) {
    cpu_swiglu_fwd_half(fmt, RH(out_half), ld_half, RF(out), RH(gate_half), RH(up_half), RCF(gate), RCF(up), rows,
                        cols);
}
static void shadow_swiglu_bwd_half(kernels_half_format fmt, uint16_t *dgate_half, uint16_t *dup_half, int ld_half,
                                   const float *dout, const uint16_t *gate_half, const uint16_t *up_half, int rows,
                                   int cols) {
    cpu_swiglu_bwd_half(fmt, RH(dgate_half), RH(dup_half), ld_half, RCF(dout), RCH(gate_half), RCH(up_half), rows,
                        cols);
}
static void shadow_cross_entropy_half(kernels_half_format fmt, uint16_t *dlogits_half, const float *logits,
                                      float *loss, const int32_t *targets, int rows, int vocab,
                                      float grad_scale) {
    cpu_cross_entropy_half(fmt, RH(dlogits_half), RCF(logits), RF(loss), RCI(targets), rows, vocab, grad_scale);
}
static void shadow_attention_fwd_half(kernels_half_format fmt, uint16_t *out_half, int ld_out, float *out,
                                      float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                                      const int32_t *doc_ids, int batch, int seq, int nh, int nkv, int d,
                                      float scale) {
    cpu_attention_fwd_half(fmt, RH(out_half), ld_out, RF(out), RF(lse), RCH(q), RCH(k), RCH(v), RCI(doc_ids),
                           batch, seq, nh, nkv, d, scale);
}
static void shadow_attention_bwd_half(kernels_half_format fmt, float *dq, float *dk, float *dv,
                                      const float *dout, const uint16_t *q, const uint16_t *k,
                                      const uint16_t *v, const uint16_t *out_half, int ld_out, const float *lse,
                                      const int32_t *doc_ids, int batch, int seq, int nh, int nkv, int d,
                                      float scale) {
    cpu_attention_bwd_half(fmt, RF(dq), RF(dk), RF(dv), RCF(dout), RCH(q), RCH(k), RCH(v), RCH(out_half), ld_out,
                           RCF(lse), RCI(doc_ids), batch, seq, nh, nkv, d, scale);
}
static void shadow_attention_cached(float *out, const float *q, const float *k, const float *v, int n_new,
                                    int n_past, int nh, int nkv, int d, float scale) {
    cpu_attention_cached(RF(out), RCF(q), RCF(k), RCF(v), n_new, n_past, nh, nkv, d, scale);
}
static void shadow_attention_cached_half(kernels_half_format fmt, uint16_t *out_half, int ld_out, float *out,
                                         const uint16_t *q, const uint16_t *k, const uint16_t *v, int n_new,
                                         int n_past, int nh, int nkv, int d, float scale) {
    cpu_attention_cached_half(fmt, RH(out_half), ld_out, RF(out), RCH(q), RCH(k), RCH(v), n_new, n_past, nh, nkv, d,
                              scale);
}
static void shadow_dora_norm_scale(float *norm, float *scale, const float *combined, const float *magnitude,
                                   int rows, int cols) {
    cpu_dora_norm_scale(RF(norm), RF(scale), RCF(combined), RCF(magnitude), rows, cols);
}
static void shadow_scale_cols(float *y, const float *x, const float *scale, float offset, int rows, int cols,
                              bool add) {
    cpu_scale_cols(RF(y), RCF(x), RCF(scale), offset, rows, cols, add);
}
static void shadow_dora_magnitude_grad(float *dmag, const float *dy, const float *z, const float *norm, int rows,
                                       int cols, bool accumulate) {
    cpu_dora_magnitude_grad(RF(dmag), RCF(dy), RCF(z), RCF(norm), rows, cols, accumulate);
}
static void shadow_adamw(float *param, const float *grad, float *m, float *v, size_t n,
                         const kernels_adamw_step *st) {
    kernels_adamw_step real = *st;
    real.half = RH(st->half);
    real.grad_scale_at = RCF(st->grad_scale_at);
    cpu_adamw(RF(param), RCF(grad), RF(m), RF(v), n, &real);
}

static const kernels shadow_backend = {
    .name = "cpu-shadow",
    .host_memory = true,
    .alloc = shadow_alloc,
    .release = shadow_release,
    .memory_info = cpu_memory_info,
    .memory_held = cpu_memory_held,
    .attention_scratch_bytes = cpu_attention_scratch_bytes,
    .zero = shadow_zero,
    .copy = shadow_copy,
    .upload = shadow_upload,
    .download = shadow_download,
    .gemm = shadow_gemm,
    .add = shadow_add,
    .axpy = shadow_axpy,
    .scale = shadow_scale,
    .dropout = shadow_dropout,
    .dropout_add = shadow_dropout_add,
    .dropout_half = shadow_dropout_half,
    .sum_squares = shadow_sum_squares,
    .sum_squares_blocks = shadow_sum_squares_blocks,
    .sum_squares_blocks_to = shadow_sum_squares_blocks_to,
    .clip_factor = shadow_clip_factor,
    .embedding_fwd = shadow_embedding_fwd,
    .embedding_bwd = shadow_embedding_bwd,
    .rmsnorm_fwd = shadow_rmsnorm_fwd,
    .rmsnorm_bwd = shadow_rmsnorm_bwd,
    .rope_fwd = shadow_rope_fwd,
    .rope_bwd = shadow_rope_bwd,
    .rope_fwd_half = shadow_rope_fwd_half,
    .rope_bwd_half = shadow_rope_bwd_half,
    .swiglu_fwd = shadow_swiglu_fwd,
    .swiglu_bwd = shadow_swiglu_bwd,
    .attention_fwd = shadow_attention_fwd,
    .attention_bwd = shadow_attention_bwd,
    .attention_cached = shadow_attention_cached,
    .cross_entropy = shadow_cross_entropy,
    .to_half = shadow_to_half,
    .from_half = shadow_from_half,
    .embedding_fwd_half = shadow_embedding_fwd_half,
    .to_half_2d = shadow_to_half_2d,
    .to_half_2d_many = shadow_to_half_2d_many,
    .nf4_to_half_2d = shadow_nf4_to_half_2d,
    .gemm_half = shadow_gemm_half,
    .gemm_half_add = shadow_gemm_half_add,
    .gemm_half_to_half = shadow_gemm_half_to_half,
    .rmsnorm_fwd_half = shadow_rmsnorm_fwd_half,
    .rmsnorm_bwd_half = shadow_rmsnorm_bwd_half,
    .swiglu_fwd_half = shadow_swiglu_fwd_half,
    .swiglu_bwd_half = shadow_swiglu_bwd_half,
    .cross_entropy_half = shadow_cross_entropy_half,
    .attention_fwd_half = shadow_attention_fwd_half,
    .attention_bwd_half = shadow_attention_bwd_half,
    .attention_cached_half = shadow_attention_cached_half,
    .dora_norm_scale = shadow_dora_norm_scale,
    .scale_cols = shadow_scale_cols,
    .dora_magnitude_grad = shadow_dora_magnitude_grad,
    .adamw = shadow_adamw,
};

const kernels *kernels_shadow(void) { return &shadow_backend; }
