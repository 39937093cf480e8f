// Embedding lookup: out[t,:] = table[ids[t],:]; backward dtable[ids[t],:] += dout[t,:]
// (kernels/cpu/embedding.c). The ids are trusted (the data layer checks them).
//
// The backward is deterministic without atomics: repeated ids make rows collide, so every
// element adds its contributions in token order, the same order (and so the same bits) as
// the CPU backend. Without an order, a thread owns one column and walks all the tokens
// (`hidden` threads, each n_tokens long: slow for long batches). With the tokens sorted by
// (id, t), a thread owns one column of one distinct id and walks only that id's tokens,
// still in token order, accumulating in a register: the same additions, n_ids x hidden
// threads.
#include <stdint.h>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/half_bits.cuh"

__global__ void embedding_fwd_kernel(float *out, const float *table, const int32_t *ids,
                                     int n_tokens, int hidden) {
    size_t total = (size_t)n_tokens * hidden;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t t = i / hidden, c = i % hidden;
        out[i] = table[(size_t)ids[t] * hidden + c];
    }
}

// From a table kept only in 16 bits (rows ld apart): the exact widening of each value.
template <kernels_half_format F>
__global__ void embedding_fwd_half_kernel(float *out, const uint16_t *table, int ld, const int32_t *ids,
                                          int n_tokens, int hidden) {
    size_t total = (size_t)n_tokens * hidden;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t t = i / hidden, c = i % hidden;
        out[i] = half_widen<F>(table[(size_t)ids[t] * ld + c]);
    }
}

__global__ void embedding_bwd_kernel(float *dtable, const float *dout, const int32_t *ids,
                                     int n_tokens, int hidden) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= hidden) return;
    for (int t = 0; t < n_tokens; t++)
        dtable[(size_t)ids[t] * hidden + c] += dout[(size_t)t * hidden + c];
}

// Thread (p, c): if position p of the sorted order starts a run of equal ids, it sums column c
// of that run into the row.
__global__ void embedding_bwd_sorted_kernel(float *dtable, const float *dout, const int32_t *ids,
                                            const int32_t *order, int n_tokens, int hidden) {
    size_t total = (size_t)n_tokens * hidden;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        int p = (int)(i / hidden), c = (int)(i % hidden);
        int id = ids[order[p]];
        if (p > 0 && ids[order[p - 1]] == id) continue;
        float *cell = dtable + (size_t)id * hidden + c;
        float acc = *cell;
        for (int q = p; q < n_tokens && ids[order[q]] == id; q++) acc += dout[(size_t)order[q] * hidden + c];
        *cell = acc;
    }
}

extern "C" void cuda_embedding_fwd(float *out, const float *table, const int32_t *ids,
                                   int n_tokens, int hidden) {
    if (n_tokens <= 0 || hidden <= 0) return;
    CUDA_LAUNCH(cuda_grid_for((size_t)n_tokens * hidden), CUDA_THREADS, 0, embedding_fwd_kernel)(
        out, table, ids, n_tokens, hidden);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_embedding_fwd_half(kernels_half_format fmt, float *out, const uint16_t *table, int ld,
                                        const int32_t *ids, int n_tokens, int hidden) {
    if (!cuda_known_half_format(fmt, "embedding_fwd_half", __FILE__, __LINE__) || n_tokens <= 0 || hidden <= 0)
        return;
    if (fmt == KERNELS_BF16)
        CUDA_LAUNCH(cuda_grid_for((size_t)n_tokens * hidden), CUDA_THREADS, 0, embedding_fwd_half_kernel<KERNELS_BF16>)(
            out, table, ld, ids, n_tokens, hidden);
    else
        CUDA_LAUNCH(cuda_grid_for((size_t)n_tokens * hidden), CUDA_THREADS, 0, embedding_fwd_half_kernel<KERNELS_FP16>)(
            out, table, ld, ids, n_tokens, hidden);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_embedding_bwd(float *dtable, const float *dout, const int32_t *ids,
                                   const int32_t *order, int n_tokens, int hidden) {
    if (n_tokens <= 0 || hidden <= 0) return;
    if (order) {
        CUDA_LAUNCH(cuda_grid_for((size_t)n_tokens * hidden), CUDA_THREADS, 0, embedding_bwd_sorted_kernel)(
            dtable, dout, ids, order, n_tokens, hidden);
        CUDA_CHECK_LAUNCH();
        return;
    }
    unsigned int blocks = (unsigned int)((hidden + CUDA_THREADS - 1) / CUDA_THREADS);
    CUDA_LAUNCH(blocks, CUDA_THREADS, 0, embedding_bwd_kernel)(dtable, dout, ids, n_tokens, hidden);
    CUDA_CHECK_LAUNCH();
}
