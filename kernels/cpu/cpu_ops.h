/* cpu_ops: the functions behind the CPU backend table (kernels_cpu in backend.c).
 * Each op family lives in its own file with the formula it implements; the semantics
 * are those documented in kernels/kernels.h. Private to kernels/cpu. */
#ifndef CTUNE_CPU_OPS_H
#define CTUNE_CPU_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Arrays shorter than this run on one thread: spawning a team costs more than the work. */
#define CPU_PARALLEL_MIN 32768

/* memory.c */
void *cpu_alloc(size_t bytes);
void cpu_release(void *ptr);
void cpu_zero(void *ptr, size_t bytes);
void cpu_copy(void *dst, const void *src, size_t bytes);

/* gemm.c */
void cpu_gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
              int lda, const float *b, int ldb, float beta, float *c, int ldc);

/* elementwise.c */
void cpu_add(float *out, const float *a, const float *b, size_t n);
void cpu_axpy(float *y, float alpha, const float *x, size_t n);
void cpu_scale(float *x, float alpha, size_t n);
void cpu_dropout(float *out, const float *x, float p, uint64_t seed, uint64_t offset, size_t n);
double cpu_sum_squares(const float *x, size_t n);

/* embedding.c */
void cpu_embedding_fwd(float *out, const float *table, const int32_t *ids, int n_tokens,
                       int hidden);
void cpu_embedding_bwd(float *dtable, const float *dout, const int32_t *ids, int n_tokens,
                       int hidden);

/* rmsnorm.c */
void cpu_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *weight, int n_rows,
                     int dim, float eps);
void cpu_rmsnorm_bwd(float *dx, float *dweight, const float *dout, const float *x,
                     const float *weight, const float *rstd, int n_rows, int dim);

/* rope.c */
void cpu_rope_fwd(float *x, const int32_t *positions, const float *inv_freq, int n_tokens,
                  int n_heads, int head_dim);
void cpu_rope_bwd(float *dx, const int32_t *positions, const float *inv_freq, int n_tokens,
                  int n_heads, int head_dim);

/* swiglu.c */
void cpu_swiglu_fwd(float *out, const float *gate, const float *up, size_t n);
void cpu_swiglu_bwd(float *dgate, float *dup, const float *dout, const float *gate,
                    const float *up, size_t n);

/* attention.c */
void cpu_attention_fwd(float *out, float *lse, const float *q, const float *k, const float *v,
                       const int32_t *doc_ids, int batch, int seq, int n_heads, int n_kv_heads,
                       int head_dim, float scale);
void cpu_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q,
                       const float *k, const float *v, const float *out, const float *lse,
                       const int32_t *doc_ids, int batch, int seq, int n_heads, int n_kv_heads,
                       int head_dim, float scale);

/* cross_entropy.c */
void cpu_cross_entropy(float *logits, float *loss, const int32_t *targets, int n_rows, int vocab,
                       float grad_scale);

/* adamw.c */
void cpu_adamw(float *param, const float *grad, float *m, float *v, size_t n, double lr,
               double beta1, double beta2, double eps, double weight_decay, double bias1,
               double bias2);

#endif
