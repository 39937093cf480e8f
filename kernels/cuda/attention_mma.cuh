// attention_mma: the fast path of attention_fwd_half / attention_bwd_half (attention_half.cu)
// for the common head sizes, FlashAttention-2 style with register accumulators
// (mma.sync m16n8k16). Each function launches nothing and returns false for a shape it does
// not take; attention_half.cu then runs its general WMMA kernels.
#ifndef CTUNE_ATTENTION_MMA_CUH
#define CTUNE_ATTENTION_MMA_CUH

#include <stdint.h>

#include "kernels/kernels.h"

bool attention_mma_fwd(kernels_half_format fmt, float *out, float *lse, const float *q, const float *k,
                       const float *v, const int32_t *doc_ids, int batch, int seq, int n_heads,
                       int n_kv_heads, int head_dim, float scale);

// D[b, h, s] = rowsum(round(dout) * out), computed by the caller (attention_half.cu).
bool attention_mma_bwd(kernels_half_format fmt, float *dq, float *dk, float *dv, const float *dout,
                       const float *q, const float *k, const float *v, const float *lse, const float *D,
                       const int32_t *doc_ids, int batch, int seq, int n_heads, int n_kv_heads,
                       int head_dim, float scale);

#endif
