/* Embedding lookup: out[t,:] = table[ids[t],:]; backward dtable[ids[t],:] += dout[t,:].
 * The ids are trusted: the data layer checks them against the vocabulary (the kernel is
 * not told its size). */
#include <string.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/half_round.h"

/* Columns per backward work item: wide enough for whole cache lines per row touched. */
#define EMBED_COL_BLOCK 64

void cpu_embedding_fwd(float *out, const float *table, const int32_t *ids, int n_tokens,
                       int hidden) {
#pragma omp parallel for if ((size_t)n_tokens * hidden >= CPU_PARALLEL_MIN) schedule(static)
    for (int t = 0; t < n_tokens; t++)
        memcpy(out + (size_t)t * hidden, table + (size_t)ids[t] * hidden,
               (size_t)hidden * sizeof(float));
}

void cpu_embedding_fwd_half(kernels_half_format fmt, float *out, const uint16_t *table, int ld,
                            const int32_t *ids, int n_tokens, int hidden) {
#pragma omp parallel for if ((size_t)n_tokens * hidden >= CPU_PARALLEL_MIN) schedule(static)
    for (int t = 0; t < n_tokens; t++) {
        const uint16_t *row = table + (size_t)ids[t] * ld;
        float *dst = out + (size_t)t * hidden;
        for (int c = 0; c < hidden; c++) dst[c] = cpu_float_from_half(row[c], fmt);
    }
}

/* Repeated ids make rows collide, so threads split the hidden dimension instead of the
 * tokens: each thread owns a column range and walks the tokens in order. No races, and
 * every element sums its contributions in token order whatever the thread count. */
void cpu_embedding_bwd(float *dtable, const float *dout, const int32_t *ids, const int32_t *order,
                       int n_tokens, int hidden) {
    (void)order; /* the column split is parallel already */
    int n_blocks = (hidden + EMBED_COL_BLOCK - 1) / EMBED_COL_BLOCK;
#pragma omp parallel for if ((size_t)n_tokens * hidden >= CPU_PARALLEL_MIN) schedule(static)
    for (int blk = 0; blk < n_blocks; blk++) {
        int c0 = blk * EMBED_COL_BLOCK;
        int c1 = c0 + EMBED_COL_BLOCK < hidden ? c0 + EMBED_COL_BLOCK : hidden;
        for (int t = 0; t < n_tokens; t++) {
            float *row = dtable + (size_t)ids[t] * hidden;
            const float *grad = dout + (size_t)t * hidden;
            for (int c = c0; c < c1; c++) row[c] += grad[c];
        }
    }
}
