/* Causal grouped-query attention, flash-attention style on the CPU.
 *
 * Shapes: q, out [batch*seq, n_heads*d]; k, v [batch*seq, n_kv*d]; lse [batch, n_heads, seq].
 * Query head h reads kv head h / (n_heads / n_kv) (transformers' repeat_kv). Query s sees
 * key j when j <= s and (no doc_ids, or doc_ids equal for s and j: packed documents are
 * isolated). With S_sj = scale * q_s.k_j:
 *   P_sj = softmax_j(S_sj),  out_s = sum_j P_sj v_j,  lse_s = log sum_j exp(S_sj).
 *
 * Work is cut into tiles of BLOCK queries x BLOCK keys, and every product inside a tile is
 * a GEMM (cpu_gemm; inside our parallel regions OpenBLAS runs single-threaded): attention
 * is a few percent of a step's FLOPs, but done as scalar dot products it took a third of
 * the time. A thread's scratch is at most two BLOCK x BLOCK tiles on its stack; no
 * seq x seq matrix ever exists. Tiles that the causal or document mask hides entirely are
 * skipped. The exponentials are cpu_expf in vectorised row loops. Any BLOCK works; 32 and
 * 64 measured alike (4 x 256 tokens, 6 heads of 64), 128 slower (more masked work).
 *
 * Forward: one work item per (b, h, block of queries). It walks the key tiles up to the
 * diagonal with an online softmax: per row a running max m and sum l; when a tile raises
 * m, what was summed so far (l and the output row, the accumulator) is rescaled by
 * exp(m_old - m_new). Finally out /= l and lse = m + log l.
 *
 * Backward (FlashAttention-2 equations), recomputing P from lse tile by tile:
 *   P = exp(S - lse),  D_s = dout_s.out_s,  dP = dout V^T,  dS = P o (dP - D),
 *   dq = scale dS K,  dk = scale dS^T Q,  dv = P^T dout.
 * Each output row has exactly one writer (see cpu_attention_bwd for the two ways the work
 * is cut), and every row's sum runs in a fixed order (dq over key tiles ascending; dk, dv
 * over query heads, then query blocks, ascending), so the result is independent of the
 * thread count and repeats bitwise. */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "kernels/cpu/cpu_ops.h"

#define BLOCK 64

typedef struct attn_shape {
    int batch, seq, n_heads, n_kv, d, group;
    size_t q_stride, kv_stride; /* row strides of q/out and k/v, in elements */
    const int32_t *doc_ids;
    float scale;
} attn_shape;

static attn_shape make_shape(const int32_t *doc_ids, int batch, int seq, int n_heads,
                             int n_kv_heads, int head_dim, float scale) {
    attn_shape sh = {batch, seq, n_heads, n_kv_heads, head_dim, n_heads / n_kv_heads,
                     (size_t)n_heads * head_dim, (size_t)n_kv_heads * head_dim, doc_ids, scale};
    return sh;
}

static inline int min_int(int a, int b) { return a < b ? a : b; }

/* Whether any query of [i0, i0+nq) may see any key of [j0, j0+nk) in sequence b. */
static int tile_visible(const attn_shape *sh, int b, int i0, int nq, int j0, int nk) {
    if (j0 > i0 + nq - 1) return 0;
    if (!sh->doc_ids) return 1;
    const int32_t *doc = sh->doc_ids + (size_t)b * sh->seq;
    for (int s = i0; s < i0 + nq; s++)
        for (int j = j0; j < j0 + nk && j <= s; j++)
            if (doc[j] == doc[s]) return 1;
    return 0;
}

/* Sets the hidden entries of the score tile S [nq x nk] (row stride BLOCK) to -inf. */
static void mask_tile(float *S, const attn_shape *sh, int b, int i0, int nq, int j0, int nk) {
    const int32_t *doc = sh->doc_ids ? sh->doc_ids + (size_t)b * sh->seq : NULL;
    if (!doc && j0 + nk - 1 <= i0) return; /* wholly below the diagonal */
    for (int r = 0; r < nq; r++) {
        const int s = i0 + r;
        float *row = S + (size_t)r * BLOCK;
        for (int c = 0; c < nk; c++) {
            const int j = j0 + c;
            if (j > s || (doc && doc[j] != doc[s])) row[c] = -INFINITY;
        }
    }
}

/* row[c] = exp(row[c] - shift); returns the sum of the new row. */
static inline float exp_shifted(float *row, int n, float shift) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int c = 0; c < n; c++) {
        float e = cpu_expf(row[c] - shift);
        row[c] = e;
        sum += e;
    }
    return sum;
}

static inline float dot(const float *a, const float *b, int n) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int i = 0; i < n; i++) sum += a[i] * b[i];
    return sum;
}

static inline void scale_row(float *x, float alpha, int n) {
#pragma omp simd
    for (int i = 0; i < n; i++) x[i] *= alpha;
}

/* Forward for queries [i0, i0+nq) of head h in sequence b. */
static void attention_fwd_block(float *out, float *lse, const float *q, const float *k,
                                const float *v, const attn_shape *sh, int b, int h, int i0) {
    const int d = sh->d, g = h / sh->group, nq = min_int(BLOCK, sh->seq - i0);
    const size_t qoff = ((size_t)b * sh->seq + i0) * sh->q_stride + (size_t)h * d;
    const size_t kvoff = (size_t)b * sh->seq * sh->kv_stride + (size_t)g * d;
    const float *qt = q + qoff;
    float *ot = out + qoff;
    float S[BLOCK * BLOCK], m[BLOCK], l[BLOCK];
    for (int r = 0; r < nq; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
        memset(ot + (size_t)r * sh->q_stride, 0, (size_t)d * sizeof(float));
    }
    for (int j0 = 0; j0 < i0 + nq; j0 += BLOCK) {
        const int nk = min_int(BLOCK, i0 + nq - j0);
        if (!tile_visible(sh, b, i0, nq, j0, nk)) continue;
        const float *kt = k + kvoff + (size_t)j0 * sh->kv_stride;
        const float *vt = v + kvoff + (size_t)j0 * sh->kv_stride;
        cpu_gemm(false, true, nq, nk, d, sh->scale, qt, (int)sh->q_stride, kt, (int)sh->kv_stride,
                 0.0f, S, BLOCK);
        mask_tile(S, sh, b, i0, nq, j0, nk);
        for (int r = 0; r < nq; r++) {
            float *row = S + (size_t)r * BLOCK;
            float tile_max = -INFINITY;
#pragma omp simd reduction(max : tile_max)
            for (int c = 0; c < nk; c++) tile_max = row[c] > tile_max ? row[c] : tile_max;
            if (tile_max == -INFINITY) { /* the document mask hides this tile's keys */
                memset(row, 0, (size_t)nk * sizeof(float));
                continue;
            }
            if (tile_max > m[r]) {
                /* Rescale what was summed under the old max (nothing yet when l = 0). */
                if (l[r] != 0.0f) {
                    float corr = cpu_expf(m[r] - tile_max);
                    l[r] *= corr;
                    scale_row(ot + (size_t)r * sh->q_stride, corr, d);
                }
                m[r] = tile_max;
            }
            l[r] += exp_shifted(row, nk, m[r]);
        }
        cpu_gemm(false, false, nq, d, nk, 1.0f, S, BLOCK, vt, (int)sh->kv_stride, 1.0f, ot,
                 (int)sh->q_stride);
    }
    /* Key s = query s is always visible, so l >= 1 here. */
    float *lse_t = lse + ((size_t)b * sh->n_heads + h) * sh->seq + i0;
    for (int r = 0; r < nq; r++) {
        scale_row(ot + (size_t)r * sh->q_stride, 1.0f / l[r], d);
        lse_t[r] = m[r] + logf(l[r]);
    }
}

void cpu_attention_fwd(float *out, float *lse, const float *q, const float *k, const float *v,
                       const int32_t *doc_ids, int batch, int seq, int n_heads, int n_kv_heads,
                       int head_dim, float scale) {
    const attn_shape sh = make_shape(doc_ids, batch, seq, n_heads, n_kv_heads, head_dim, scale);
    const int n_blocks = (seq + BLOCK - 1) / BLOCK;
    const long n_heads_total = (long)batch * n_heads, n_items = n_heads_total * n_blocks;
    /* Late query blocks see the most keys: handing them out first balances the threads. */
#pragma omp parallel for schedule(dynamic, 1)
    for (long item = 0; item < n_items; item++) {
        const int block = n_blocks - 1 - (int)(item / n_heads_total);
        const int pair = (int)(item % n_heads_total);
        attention_fwd_block(out, lse, q, k, v, &sh, pair / n_heads, pair % n_heads, block * BLOCK);
    }
}

/* The backward's tensors, as cpu_attention_bwd received them. */
typedef struct attn_grads {
    float *dq, *dk, *dv;
    const float *dout, *q, *k, *v, *out, *lse;
} attn_grads;

/* D_s = dout_s.out_s for the rows [i0, i0+nq) of head h. */
static void bwd_row_dots(float *D, const attn_grads *t, const attn_shape *sh, int b, int h,
                         int i0, int nq) {
    for (int r = 0; r < nq; r++) {
        size_t off = ((size_t)b * sh->seq + i0 + r) * sh->q_stride + (size_t)h * sh->d;
        D[r] = dot(t->dout + off, t->out + off, sh->d);
    }
}

/* P and dS of the tile of queries [i0, i0+nq) of head h against keys [j0, j0+nk); D holds
 * D_s of the query rows. Both schemes below compute every tile through this function, so
 * they see bitwise the same P and dS. */
static void bwd_tile_probs(float *P, float *dS, const float *D, const attn_grads *t,
                           const attn_shape *sh, int b, int h, int i0, int nq, int j0, int nk) {
    const int d = sh->d, qs = (int)sh->q_stride, kvs = (int)sh->kv_stride;
    const size_t qoff = ((size_t)b * sh->seq + i0) * sh->q_stride + (size_t)h * d;
    const size_t kvoff = ((size_t)b * sh->seq + j0) * sh->kv_stride + (size_t)(h / sh->group) * d;
    const float *lse_t = t->lse + ((size_t)b * sh->n_heads + h) * sh->seq + i0;
    cpu_gemm(false, true, nq, nk, d, sh->scale, t->q + qoff, qs, t->k + kvoff, kvs, 0.0f, P, BLOCK);
    mask_tile(P, sh, b, i0, nq, j0, nk);
    for (int r = 0; r < nq; r++) exp_shifted(P + (size_t)r * BLOCK, nk, lse_t[r]);
    cpu_gemm(false, true, nq, nk, d, 1.0f, t->dout + qoff, qs, t->v + kvoff, kvs, 0.0f, dS, BLOCK);
    for (int r = 0; r < nq; r++) {
        const float *p = P + (size_t)r * BLOCK;
        float *ds = dS + (size_t)r * BLOCK;
        const float Dr = D[r];
#pragma omp simd
        for (int c = 0; c < nk; c++) ds[c] = p[c] * (ds[c] - Dr);
    }
}

/* dv += P^T dout and dk += scale dS^T Q for the tile's keys. */
static void bwd_tile_add_dkv(const float *P, const float *dS, const attn_grads *t,
                             const attn_shape *sh, int b, int h, int i0, int nq, int j0, int nk) {
    const int d = sh->d, qs = (int)sh->q_stride, kvs = (int)sh->kv_stride;
    const size_t qoff = ((size_t)b * sh->seq + i0) * sh->q_stride + (size_t)h * d;
    const size_t kvoff = ((size_t)b * sh->seq + j0) * sh->kv_stride + (size_t)(h / sh->group) * d;
    cpu_gemm(true, false, nk, d, nq, 1.0f, P, BLOCK, t->dout + qoff, qs, 1.0f, t->dv + kvoff, kvs);
    cpu_gemm(true, false, nk, d, nq, sh->scale, dS, BLOCK, t->q + qoff, qs, 1.0f, t->dk + kvoff,
             kvs);
}

/* dq += scale dS K for the tile's queries. */
static void bwd_tile_add_dq(const float *dS, const attn_grads *t, const attn_shape *sh, int b,
                            int h, int i0, int nq, int j0, int nk) {
    const int d = sh->d;
    const size_t qoff = ((size_t)b * sh->seq + i0) * sh->q_stride + (size_t)h * d;
    const size_t kvoff = ((size_t)b * sh->seq + j0) * sh->kv_stride + (size_t)(h / sh->group) * d;
    cpu_gemm(false, false, nq, d, nk, sh->scale, dS, BLOCK, t->k + kvoff, (int)sh->kv_stride, 1.0f,
             t->dq + qoff, (int)sh->q_stride);
}

static void zero_rows(float *x, size_t stride, int n_rows, size_t width) {
    for (int r = 0; r < n_rows; r++) memset(x + (size_t)r * stride, 0, width * sizeof(float));
}

/* Scheme "group": the whole backward of kv head g in sequence b, which owns the dk, dv rows
 * of g and the dq rows of the query heads sharing g: 5 GEMMs per tile. */
static void bwd_group(const attn_grads *t, const attn_shape *sh, int b, int g) {
    const int d = sh->d, seq = sh->seq;
    const size_t kvoff = (size_t)b * seq * sh->kv_stride + (size_t)g * d;
    zero_rows(t->dk + kvoff, sh->kv_stride, seq, (size_t)d);
    zero_rows(t->dv + kvoff, sh->kv_stride, seq, (size_t)d);
    zero_rows(t->dq + (size_t)b * seq * sh->q_stride + (size_t)g * sh->group * d, sh->q_stride,
              seq, (size_t)sh->group * d);
    float P[BLOCK * BLOCK], dS[BLOCK * BLOCK], D[BLOCK];
    for (int h = g * sh->group; h < (g + 1) * sh->group; h++)
        for (int i0 = 0; i0 < seq; i0 += BLOCK) {
            const int nq = min_int(BLOCK, seq - i0);
            bwd_row_dots(D, t, sh, b, h, i0, nq);
            for (int j0 = 0; j0 < i0 + nq; j0 += BLOCK) {
                const int nk = min_int(BLOCK, i0 + nq - j0);
                if (!tile_visible(sh, b, i0, nq, j0, nk)) continue;
                bwd_tile_probs(P, dS, D, t, sh, b, h, i0, nq, j0, nk);
                bwd_tile_add_dkv(P, dS, t, sh, b, h, i0, nq, j0, nk);
                bwd_tile_add_dq(dS, t, sh, b, h, i0, nq, j0, nk);
            }
        }
}

/* Scheme "split", pass 1: dk, dv of keys [j0, j0+nk) of kv head g. The tiles it adds come
 * in the order bwd_group adds them (query heads, then query blocks, ascending). */
static void bwd_split_dkv(const attn_grads *t, const attn_shape *sh, int b, int g, int j0) {
    const int d = sh->d, seq = sh->seq, nk = min_int(BLOCK, seq - j0);
    const size_t kvoff = ((size_t)b * seq + j0) * sh->kv_stride + (size_t)g * d;
    zero_rows(t->dk + kvoff, sh->kv_stride, nk, (size_t)d);
    zero_rows(t->dv + kvoff, sh->kv_stride, nk, (size_t)d);
    float P[BLOCK * BLOCK], dS[BLOCK * BLOCK], D[BLOCK];
    for (int h = g * sh->group; h < (g + 1) * sh->group; h++)
        for (int i0 = j0; i0 < seq; i0 += BLOCK) {
            const int nq = min_int(BLOCK, seq - i0);
            if (!tile_visible(sh, b, i0, nq, j0, nk)) continue;
            bwd_row_dots(D, t, sh, b, h, i0, nq);
            bwd_tile_probs(P, dS, D, t, sh, b, h, i0, nq, j0, nk);
            bwd_tile_add_dkv(P, dS, t, sh, b, h, i0, nq, j0, nk);
        }
}

/* Scheme "split", pass 2: dq of queries [i0, i0+nq) of head h, key tiles ascending. */
static void bwd_split_dq(const attn_grads *t, const attn_shape *sh, int b, int h, int i0) {
    const int seq = sh->seq, nq = min_int(BLOCK, seq - i0);
    zero_rows(t->dq + ((size_t)b * seq + i0) * sh->q_stride + (size_t)h * sh->d, sh->q_stride, nq,
              (size_t)sh->d);
    float P[BLOCK * BLOCK], dS[BLOCK * BLOCK], D[BLOCK];
    bwd_row_dots(D, t, sh, b, h, i0, nq);
    for (int j0 = 0; j0 < i0 + nq; j0 += BLOCK) {
        const int nk = min_int(BLOCK, i0 + nq - j0);
        if (!tile_visible(sh, b, i0, nq, j0, nk)) continue;
        bwd_tile_probs(P, dS, D, t, sh, b, h, i0, nq, j0, nk);
        bwd_tile_add_dq(dS, t, sh, b, h, i0, nq, j0, nk);
    }
}

/* Two race-free schemes with bitwise the same result (same tiles, each row's sum in the
 * same order), so picking one by thread count keeps the result independent of it:
 * "group" does 5 GEMMs per tile but has only batch * n_kv work items; "split" computes
 * each tile's P and dS twice (7 GEMMs per tile) in items of one block of rows, which keeps
 * many threads busy when there are few (batch, kv head) pairs. */
void cpu_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q,
                       const float *k, const float *v, const float *out, const float *lse,
                       const int32_t *doc_ids, int batch, int seq, int n_heads, int n_kv_heads,
                       int head_dim, float scale) {
    const attn_shape sh = make_shape(doc_ids, batch, seq, n_heads, n_kv_heads, head_dim, scale);
    const attn_grads t = {dq, dk, dv, dout, q, k, v, out, lse};
    const long n_groups = (long)batch * n_kv_heads;
    const int threads = omp_get_max_threads();
    const long rounds_group = (n_groups + threads - 1) / threads; /* in units of one group */
    if ((double)rounds_group <= 1.4 * (double)n_groups / threads) {
#pragma omp parallel for schedule(dynamic, 1)
        for (long item = 0; item < n_groups; item++)
            bwd_group(&t, &sh, (int)(item / n_kv_heads), (int)(item % n_kv_heads));
        return;
    }
    const int n_blocks = (seq + BLOCK - 1) / BLOCK;
    const long n_heads_total = (long)batch * n_heads;
#pragma omp parallel
    {
        /* Early key blocks meet the most queries, late query blocks the most keys: the
         * biggest items go first. */
#pragma omp for schedule(dynamic, 1)
        for (long item = 0; item < n_groups * n_blocks; item++) {
            const int block = (int)(item / n_groups), pair = (int)(item % n_groups);
            bwd_split_dkv(&t, &sh, pair / n_kv_heads, pair % n_kv_heads, block * BLOCK);
        }
#pragma omp for schedule(dynamic, 1)
        for (long item = 0; item < n_heads_total * n_blocks; item++) {
            const int block = n_blocks - 1 - (int)(item / n_heads_total);
            const int pair = (int)(item % n_heads_total);
            bwd_split_dq(&t, &sh, pair / n_heads, pair % n_heads, block * BLOCK);
        }
    }
}
