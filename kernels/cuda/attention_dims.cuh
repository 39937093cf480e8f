// attention_dims: the shape every CUDA attention path (attention.cu fp32, attention_half.cu
// WMMA, attention_mma.cu mma.sync) hands its kernels, and its one validity rule. Each path
// extends it with what only it needs (tile sizes, the log2-scaled softmax scale).
#ifndef CTUNE_ATTENTION_DIMS_CUH
#define CTUNE_ATTENTION_DIMS_CUH

#include <stddef.h>
#include <stdint.h>

// q and out are [batch * seq, n_heads * d] row-major, k and v [batch * seq, n_kv * d];
// doc_ids (one per token, or NULL) keeps packed documents from seeing each other.
struct attention_dims {
    int batch, seq, n_heads, n_kv, d, group;  // group: query heads per kv head
    size_t q_stride, kv_stride;               // row strides of q/out and k/v, in elements
    const int32_t *doc_ids;
    float scale;
};

// What every path's kernels rely on: positive sizes, whole groups of query heads, head_dim
// at most max_head_dim, and batch and heads within a grid dimension (65535).
static inline bool attention_dims_valid(int batch, int seq, int n_heads, int n_kv_heads, int head_dim,
                                        int max_head_dim) {
    return batch > 0 && seq > 0 && n_heads > 0 && n_kv_heads > 0 && head_dim > 0 &&
           n_heads % n_kv_heads == 0 && head_dim <= max_head_dim && batch <= 65535 && n_heads <= 65535;
}

// Fills the shared fields of a shape that attention_dims_valid accepted.
static inline void attention_dims_fill(attention_dims *sh, const int32_t *doc_ids, int batch, int seq,
                                       int n_heads, int n_kv_heads, int head_dim, float scale) {
    sh->batch = batch;
    sh->seq = seq;
    sh->n_heads = n_heads;
    sh->n_kv = n_kv_heads;
    sh->d = head_dim;
    sh->group = n_heads / n_kv_heads;
    sh->q_stride = (size_t)n_heads * head_dim;
    sh->kv_stride = (size_t)n_kv_heads * head_dim;
    sh->doc_ids = doc_ids;
    sh->scale = scale;
}

// The backward's row dots run one warp per (b, h, s) row, warp w = (b * n_heads + h) * seq + s
// (D's index). Fills the row's token (b * seq + s) and head; false, for the whole warp, past
// the last row.
__device__ inline bool attention_row_of_warp(const attention_dims &sh, size_t *row, size_t *token, int *head) {
    const size_t w = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) / 32;
    if (w >= (size_t)sh.batch * sh.n_heads * sh.seq) return false;
    const size_t s = w % sh.seq, b = w / ((size_t)sh.seq * sh.n_heads);
    *row = w;
    *token = b * sh.seq + s;
    *head = (int)(w / sh.seq % sh.n_heads);
    return true;
}

#endif
