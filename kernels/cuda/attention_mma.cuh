// attention_mma: the fast path of attention_fwd_half / attention_bwd_half (attention_half.cu)
// for the common head sizes, FlashAttention-2 style with register accumulators
// (mma.sync m16n8k16). Each function launches nothing and returns false for a shape it does
// not take; attention_half.cu then runs its general WMMA kernels.
#ifndef CTUNE_ATTENTION_MMA_CUH
#define CTUNE_ATTENTION_MMA_CUH

#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

// q, k, v are 16-bit tensors of fmt (the path needs them 16-byte aligned, and returns false
// otherwise). The forward writes out_half (rows ld_out apart) and, unless NULL, out (fp32).
// warp_rows: the query rows each warp owns, 16 (tiles of 64 rows) or 32 (two groups of 16,
// tiles of 128 rows: fewer shared-memory loads and barriers per product, twice the
// accumulator registers); the same bits either way. AM_FWD_WARP_ROWS is the default.
#define AM_FWD_WARP_ROWS 16
bool attention_mma_fwd(kernels_half_format fmt, int warp_rows, uint16_t *out_half, int ld_out, float *out,
                       float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v, const int32_t *doc_ids,
                       int batch, int seq, int n_heads, int n_kv_heads, int head_dim, float scale);

// D[b, h, s] = rowsum(round(dout) * widened out_half) and dout_half = round(dout) (contiguous,
// [tokens, n_heads * head_dim]) are the caller's (attention_half.cu: one pass over dout makes
// both). Where one kv head's 16-bit dS blocks (batch x group x the causal triangle of 64 x 64
// tiles, 2 bytes a value) fit ds_budget bytes, the dk/dv kernel stores dS and dq multiplies it
// (transient scratch of at most ds_budget); otherwise dq recomputes it. AM_DS_BUDGET is the
// default. attention_mma_bwd_takes says beforehand whether it takes the inputs.
#define AM_DS_BUDGET ((size_t)1 << 30)
bool attention_mma_bwd_takes(const uint16_t *q, const uint16_t *k, const uint16_t *v, int batch, int seq,
                             int n_heads, int n_kv_heads, int head_dim, size_t ds_budget);
bool attention_mma_bwd(kernels_half_format fmt, float *dq, float *dk, float *dv, const uint16_t *dout_half,
                       const uint16_t *q, const uint16_t *k, const uint16_t *v, const float *lse, const float *D,
                       const int32_t *doc_ids, int batch, int seq, int n_heads, int n_kv_heads,
                       int head_dim, float scale, size_t ds_budget);

// The scratch of the mma backward for this shape: the rounded dout (the caller's) and the dS
// chunk attention_mma_bwd allocates and frees (D is the caller's too), or 0 where the path
// does not take the shape.
size_t attention_mma_bwd_scratch_bytes(int batch, int seq, int n_heads, int n_kv_heads, int head_dim,
                                       size_t ds_budget);

#endif
