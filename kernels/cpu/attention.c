/* Causal grouped-query attention, flash-attention style on the CPU.
 *
 * Shapes: q, out [batch*seq, n_heads*d]; k, v [batch*seq, n_kv*d]; lse [batch, n_heads, seq].
 * Query head h reads kv head h / (n_heads / n_kv) (transformers' repeat_kv). Query s sees
 * key j when j <= s and (no doc_ids, or doc_ids equal for s and j: packed documents are
 * isolated). With S_sj = scale * q_s.k_j:
 *   P_sj = softmax_j(S_sj),  out_s = sum_j P_sj v_j,  lse_s = log sum_j exp(S_sj).
 * Forward: one work item per (b, h, s) row; keys are visited in tiles of ATTN_TILE scores
 * on the stack with an online softmax (running max m, running sum l, the output row as
 * accumulator rescaled when m grows), so no seq x seq matrix ever exists.
 * Backward (FlashAttention-2 equations), recomputing P_sj = exp(S_sj - lse_s):
 *   D_s = dout_s.out_s,  dP_sj = dout_s.v_j,  dS_sj = P_sj (dP_sj - D_s),
 *   dq_s = scale sum_j dS_sj k_j,  dk_j = scale sum_{h,s} dS_sj q_s,  dv_j = sum_{h,s} P_sj dout_s.
 * It runs in two passes so that every output row has exactly one writer: pass 1 owns dq
 * rows (one item per query row), pass 2 owns dk/dv rows (one item per tile of keys of one
 * kv head, summing over the query heads of its group). This recomputes the scores twice
 * (about 7 instead of 5 length-d vector ops per visible pair) in exchange for race-free,
 * parallel work whose summation order, and hence result, is independent of thread count. */
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu_ops.h"

#define ATTN_TILE 64

typedef struct attn_shape {
    int batch, seq, n_heads, n_kv, d;
    size_t q_stride, kv_stride; /* row strides of q/out and k/v, in elements */
    const int32_t *doc_ids;
} attn_shape;

static inline float dot(const float *a, const float *b, int n) {
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for (; i < n; i++) s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

static inline void add_scaled(float *y, float alpha, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += alpha * x[i];
}

/* Whether query s of sequence b may see key j (j <= s is the caller's loop bound). */
static inline int visible(const attn_shape *sh, int b, int s, int j) {
    if (!sh->doc_ids) return 1;
    const int32_t *doc = sh->doc_ids + (size_t)b * sh->seq;
    return doc[j] == doc[s];
}

static attn_shape make_shape(const int32_t *doc_ids, int batch, int seq, int n_heads,
                             int n_kv_heads, int head_dim) {
    attn_shape sh = {batch, seq, n_heads, n_kv_heads, head_dim,
                     (size_t)n_heads * head_dim, (size_t)n_kv_heads * head_dim, doc_ids};
    return sh;
}

void cpu_attention_fwd(float *out, float *lse, const float *q, const float *k, const float *v,
                       const int32_t *doc_ids, int batch, int seq, int n_heads, int n_kv_heads,
                       int head_dim, float scale) {
    attn_shape sh = make_shape(doc_ids, batch, seq, n_heads, n_kv_heads, head_dim);
    const int group = n_heads / n_kv_heads, d = head_dim;
    const long n_rows = (long)batch * n_heads * seq;
#pragma omp parallel for schedule(dynamic, 16)
    for (long row = 0; row < n_rows; row++) {
        int s = (int)(row % seq), h = (int)(row / seq % n_heads), b = (int)(row / seq / n_heads);
        int g = h / group;
        size_t t = (size_t)b * seq + s;
        const float *qs = q + t * sh.q_stride + (size_t)h * d;
        float *os = out + t * sh.q_stride + (size_t)h * d;
        const float *kb = k + (size_t)b * seq * sh.kv_stride + (size_t)g * d;
        const float *vb = v + (size_t)b * seq * sh.kv_stride + (size_t)g * d;
        memset(os, 0, (size_t)d * sizeof(float));
        float scores[ATTN_TILE];
        float m = -INFINITY, l = 0.0f;
        for (int j0 = 0; j0 <= s; j0 += ATTN_TILE) {
            int j1 = j0 + ATTN_TILE <= s + 1 ? j0 + ATTN_TILE : s + 1;
            float tile_max = -INFINITY;
            for (int j = j0; j < j1; j++) {
                float sc = -INFINITY;
                if (visible(&sh, b, s, j)) sc = dot(qs, kb + (size_t)j * sh.kv_stride, d) * scale;
                scores[j - j0] = sc;
                if (sc > tile_max) tile_max = sc;
            }
            if (tile_max == -INFINITY) continue;
            if (tile_max > m) {
                /* Rescale what was summed under the old max (nothing yet when m = -inf). */
                if (m != -INFINITY) {
                    float corr = expf(m - tile_max);
                    l *= corr;
                    for (int i = 0; i < d; i++) os[i] *= corr;
                }
                m = tile_max;
            }
            for (int j = j0; j < j1; j++) {
                if (scores[j - j0] == -INFINITY) continue;
                float p = expf(scores[j - j0] - m);
                l += p;
                add_scaled(os, p, vb + (size_t)j * sh.kv_stride, d);
            }
        }
        /* Key s = query s is always visible, so l >= 1 here. */
        float inv_l = 1.0f / l;
        for (int i = 0; i < d; i++) os[i] *= inv_l;
        lse[((size_t)b * n_heads + h) * seq + s] = m + logf(l);
    }
}

/* Pass 1: dq for one query row (b, h, s). */
static void attention_bwd_dq_row(float *dq, const float *dout, const float *q, const float *k,
                                 const float *v, const float *out, const float *lse,
                                 const attn_shape *sh, int b, int h, int s, float scale) {
    const int d = sh->d, g = h / (sh->n_heads / sh->n_kv);
    size_t t = (size_t)b * sh->seq + s, qoff = t * sh->q_stride + (size_t)h * d;
    const float *qs = q + qoff, *dos = dout + qoff;
    float *dqs = dq + qoff;
    const float *kb = k + (size_t)b * sh->seq * sh->kv_stride + (size_t)g * d;
    const float *vb = v + (size_t)b * sh->seq * sh->kv_stride + (size_t)g * d;
    float lse_s = lse[((size_t)b * sh->n_heads + h) * sh->seq + s];
    float D = dot(dos, out + qoff, d);
    memset(dqs, 0, (size_t)d * sizeof(float));
    for (int j = 0; j <= s; j++) {
        if (!visible(sh, b, s, j)) continue;
        const float *kj = kb + (size_t)j * sh->kv_stride;
        float p = expf(dot(qs, kj, d) * scale - lse_s);
        float dS = p * (dot(dos, vb + (size_t)j * sh->kv_stride, d) - D);
        add_scaled(dqs, dS, kj, d);
    }
    for (int i = 0; i < d; i++) dqs[i] *= scale;
}

/* Pass 2: dk, dv for keys [j0, j1) of kv head g in sequence b. */
static void attention_bwd_dkv_tile(float *dk, float *dv, const float *dout, const float *q,
                                   const float *k, const float *v, const float *out,
                                   const float *lse, const attn_shape *sh, int b, int g, int j0,
                                   int j1, float scale) {
    const int d = sh->d, group = sh->n_heads / sh->n_kv;
    const size_t kv_base = (size_t)b * sh->seq * sh->kv_stride + (size_t)g * d;
    for (int j = j0; j < j1; j++) {
        memset(dk + kv_base + (size_t)j * sh->kv_stride, 0, (size_t)d * sizeof(float));
        memset(dv + kv_base + (size_t)j * sh->kv_stride, 0, (size_t)d * sizeof(float));
    }
    for (int h = g * group; h < (g + 1) * group; h++) {
        for (int s = j0; s < sh->seq; s++) {
            size_t qoff = ((size_t)b * sh->seq + s) * sh->q_stride + (size_t)h * d;
            const float *qs = q + qoff, *dos = dout + qoff;
            float lse_s = lse[((size_t)b * sh->n_heads + h) * sh->seq + s];
            int j_end = j1 <= s + 1 ? j1 : s + 1;
            float D = 0.0f;
            int have_D = 0; /* computed on first use: doc masks may hide the whole tile */
            for (int j = j0; j < j_end; j++) {
                if (!visible(sh, b, s, j)) continue;
                if (!have_D) {
                    D = dot(dos, out + qoff, d);
                    have_D = 1;
                }
                size_t kvoff = kv_base + (size_t)j * sh->kv_stride;
                float p = expf(dot(qs, k + kvoff, d) * scale - lse_s);
                float dS = p * (dot(dos, v + kvoff, d) - D);
                add_scaled(dk + kvoff, scale * dS, qs, d);
                add_scaled(dv + kvoff, p, dos, d);
            }
        }
    }
}

void cpu_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q,
                       const float *k, const float *v, const float *out, const float *lse,
                       const int32_t *doc_ids, int batch, int seq, int n_heads, int n_kv_heads,
                       int head_dim, float scale) {
    attn_shape sh = make_shape(doc_ids, batch, seq, n_heads, n_kv_heads, head_dim);
    const long n_rows = (long)batch * n_heads * seq;
#pragma omp parallel for schedule(dynamic, 16)
    for (long row = 0; row < n_rows; row++) {
        int s = (int)(row % seq), h = (int)(row / seq % n_heads), b = (int)(row / seq / n_heads);
        attention_bwd_dq_row(dq, dout, q, k, v, out, lse, &sh, b, h, s, scale);
    }
    const int n_tiles = (seq + ATTN_TILE - 1) / ATTN_TILE;
    const long n_items = (long)batch * n_kv_heads * n_tiles;
    /* Early key tiles are seen by the most queries: dynamic scheduling balances them. */
#pragma omp parallel for schedule(dynamic, 1)
    for (long item = 0; item < n_items; item++) {
        int tile = (int)(item % n_tiles), g = (int)(item / n_tiles % n_kv_heads);
        int b = (int)(item / n_tiles / n_kv_heads);
        int j0 = tile * ATTN_TILE, j1 = j0 + ATTN_TILE < seq ? j0 + ATTN_TILE : seq;
        attention_bwd_dkv_tile(dk, dv, dout, q, k, v, out, lse, &sh, b, g, j0, j1, scale);
    }
}
