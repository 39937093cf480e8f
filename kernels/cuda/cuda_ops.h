/* cuda_ops: the functions behind the CUDA backend table (assembled in kernels/cuda_select.c)
 * and the backend's error state. Semantics are those of kernels/kernels.h; every op mirrors
 * the arithmetic of its kernels/cpu counterpart and is checked against it by
 * tests/test_kernels_cuda.c. Plain C declarations, shared by the C and CUDA sources. */
#ifndef CTUNE_CUDA_OPS_H
#define CTUNE_CUDA_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- device.cu: probe, lazily created cuBLAS handle, sticky error state ---- */

/* Number of devices (>= 0), or -1 with the CUDA runtime's message in msg. */
int ctune_cuda_device_count(char *msg, size_t msg_size);
/* Makes device index current for this thread; 0, or -1 with the runtime's message. */
int ctune_cuda_set_device(int index, char *msg, size_t msg_size);
/* Device index's PCI bus id into id; 0, or -1 with the runtime's message. */
int ctune_cuda_bus_id(int index, char *id, size_t id_size, char *msg, size_t msg_size);
/* Creates the process's cuBLAS handle once (thread-safe); 0, or -1 with a message. */
int ctune_cuda_init(char *msg, size_t msg_size);
/* Waits for the device, then moves the first recorded failure (if any) into msg and
 * clears it. Returns 0 when nothing failed since the last call, -1 otherwise. */
int ctune_cuda_take_error(char *msg, size_t msg_size);
/* The same without waiting: only what has been recorded so far. */
int ctune_cuda_take_recorded(char *msg, size_t msg_size);

/* ---- the table's operations ---- */
void *cuda_alloc(size_t bytes);
/* cuBLASLt's workspace for the 16-bit products (half.cu), allocated at the first: 32 MiB,
 * NVIDIA's recommendation on Hopper (4 MiB would do on Ampere), where split-K / stream-K
 * algorithms need it. */
#define CUDA_HALF_WORKSPACE_BYTES ((size_t)32 << 20)
void cuda_release(void *ptr);
int cuda_memory_info(size_t *free_bytes, size_t *total_bytes);
void cuda_memory_held(size_t *now, size_t *peak);
void cuda_zero(void *ptr, size_t bytes);
void cuda_copy(void *dst, const void *src, size_t bytes);
void cuda_upload(void *dst, const void *host_src, size_t bytes);
void cuda_download(void *host_dst, const void *src, size_t bytes);

void cuda_gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
               int lda, const float *b, int ldb, float beta, float *c, int ldc);

void cuda_add(float *out, const float *a, const float *b, size_t n);
void cuda_axpy(float *y, float alpha, const float *x, size_t n);
void cuda_scale(float *x, float alpha, size_t n);
void cuda_dropout(float *out, const float *x, float p, uint64_t seed, uint64_t offset, size_t n);
void cuda_dropout_add(float *y, const float *x, float p, uint64_t seed, uint64_t offset, size_t n);
void cuda_dropout_half(kernels_half_format fmt, uint16_t *out_half, const float *x, float p, uint64_t seed,
                       uint64_t offset, size_t n);
double cuda_sum_squares(const float *x, size_t n);
void cuda_sum_squares_blocks(const float *x, size_t n, size_t block, double *host_sums);
void cuda_sum_squares_blocks_to(const float *x, size_t n, size_t block, double *sums);
void cuda_clip_factor(double *sums, size_t n_blocks, double max_norm, double loss_scale, double *norm,
                      float *factor);

void cuda_embedding_fwd(float *out, const float *table, const int32_t *ids, int n_tokens,
                        int hidden);
void cuda_embedding_bwd(float *dtable, const float *dout, const int32_t *ids, const int32_t *order,
                        int n_tokens, int hidden);

void cuda_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *weight, int n_rows,
                      int dim, float eps);
void cuda_rmsnorm_bwd(float *dx, float *dweight, const float *dout, const float *x,
                      const float *weight, const float *rstd, int n_rows, int dim, bool add_to_dx);
void cuda_rmsnorm_fwd_half(kernels_half_format fmt, uint16_t *out_half, int ld_half, float *out,
                           float *rstd, const float *x, const float *weight, int n_rows, int dim,
                           float eps);
void cuda_rmsnorm_bwd_half(kernels_half_format fmt, uint16_t *dx_half, int ld_half, float *dx, float *dweight,
                           const float *dout, const float *x, const float *weight, const float *rstd, int n_rows,
                           int dim, bool add_to_dx);

void cuda_rope_fwd(float *x, const int32_t *positions, const float *inv_freq, int n_tokens,
                   int n_heads, int head_dim);
void cuda_rope_bwd(float *dx, const int32_t *positions, const float *inv_freq, int n_tokens,
                   int n_heads, int head_dim);
void cuda_rope_fwd_half(kernels_half_format fmt, uint16_t *out_half, int ld_half, const float *x,
                        const int32_t *positions, const float *inv_freq, int n_tokens, int n_heads, int head_dim);
void cuda_rope_bwd_half(kernels_half_format fmt, uint16_t *out_half, int ld_half, const float *dx,
                        const int32_t *positions, const float *inv_freq, int n_tokens, int n_heads, int head_dim);

void cuda_swiglu_fwd(float *out, const float *gate, const float *up, size_t n);
void cuda_swiglu_bwd(float *dgate, float *dup, const float *dout, const float *gate,
                     const float *up, size_t n);
void cuda_swiglu_fwd_half(kernels_half_format fmt, uint16_t *out_half, int ld_half, float *out,
                          uint16_t *gate_half, uint16_t *up_half, const float *gate,
                          const float *up, int rows, int cols);
void cuda_swiglu_bwd_half(kernels_half_format fmt, uint16_t *dgate_half, uint16_t *dup_half,
                          int ld_half, const float *dout, const uint16_t *gate_half,
                          const uint16_t *up_half, int rows, int cols);

void cuda_attention_fwd(float *out, float *lse, const float *q, const float *k, const float *v,
                        const int32_t *doc_ids, int batch, int seq, int n_heads, int n_kv_heads,
                        int head_dim, float scale);
void cuda_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q,
                        const float *k, const float *v, const float *out, const float *lse,
                        const int32_t *doc_ids, int batch, int seq, int n_heads, int n_kv_heads,
                        int head_dim, float scale);

/* attention_half.cu: the same attention on tensor cores from 16-bit q, k, v (dout rounded to fmt) */
void cuda_attention_fwd_half(kernels_half_format fmt, uint16_t *out_half, int ld_out, float *out, float *lse,
                             const uint16_t *q, const uint16_t *k, const uint16_t *v, const int32_t *doc_ids,
                             int batch, int seq, int n_heads, int n_kv_heads, int head_dim, float scale);
void cuda_attention_bwd_half(kernels_half_format fmt, float *dq, float *dk, float *dv, const float *dout,
                             const uint16_t *q, const uint16_t *k, const uint16_t *v, const uint16_t *out_half,
                             int ld_out, const float *lse, const int32_t *doc_ids, int batch, int seq, int n_heads,
                             int n_kv_heads, int head_dim, float scale);
/* The same with the query rows each warp of the head_dim 64/128 kernel owns (16 or 32; the
 * table's op gives AM_FWD_WARP_ROWS, kernels/cuda/attention_mma.cuh): the same bits either
 * way. For tests and scripts/bench_gpu_attention.sh. */
void cuda_attention_fwd_half_rows(int warp_rows, kernels_half_format fmt, uint16_t *out_half, int ld_out, float *out,
                                  float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                                  const int32_t *doc_ids, int batch, int seq, int n_heads, int n_kv_heads,
                                  int head_dim, float scale);
/* The same with the budget of the 16-bit dS scratch the head_dim 64/128 path may take (the
 * table's op gives 1 GiB; 0 makes dq recompute dS): for tests of both ways. */
void cuda_attention_bwd_half_budget(size_t ds_budget, kernels_half_format fmt, float *dq, float *dk, float *dv,
                                    const float *dout, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                                    const uint16_t *out_half, int ld_out, const float *lse, const int32_t *doc_ids,
                                    int batch, int seq, int n_heads, int n_kv_heads, int head_dim, float scale);
/* attention_cached.cu: attention against a KV cache (generation) */
void cuda_attention_cached(float *out, const float *q, const float *k, const float *v, int n_new, int n_past,
                           int n_heads, int n_kv_heads, int head_dim, float scale);
void cuda_attention_cached_half(kernels_half_format fmt, uint16_t *out_half, int ld_out, float *out,
                                const uint16_t *q, const uint16_t *k, const uint16_t *v, int n_new, int n_past,
                                int n_heads, int n_kv_heads, int head_dim, float scale);
/* The most one attention call allocates for itself (kernels.h: attention_scratch_bytes). */
size_t cuda_attention_scratch_bytes(bool half, int batch, int seq, int n_heads, int n_kv_heads, int head_dim);

void cuda_cross_entropy(float *logits, float *loss, const int32_t *targets, int n_rows,
                        int vocab, float grad_scale);
void cuda_cross_entropy_half(kernels_half_format fmt, uint16_t *dlogits_half, const float *logits,
                             float *loss, const int32_t *targets, int n_rows, int vocab,
                             float grad_scale);

/* half.cu: casts to and from bf16/fp16 bit patterns, and gemm on 16-bit A, B via cuBLASLt */
void cuda_to_half(uint16_t *out, const float *x, size_t n, kernels_half_format fmt);
void cuda_from_half(float *out, const uint16_t *x, size_t n, kernels_half_format fmt);
void cuda_embedding_fwd_half(kernels_half_format fmt, float *out, const uint16_t *table, int ld,
                             const int32_t *ids, int n_tokens, int hidden);
void cuda_to_half_2d(kernels_half_format fmt, uint16_t *out, int ld_out, const float *x, int ld_x,
                     int rows, int cols, float scale);
void cuda_to_half_2d_many(kernels_half_format fmt, const kernels_half_block *blocks, int n);
void cuda_nf4_to_half_2d(kernels_half_format fmt, uint16_t *out, int ld_out, const uint8_t *codes,
                         const float *absmax, int rows, int cols);
void cuda_gemm_half(kernels_half_format fmt, bool trans_a, bool trans_b, int m, int n, int k,
                    float alpha, const uint16_t *a, int lda, const uint16_t *b, int ldb,
                    float beta, float *c, int ldc);
void cuda_gemm_half_add(kernels_half_format fmt, bool trans_a, bool trans_b, int m, int n, int k,
                        const uint16_t *a, int lda, const uint16_t *b, int ldb, const float *r, float *c, int ldc);
void cuda_gemm_half_to_half(kernels_half_format fmt, bool trans_a, bool trans_b, int m, int n, int k,
                            const uint16_t *a, int lda, const uint16_t *b, int ldb, uint16_t *c_half, int ldc);

/* dora.cu: DoRA's weight norm and magnitude gradient, and the column scaling between them */
void cuda_dora_norm_scale(float *norm, float *scale, const float *combined, const float *magnitude, int rows,
                          int cols);
void cuda_scale_cols(float *y, const float *x, const float *scale, float offset, int rows, int cols, bool add);
void cuda_dora_magnitude_grad(float *dmag, const float *dy, const float *z, const float *norm, int rows, int cols,
                              bool accumulate);

void cuda_adamw(float *param, const float *grad, float *m, float *v, size_t n, const kernels_adamw_step *st);

#ifdef __cplusplus
}
#endif

#endif
