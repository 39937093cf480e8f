// Causal grouped-query attention on tensor cores (kernels.h: attention_fwd_half /
// attention_bwd_half), FlashAttention-2 style, with the semantics of attention.cu (masks,
// GQA, lse layout [batch, n_heads, seq]) and the arithmetic of bf16/fp16 flash attention:
// q, k, v arrive as 16-bit tensors of the format; every matrix product is a WMMA 16x16x16
// product of 16-bit operands summed in fp32; softmax statistics, lse and
// D = rowsum(round(dout) * widened out_half) are fp32; P and dS are rounded to the format
// where they enter a product (P relative to the running row maximum of the forward).
//
// Paths. attention_mma.cu takes head_dim 64 and 128 (16-bit q, k, v straight from the
// caller, out_half written by its epilogue). The WMMA kernels here read fp32 tensors and round
// them while tiles are loaded into shared memory: the entry points widen q, k, v (exactly,
// so that rounding gives back the caller's values) into stream-ordered fp32 scratch, the
// forward writes its fp32 output into out (or scratch where out is NULL), and to_half_2d
// rounds that into out_half (rows ld_out apart, the columns between untouched); dout stays
// fp32 and is rounded on load.
//
// Tiling. A block has tile/16 warps; warp w owns rows [16w, 16w+16) of the block's tile
// (queries in the forward and dq, keys in dk/dv) and the block streams tiles of the other
// side (tile rows each) through shared memory. tile is 64, or 32 where the 64-row layout
// does not fit the device's opt-in shared memory (docs/kernels.md lists the sizes: e.g. the
// backward at head_dim 256, and dk/dv at 128 on A100). The head dimension is padded with
// zeros to dp, a multiple of 16 (any head_dim up to 256, odd ones too); rows past seq are
// zero and masked. Per streamed tile a warp
//   S  = Q K^T          (16 x tile, fp32, into shared memory: WMMA hides which lane holds
//                        which element, so the softmax reads the scores back from there)
//   softmax / dS        (row by row in fp32, written to shared memory in 16 bits)
//   acc += P V, dS K... (fp32 accumulators in shared memory, loaded into fragments,
//                        updated, stored back; the forward rescales its rows in place when
//                        the running maximum grows)
// Masked entries are exact zeros in P and dS, so padded rows and columns add nothing and
// never make NaN; padded rows are never written out.
//
// Backward: D in a small pre-kernel (dout rounded as the other kernels see it, out_half
// widened); dq in one kernel over query tiles (key tiles ascending); dk, dv in another over
// key tiles of a kv head (the group's query heads, then query tiles, ascending). Every output row has one
// writer and a fixed summation order: no atomics, the same bits every run.
//
// A 64-query tile holds 4 warps: little latency hiding where a block needs most of an SM's
// shared memory (dk/dv at head_dim 128), and the accumulators round-trip through shared
// memory every tile: these kernels are the general fallback. Head sizes 64 and 128 (every
// Llama-family model ctune loads) take attention_mma.cu's register-accumulator kernels.
//
// A tile layout too large for the device's shared memory runs the fp32 kernels of
// attention.cu on the widened q, k, v (and rounded dout, widened out_half for D): slower,
// same contract. attention.cu records the shapes no attention can run (n_heads not a
// multiple of n_kv_heads, head_dim > 256): the entry points hand it those before anything
// else, and it touches no buffer then.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <mma.h>
#include <stdint.h>
#include <stdio.h>

#include "kernels/cuda/attention_dims.cuh"
#include "kernels/cuda/attention_mma.cuh"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/half_bits.cuh"

using namespace nvcuda;

#define AH_MAX_D 256
#define AH_FRAG 16  // WMMA fragment edge
#define AH_FULL_MASK 0xffffffffu

// ------------------------------------------------------------------ formats

template <typename T>
struct half_ops;

template <>
struct half_ops<__nv_bfloat16> {
    typedef __nv_bfloat162 pair;
    static constexpr kernels_half_format fmt = KERNELS_BF16;
    static __device__ __forceinline__ __nv_bfloat16 from(float x) { return __float2bfloat16_rn(x); }
    static __device__ __forceinline__ pair from2(float a, float b) { return __floats2bfloat162_rn(a, b); }
    static __device__ __forceinline__ float to(__nv_bfloat16 x) { return __bfloat162float(x); }
};

template <>
struct half_ops<__half> {
    typedef __half2 pair;
    static constexpr kernels_half_format fmt = KERNELS_FP16;
    static __device__ __forceinline__ __half from(float x) { return __float2half_rn(x); }
    static __device__ __forceinline__ pair from2(float a, float b) { return __floats2half2_rn(a, b); }
    static __device__ __forceinline__ float to(__half x) { return __half2float(x); }
};

// ------------------------------------------------------------------ shape and layout

struct ah_shape : attention_dims {
    int dp;    // head_dim rounded up to a multiple of 16
    int tile;  // rows of a block's tile and of a streamed tile (64 or 32)
};

// Leading dimensions in shared memory. WMMA wants multiples of 8 (16-bit) and 4 (fp32)
// elements; the extra 8 or 4 shift consecutive rows across banks.
__host__ __device__ inline int ld_half(int dp) { return dp + 8; }
__host__ __device__ inline int ld_acc(int dp) { return dp + 4; }
__host__ __device__ inline int ld_score(int tile) { return tile + 4; }
__host__ __device__ inline int ld_prob(int tile) { return tile + 8; }

// Regions start at multiples of 128 bytes (WMMA pointers need 32).
__host__ __device__ inline size_t ah_align(size_t bytes) { return (bytes + 127) & ~(size_t)127; }

struct ah_sizes {
    size_t half_tile, acc_tile, score_tile, prob_tile, row_ints, row_floats;
};

__host__ __device__ inline ah_sizes region_sizes(int tile, int dp) {
    ah_sizes z;
    z.half_tile = ah_align((size_t)tile * ld_half(dp) * 2);
    z.acc_tile = ah_align((size_t)tile * ld_acc(dp) * sizeof(float));
    z.score_tile = ah_align((size_t)tile * ld_score(tile) * sizeof(float));
    z.prob_tile = ah_align((size_t)tile * ld_prob(tile) * 2);
    z.row_ints = ah_align((size_t)tile * sizeof(int32_t));
    z.row_floats = ah_align((size_t)tile * sizeof(float));
    return z;
}

// Bytes of dynamic shared memory: forward Q K V, O, S, P, two doc rows; dq Q dO K V, dQ,
// S dP, dS, doc rows, lse D; dk/dv K V Q dO, dK dV, S dP, P dS, doc rows, lse D.
static size_t fwd_bytes(int tile, int dp) {
    const ah_sizes z = region_sizes(tile, dp);
    return 3 * z.half_tile + z.acc_tile + z.score_tile + z.prob_tile + 2 * z.row_ints;
}
static size_t dq_bytes(int tile, int dp) {
    const ah_sizes z = region_sizes(tile, dp);
    return 4 * z.half_tile + z.acc_tile + 2 * z.score_tile + z.prob_tile + 2 * z.row_ints +
           2 * z.row_floats;
}
static size_t dkv_bytes(int tile, int dp) {
    const ah_sizes z = region_sizes(tile, dp);
    return 4 * z.half_tile + 2 * z.acc_tile + 2 * z.score_tile + 2 * z.prob_tile +
           2 * z.row_ints + 2 * z.row_floats;
}

// Hands out consecutive regions of the block's dynamic shared memory.
struct smem_cursor {
    unsigned char *next;
    template <typename U>
    __device__ U *take(size_t bytes) {
        U *p = reinterpret_cast<U *>(next);
        next += bytes;
        return p;
    }
};

// ------------------------------------------------------------------ device helpers

// Rows [r0, r0+tile) of one head of a [batch*seq, stride] fp32 tensor, rounded to T, into
// shared memory with row stride ld; rows past seq and columns past d are zero. Threads
// take consecutive column pairs, so a warp reads consecutive addresses of a row.
template <typename T>
__device__ void load_tile_half(T *dst, int ld, const float *src, size_t stride,
                               const ah_shape &sh, int b, int r0, int head) {
    const int pairs = sh.dp / 2;
    for (int e = threadIdx.x; e < sh.tile * pairs; e += blockDim.x) {
        const int r = e / pairs, x = 2 * (e % pairs), s = r0 + r;
        float lo = 0.0f, hi = 0.0f;
        if (s < sh.seq) {
            const float *row = src + ((size_t)b * sh.seq + s) * stride + (size_t)head * sh.d;
            if (x < sh.d) lo = row[x];
            if (x + 1 < sh.d) hi = row[x + 1];
        }
        *reinterpret_cast<typename half_ops<T>::pair *>(dst + (size_t)r * ld + x) =
            half_ops<T>::from2(lo, hi);
    }
}

// Document ids of rows [r0, r0+tile) (-1 past the end, which no visible pair uses).
__device__ void load_docs_half(int32_t *dst, const ah_shape &sh, int b, int r0) {
    for (int r = threadIdx.x; r < sh.tile; r += blockDim.x) {
        const int s = r0 + r;
        dst[r] = sh.doc_ids && s < sh.seq ? sh.doc_ids[(size_t)b * sh.seq + s] : -1;
    }
}

// lse and D of query rows [i0, i0+tile) of head h (0 past the end: those rows are masked).
__device__ void load_row_stats(float *row_lse, float *row_D, const float *lse, const float *D,
                               const ah_shape &sh, int b, int h, int i0) {
    for (int r = threadIdx.x; r < sh.tile; r += blockDim.x) {
        const int s = i0 + r;
        const size_t stat = ((size_t)b * sh.n_heads + h) * sh.seq + s;
        row_lse[r] = s < sh.seq ? lse[stat] : 0.0f;
        row_D[r] = s < sh.seq ? D[stat] : 0.0f;
    }
}

__device__ inline bool ah_visible(const ah_shape &sh, int query, int key, int32_t query_doc,
                                  int32_t key_doc) {
    return query < sh.seq && key <= query && (!sh.doc_ids || query_doc == key_doc);
}

// C[16 x tile] (fp32, row stride ldc) = A[16 x dp] B^T, where A's rows and B's rows
// (tile of them) are stored row-major with stride lda / ldb: B read as a col-major
// matrix is B^T. Used for Q K^T, dO V^T, K Q^T and V dO^T.
template <typename T>
__device__ void product_abt(float *c, int ldc, const T *a, int lda, const T *b, int ldb, int dp,
                            int tile) {
    for (int n = 0; n < tile; n += AH_FRAG) {
        wmma::fragment<wmma::accumulator, AH_FRAG, AH_FRAG, AH_FRAG, float> acc;
        wmma::fill_fragment(acc, 0.0f);
        for (int kk = 0; kk < dp; kk += AH_FRAG) {
            wmma::fragment<wmma::matrix_a, AH_FRAG, AH_FRAG, AH_FRAG, T, wmma::row_major> fa;
            wmma::fragment<wmma::matrix_b, AH_FRAG, AH_FRAG, AH_FRAG, T, wmma::col_major> fb;
            wmma::load_matrix_sync(fa, a + kk, lda);
            wmma::load_matrix_sync(fb, b + (size_t)n * ldb + kk, ldb);
            wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(c + n, acc, ldc, wmma::mem_row_major);
    }
}

// acc[16 x dp] (fp32 in shared memory, stride ldacc) += A[16 x tile] B[tile x dp], A and B
// row-major 16-bit. Used for P V, dS K, P^T dO and dS^T Q.
template <typename T>
__device__ void accumulate_ab(float *acc_rows, int ldacc, const T *a, int lda, const T *b,
                              int ldb, int dp, int tile) {
    for (int n = 0; n < dp; n += AH_FRAG) {
        wmma::fragment<wmma::accumulator, AH_FRAG, AH_FRAG, AH_FRAG, float> acc;
        wmma::load_matrix_sync(acc, acc_rows + n, ldacc, wmma::mem_row_major);
        for (int kk = 0; kk < tile; kk += AH_FRAG) {
            wmma::fragment<wmma::matrix_a, AH_FRAG, AH_FRAG, AH_FRAG, T, wmma::row_major> fa;
            wmma::fragment<wmma::matrix_b, AH_FRAG, AH_FRAG, AH_FRAG, T, wmma::row_major> fb;
            wmma::load_matrix_sync(fa, a + kk, lda);
            wmma::load_matrix_sync(fb, b + (size_t)kk * ldb + n, ldb);
            wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(acc_rows + n, acc, ldacc, wmma::mem_row_major);
    }
}

__device__ void zero_floats(float *x, size_t n) {
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) x[i] = 0.0f;
}

// ------------------------------------------------------------------ forward

// One block per (query tile, head, sequence); late (long) query tiles first.
template <typename T>
__global__ void __launch_bounds__(128)
    attention_fwd_half_kernel(float *out, float *lse, const float *q, const float *k,
                              const float *v, ah_shape sh) {
    extern __shared__ __align__(128) unsigned char ah_smem[];
    const int tile = sh.tile, dp = sh.dp;
    const int ldh = ld_half(dp), ldf = ld_acc(dp), lds = ld_score(tile), ldp = ld_prob(tile);
    const ah_sizes z = region_sizes(tile, dp);
    smem_cursor cur = {ah_smem};
    T *Qs = cur.take<T>(z.half_tile), *Ks = cur.take<T>(z.half_tile), *Vs = cur.take<T>(z.half_tile);
    float *Os = cur.take<float>(z.acc_tile), *Ss = cur.take<float>(z.score_tile);
    T *Ps = cur.take<T>(z.prob_tile);
    int32_t *qdoc = cur.take<int32_t>(z.row_ints), *kdoc = cur.take<int32_t>(z.row_ints);

    const int n_tiles = (sh.seq + tile - 1) / tile;
    const int i0 = (n_tiles - 1 - (int)blockIdx.x) * tile;
    const int h = blockIdx.y, b = blockIdx.z, g = h / sh.group;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, row0 = warp * AH_FRAG;
    const int first_query = i0 + row0;  // of this warp

    load_tile_half(Qs, ldh, q, sh.q_stride, sh, b, i0, h);
    load_docs_half(qdoc, sh, b, i0);
    zero_floats(Os, (size_t)tile * ldf);
    float m[AH_FRAG], l[AH_FRAG];
#pragma unroll
    for (int rr = 0; rr < AH_FRAG; rr++) {
        m[rr] = -INFINITY;
        l[rr] = 0.0f;
    }
    const int last_query = min(i0 + tile, sh.seq) - 1;
    for (int j0 = 0; j0 <= last_query; j0 += tile) {
        __syncthreads();  // the previous K, V are consumed (and Q, O, qdoc are ready)
        load_tile_half(Ks, ldh, k, sh.kv_stride, sh, b, j0, g);
        load_tile_half(Vs, ldh, v, sh.kv_stride, sh, b, j0, g);
        load_docs_half(kdoc, sh, b, j0);
        __syncthreads();
        // A warp whose rows are all padding, or all before this key tile, has P = 0 here.
        if (first_query >= sh.seq || j0 > first_query + AH_FRAG - 1) continue;
        product_abt(Ss + row0 * lds, lds, Qs + row0 * ldh, ldh, Ks, ldh, dp, tile);
        __syncwarp();
#pragma unroll
        for (int rr = 0; rr < AH_FRAG; rr++) {
            const int r = row0 + rr, s = i0 + r;
            float score[2];
            float tile_max = -INFINITY;
#pragma unroll
            for (int part = 0; part < 2; part++) {
                const int c = lane + 32 * part;
                score[part] = -INFINITY;
                if (c < tile && ah_visible(sh, s, j0 + c, qdoc[r], kdoc[c]))
                    score[part] = sh.scale * Ss[r * lds + c];
                tile_max = fmaxf(tile_max, score[part]);
            }
            tile_max = warp_max(tile_max);
            float p_sum = 0.0f;
            const float m_new = fmaxf(m[rr], tile_max);  // -inf while nothing was visible
#pragma unroll
            for (int part = 0; part < 2; part++) {
                const int c = lane + 32 * part;
                if (c >= tile) continue;
                const float p = score[part] == -INFINITY ? 0.0f : expf(score[part] - m_new);
                p_sum += p;
                Ps[r * ldp + c] = half_ops<T>::from(p);
            }
            if (tile_max == -INFINITY) continue;  // warp-uniform: P row is zero, no change
            if (m_new != m[rr] && l[rr] != 0.0f) {
                // Rescale what was summed under the old maximum.
                const float corr = expf(m[rr] - m_new);
                l[rr] *= corr;
                for (int x = lane; x < dp; x += 32) Os[r * ldf + x] *= corr;
            }
            m[rr] = m_new;
            l[rr] += warp_sum(p_sum);
        }
        __syncwarp();
        accumulate_ab(Os + row0 * ldf, ldf, Ps + row0 * ldp, ldp, Vs, ldh, dp, tile);
    }
    __syncwarp();
#pragma unroll
    for (int rr = 0; rr < AH_FRAG; rr++) {
        const int r = row0 + rr, s = i0 + r;
        if (s >= sh.seq) continue;
        // Key s = query s is always visible, so l >= 1 here.
        const float inv = 1.0f / l[rr];
        float *orow = out + ((size_t)b * sh.seq + s) * sh.q_stride + (size_t)h * sh.d;
        for (int x = lane; x < sh.d; x += 32) orow[x] = Os[r * ldf + x] * inv;
        if (lane == 0) lse[((size_t)b * sh.n_heads + h) * sh.seq + s] = m[rr] + logf(l[rr]);
    }
}

// ------------------------------------------------------------------ backward

// D[b, h, s] = round(dout_s) . widen(out_half_s) in fp32, one warp per row (dout as the
// other backward kernels see it; out_half's rows ld_out apart); and, unless dout_half is NULL,
// round(dout) itself (to_half's bits, [tokens, n_heads * d]) for the mma kernels, in the same
// pass over dout.
template <typename T>
__global__ void attention_half_row_dots_kernel(float *D, uint16_t *dout_half, const float *dout,
                                               const uint16_t *out_half, int ld_out, ah_shape sh) {
    size_t row, token;
    int h;
    if (!attention_row_of_warp(sh, &row, &token, &h)) return;  // whole warps leave together
    const int lane = threadIdx.x % 32;
    const float *dout_row = dout + token * sh.q_stride + (size_t)h * sh.d;
    const uint16_t *out_row = out_half + token * (size_t)ld_out + (size_t)h * sh.d;
    uint16_t *rounded_row = dout_half ? dout_half + token * sh.q_stride + (size_t)h * sh.d : NULL;
    float sum = 0.0f;
    for (int x = lane; x < sh.d; x += 32) {
        sum += half_ops<T>::to(half_ops<T>::from(dout_row[x])) * half_widen<half_ops<T>::fmt>(out_row[x]);
        if (rounded_row) rounded_row[x] = half_bits<half_ops<T>::fmt>(dout_row[x]);
    }
    sum = warp_sum(sum);
    if (lane == 0) D[row] = sum;
}

// dq = scale dS K: one block per (query tile, head, sequence), key tiles ascending.
template <typename T>
__global__ void __launch_bounds__(128)
    attention_bwd_dq_half_kernel(float *dq, const float *dout, const float *q, const float *k,
                                 const float *v, const float *lse, const float *D, ah_shape sh) {
    extern __shared__ __align__(128) unsigned char ah_smem[];
    const int tile = sh.tile, dp = sh.dp;
    const int ldh = ld_half(dp), ldf = ld_acc(dp), lds = ld_score(tile), ldp = ld_prob(tile);
    const ah_sizes z = region_sizes(tile, dp);
    smem_cursor cur = {ah_smem};
    T *Qs = cur.take<T>(z.half_tile), *dOs = cur.take<T>(z.half_tile);
    T *Ks = cur.take<T>(z.half_tile), *Vs = cur.take<T>(z.half_tile);
    float *dQs = cur.take<float>(z.acc_tile);
    float *Ss = cur.take<float>(z.score_tile), *dPs = cur.take<float>(z.score_tile);
    T *dSs = cur.take<T>(z.prob_tile);
    int32_t *qdoc = cur.take<int32_t>(z.row_ints), *kdoc = cur.take<int32_t>(z.row_ints);
    float *row_lse = cur.take<float>(z.row_floats), *row_D = cur.take<float>(z.row_floats);

    const int n_tiles = (sh.seq + tile - 1) / tile;
    const int i0 = (n_tiles - 1 - (int)blockIdx.x) * tile;
    const int h = blockIdx.y, b = blockIdx.z, g = h / sh.group;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, row0 = warp * AH_FRAG;
    const int first_query = i0 + row0;

    load_tile_half(Qs, ldh, q, sh.q_stride, sh, b, i0, h);
    load_tile_half(dOs, ldh, dout, sh.q_stride, sh, b, i0, h);
    load_docs_half(qdoc, sh, b, i0);
    load_row_stats(row_lse, row_D, lse, D, sh, b, h, i0);
    zero_floats(dQs, (size_t)tile * ldf);
    const int last_query = min(i0 + tile, sh.seq) - 1;
    for (int j0 = 0; j0 <= last_query; j0 += tile) {
        __syncthreads();
        load_tile_half(Ks, ldh, k, sh.kv_stride, sh, b, j0, g);
        load_tile_half(Vs, ldh, v, sh.kv_stride, sh, b, j0, g);
        load_docs_half(kdoc, sh, b, j0);
        __syncthreads();
        if (first_query >= sh.seq || j0 > first_query + AH_FRAG - 1) continue;  // dS = 0
        product_abt(Ss + row0 * lds, lds, Qs + row0 * ldh, ldh, Ks, ldh, dp, tile);
        product_abt(dPs + row0 * lds, lds, dOs + row0 * ldh, ldh, Vs, ldh, dp, tile);
        __syncwarp();
        for (int e = lane; e < AH_FRAG * tile; e += 32) {
            const int r = row0 + e / tile, c = e % tile;
            float ds = 0.0f;
            if (ah_visible(sh, i0 + r, j0 + c, qdoc[r], kdoc[c])) {
                const float p = expf(sh.scale * Ss[r * lds + c] - row_lse[r]);
                ds = p * (dPs[r * lds + c] - row_D[r]);
            }
            dSs[r * ldp + c] = half_ops<T>::from(ds);
        }
        __syncwarp();
        accumulate_ab(dQs + row0 * ldf, ldf, dSs + row0 * ldp, ldp, Ks, ldh, dp, tile);
    }
    __syncwarp();
    for (int rr = 0; rr < AH_FRAG; rr++) {
        const int r = row0 + rr, s = i0 + r;
        if (s >= sh.seq) break;
        float *row = dq + ((size_t)b * sh.seq + s) * sh.q_stride + (size_t)h * sh.d;
        for (int x = lane; x < sh.d; x += 32) row[x] = sh.scale * dQs[r * ldf + x];
    }
}

// dk = scale dS^T Q, dv = P^T dO: one block per (key tile, kv head, sequence), looping
// over the query heads of the group, then the query tiles from the key tile on.
template <typename T>
__global__ void __launch_bounds__(128)
    attention_bwd_dkv_half_kernel(float *dk, float *dv, const float *dout, const float *q,
                                  const float *k, const float *v, const float *lse,
                                  const float *D, ah_shape sh) {
    extern __shared__ __align__(128) unsigned char ah_smem[];
    const int tile = sh.tile, dp = sh.dp;
    const int ldh = ld_half(dp), ldf = ld_acc(dp), lds = ld_score(tile), ldp = ld_prob(tile);
    const ah_sizes z = region_sizes(tile, dp);
    smem_cursor cur = {ah_smem};
    T *Ks = cur.take<T>(z.half_tile), *Vs = cur.take<T>(z.half_tile);
    T *Qs = cur.take<T>(z.half_tile), *dOs = cur.take<T>(z.half_tile);
    float *dKs = cur.take<float>(z.acc_tile), *dVs = cur.take<float>(z.acc_tile);
    float *Ss = cur.take<float>(z.score_tile), *dPs = cur.take<float>(z.score_tile);
    T *Ps = cur.take<T>(z.prob_tile), *dSs = cur.take<T>(z.prob_tile);
    int32_t *qdoc = cur.take<int32_t>(z.row_ints), *kdoc = cur.take<int32_t>(z.row_ints);
    float *row_lse = cur.take<float>(z.row_floats), *row_D = cur.take<float>(z.row_floats);

    const int j0 = blockIdx.x * tile, g = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, row0 = warp * AH_FRAG;
    const int first_key = j0 + row0;  // of this warp

    load_tile_half(Ks, ldh, k, sh.kv_stride, sh, b, j0, g);
    load_tile_half(Vs, ldh, v, sh.kv_stride, sh, b, j0, g);
    load_docs_half(kdoc, sh, b, j0);
    zero_floats(dKs, (size_t)tile * ldf);
    zero_floats(dVs, (size_t)tile * ldf);
    for (int h = g * sh.group; h < (g + 1) * sh.group; h++) {
        // Query tiles are aligned with key tiles and as long: earlier ones see no key here.
        for (int i0 = j0; i0 < sh.seq; i0 += tile) {
            __syncthreads();
            load_tile_half(Qs, ldh, q, sh.q_stride, sh, b, i0, h);
            load_tile_half(dOs, ldh, dout, sh.q_stride, sh, b, i0, h);
            load_docs_half(qdoc, sh, b, i0);
            load_row_stats(row_lse, row_D, lse, D, sh, b, h, i0);
            __syncthreads();
            // Keys all padding, or all after the tile's last query: P = dS = 0.
            if (first_key >= sh.seq || first_key > min(i0 + tile, sh.seq) - 1) continue;
            product_abt(Ss + row0 * lds, lds, Ks + row0 * ldh, ldh, Qs, ldh, dp, tile);
            product_abt(dPs + row0 * lds, lds, Vs + row0 * ldh, ldh, dOs, ldh, dp, tile);
            __syncwarp();
            for (int e = lane; e < AH_FRAG * tile; e += 32) {
                const int r = row0 + e / tile, c = e % tile;  // key row r, query column c
                float p = 0.0f, ds = 0.0f;
                if (ah_visible(sh, i0 + c, j0 + r, qdoc[c], kdoc[r])) {
                    p = expf(sh.scale * Ss[r * lds + c] - row_lse[c]);
                    ds = p * (dPs[r * lds + c] - row_D[c]);
                }
                Ps[r * ldp + c] = half_ops<T>::from(p);
                dSs[r * ldp + c] = half_ops<T>::from(ds);
            }
            __syncwarp();
            accumulate_ab(dVs + row0 * ldf, ldf, Ps + row0 * ldp, ldp, dOs, ldh, dp, tile);
            accumulate_ab(dKs + row0 * ldf, ldf, dSs + row0 * ldp, ldp, Qs, ldh, dp, tile);
        }
    }
    __syncwarp();
    for (int rr = 0; rr < AH_FRAG; rr++) {
        const int r = row0 + rr, j = j0 + r;
        if (j >= sh.seq) break;
        const size_t off = ((size_t)b * sh.seq + j) * sh.kv_stride + (size_t)g * sh.d;
        for (int x = lane; x < sh.d; x += 32) {
            dk[off + x] = sh.scale * dKs[r * ldf + x];
            dv[off + x] = dVs[r * ldf + x];
        }
    }
}

// ------------------------------------------------------------------ fp32 operands

// x rounded to T and widened back: what the tensor-core kernels read, in fp32.
template <typename T>
__global__ void round_trip_kernel(float *out, const float *x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = half_ops<T>::to(half_ops<T>::from(x[i]));
}

// The widened rows [rows, cols] of a 16-bit tensor whose rows are ld_x apart, contiguous.
template <typename T>
__global__ void widen_rows_kernel(float *out, const uint16_t *x, int ld_x, int cols, size_t n) {
    GRID_STRIDE_LOOP(i, n) out[i] = half_widen<half_ops<T>::fmt>(x[i / cols * (size_t)ld_x + i % cols]);
}

// Stream-ordered fp32 scratch of n floats; NULL (recorded) when allocation fails.
static float *scratch_floats(size_t n) {
    float *x = NULL;
    CUDA_CHECK(cudaMallocAsync((void **)&x, (n ? n : 1) * sizeof(float), 0));
    return x;
}

// A stream-ordered device copy of x rounded to fmt; NULL (recorded) when allocation fails.
static float *rounded_copy(kernels_half_format fmt, const float *x, size_t n) {
    float *copy = scratch_floats(n);
    if (!copy) return NULL;
    if (fmt == KERNELS_BF16)
        CUDA_LAUNCH(cuda_grid_for(n), CUDA_THREADS, 0, round_trip_kernel<__nv_bfloat16>)(copy, x, n);
    else
        CUDA_LAUNCH(cuda_grid_for(n), CUDA_THREADS, 0, round_trip_kernel<__half>)(copy, x, n);
    CUDA_CHECK_LAUNCH();
    return copy;
}

// A stream-ordered fp32 copy of rows [rows, cols] of the 16-bit x (rows ld_x apart), widened
// (exact); NULL (recorded) when allocation fails.
static float *widened_copy(kernels_half_format fmt, const uint16_t *x, size_t rows, int cols, int ld_x) {
    const size_t n = rows * cols;
    float *copy = scratch_floats(n);
    if (!copy || !n) return copy;
    if (ld_x == cols) {
        cuda_from_half(copy, x, n, fmt);
        return copy;
    }
    if (fmt == KERNELS_BF16)
        CUDA_LAUNCH(cuda_grid_for(n), CUDA_THREADS, 0, widen_rows_kernel<__nv_bfloat16>)(
            copy, x, ld_x, cols, n);
    else
        CUDA_LAUNCH(cuda_grid_for(n), CUDA_THREADS, 0, widen_rows_kernel<__half>)(copy, x, ld_x, cols, n);
    CUDA_CHECK_LAUNCH();
    return copy;
}

static void release_copies(float **copies, int n) {
    for (int i = 0; i < n; i++)
        if (copies[i]) CUDA_CHECK(cudaFreeAsync(copies[i], 0));
}

// ------------------------------------------------------------------ launchers

// The shapes attention.cu runs (any other it records, or, for an empty batch, ignores).
static bool shape_valid(int batch, int seq, int n_heads, int n_kv_heads, int head_dim) {
    return attention_dims_valid(batch, seq, n_heads, n_kv_heads, head_dim, AH_MAX_D);
}

// out_half's rows must not overlap: false, recorded, where ld_out < n_heads * head_dim.
static bool ld_out_fits(const char *op, int ld_out, int n_heads, int head_dim, int line) {
    if (ld_out >= n_heads * head_dim) return true;  // both at most 65535 * 256 here
    char message[96];
    snprintf(message, sizeof message, "ld_out %d < n_heads * head_dim = %d", ld_out, n_heads * head_dim);
    ctune_cuda_record(__FILE__, line, op, message);
    return false;
}

// Fills sh for the tensor-core kernel `kernel` (of a valid shape): false for the shapes it
// does not take (the caller falls back). The tile is the largest of 64 and 32 whose layout
// (bytes_of) fits in what the kernel may use on this device (opted in here, once per device).
static bool half_shape(ah_shape *sh, size_t (*bytes_of)(int, int), const void *kernel,
                       size_t *bytes, const int32_t *doc_ids, int batch, int seq, int n_heads,
                       int n_kv_heads, int head_dim, float scale) {
    if (!shape_valid(batch, seq, n_heads, n_kv_heads, head_dim)) return false;
    const int dp = (head_dim + AH_FRAG - 1) / AH_FRAG * AH_FRAG;
    const size_t limit = cuda_smem_opt_in(kernel);
    int tile = 64;
    if (bytes_of(tile, dp) > limit) tile = 32;
    if (bytes_of(tile, dp) > limit) return false;
    attention_dims_fill(sh, doc_ids, batch, seq, n_heads, n_kv_heads, head_dim, scale);
    sh->dp = dp;
    sh->tile = tile;
    *bytes = bytes_of(tile, dp);
    return true;
}

template <typename T>
static void launch_fwd(float *out, float *lse, const float *q, const float *k, const float *v,
                       const ah_shape &sh, size_t bytes) {
    const dim3 grid((unsigned)((sh.seq + sh.tile - 1) / sh.tile), (unsigned)sh.n_heads,
                    (unsigned)sh.batch);
    CUDA_LAUNCH(grid, sh.tile / AH_FRAG * 32, bytes, attention_fwd_half_kernel<T>)(out, lse, q, k, v, sh);
    CUDA_CHECK_LAUNCH();
}

// D from out_half, then attention_mma.cu where it takes the shape (16-bit q, k, v as they
// are; dout rounded by the pass that makes D), else the WMMA kernels on q, k, v widened into
// fp32 scratch.
template <typename T>
static void launch_bwd(size_t ds_budget, float *dq, float *dk, float *dv, const float *dout, const uint16_t *q,
                       const uint16_t *k, const uint16_t *v, const uint16_t *out_half, int ld_out,
                       const float *lse, const ah_shape &dq_sh, size_t dq_smem, const ah_shape &dkv_sh,
                       size_t dkv_smem) {
    const size_t rows = (size_t)dq_sh.batch * dq_sh.n_heads * dq_sh.seq;
    const bool mma = attention_mma_bwd_takes(q, k, v, dq_sh.batch, dq_sh.seq, dq_sh.n_heads, dq_sh.n_kv, dq_sh.d,
                                             ds_budget);
    float *D = scratch_floats(rows);
    if (!D) return;
    uint16_t *dout_half = NULL;
    if (mma) {
        CUDA_CHECK(cudaMallocAsync((void **)&dout_half, rows * dq_sh.d * sizeof(uint16_t), 0));
        if (!dout_half) {  // recorded: the run stops with its message
            CUDA_CHECK(cudaFreeAsync(D, 0));
            return;
        }
    }
    const size_t dot_threads = rows * 32;
    CUDA_LAUNCH((unsigned)((dot_threads + CUDA_THREADS - 1) / CUDA_THREADS), CUDA_THREADS, 0,
                attention_half_row_dots_kernel<T>)(D, dout_half, dout, out_half, ld_out, dq_sh);
    CUDA_CHECK_LAUNCH();
    const kernels_half_format fmt = half_ops<T>::fmt;
    if (mma) {
        if (!attention_mma_bwd(fmt, dq, dk, dv, dout_half, q, k, v, lse, D, dq_sh.doc_ids, dq_sh.batch, dq_sh.seq,
                               dq_sh.n_heads, dq_sh.n_kv, dq_sh.d, dq_sh.scale, ds_budget))
            ctune_cuda_record(__FILE__, __LINE__, "attention_bwd_half", "the mma backward refused a shape it takes");
        CUDA_CHECK(cudaFreeAsync(dout_half, 0));
        CUDA_CHECK(cudaFreeAsync(D, 0));
        return;
    }

    const size_t tokens = (size_t)dq_sh.batch * dq_sh.seq;
    const int q_width = (int)dq_sh.q_stride, kv_width = (int)dq_sh.kv_stride;
    float *wide[3] = {widened_copy(fmt, q, tokens, q_width, q_width),
                      widened_copy(fmt, k, tokens, kv_width, kv_width),
                      widened_copy(fmt, v, tokens, kv_width, kv_width)};
    if (wide[0] && wide[1] && wide[2]) {
        const dim3 dq_grid((unsigned)((dq_sh.seq + dq_sh.tile - 1) / dq_sh.tile),
                           (unsigned)dq_sh.n_heads, (unsigned)dq_sh.batch);
        CUDA_LAUNCH(dq_grid, dq_sh.tile / AH_FRAG * 32, dq_smem, attention_bwd_dq_half_kernel<T>)(
            dq, dout, wide[0], wide[1], wide[2], lse, D, dq_sh);
        CUDA_CHECK_LAUNCH();

        const dim3 dkv_grid((unsigned)((dkv_sh.seq + dkv_sh.tile - 1) / dkv_sh.tile),
                            (unsigned)dkv_sh.n_kv, (unsigned)dkv_sh.batch);
        CUDA_LAUNCH(dkv_grid, dkv_sh.tile / AH_FRAG * 32, dkv_smem, attention_bwd_dkv_half_kernel<T>)(
            dk, dv, dout, wide[0], wide[1], wide[2], lse, D, dkv_sh);
        CUDA_CHECK_LAUNCH();
    }
    release_copies(wide, 3);
    CUDA_CHECK(cudaFreeAsync(D, 0));
}

// The fp32 kernels of attention.cu for a valid shape whose WMMA tile layout does not fit:
// rounded dout, widened q, k, v, and D from the widened out_half (attention.cu computes
// D = rowsum(dout * out) from the fp32 tensors it is given).
static void fallback_bwd(kernels_half_format fmt, float *dq, float *dk, float *dv, const float *dout,
                         const uint16_t *q, const uint16_t *k, const uint16_t *v, const uint16_t *out_half,
                         int ld_out, const float *lse, const int32_t *doc_ids, int batch, int seq, int n_heads,
                         int n_kv_heads, int head_dim, float scale) {
    const size_t tokens = (size_t)batch * seq;
    const int q_width = n_heads * head_dim, kv_width = n_kv_heads * head_dim;
    float *copies[5] = {rounded_copy(fmt, dout, tokens * q_width),
                        widened_copy(fmt, q, tokens, q_width, q_width),
                        widened_copy(fmt, k, tokens, kv_width, kv_width),
                        widened_copy(fmt, v, tokens, kv_width, kv_width),
                        widened_copy(fmt, out_half, tokens, q_width, ld_out)};
    if (copies[0] && copies[1] && copies[2] && copies[3] && copies[4])
        cuda_attention_bwd(dq, dk, dv, copies[0], copies[1], copies[2], copies[3], copies[4], lse,
                           doc_ids, batch, seq, n_heads, n_kv_heads, head_dim, scale);
    release_copies(copies, 5);
}

extern "C" void cuda_attention_fwd_half_rows(int warp_rows, kernels_half_format fmt, uint16_t *out_half,
                                             int ld_out, float *out, float *lse, const uint16_t *q,
                                             const uint16_t *k, const uint16_t *v, const int32_t *doc_ids, int batch,
                                             int seq, int n_heads, int n_kv_heads, int head_dim, float scale) {
    if (!cuda_known_half_format(fmt, "attention_fwd_half", __FILE__, __LINE__)) return;
    if (!shape_valid(batch, seq, n_heads, n_kv_heads, head_dim)) {
        // attention.cu records the shape (or ignores an empty batch) and touches no buffer.
        cuda_attention_fwd(NULL, NULL, NULL, NULL, NULL, doc_ids, batch, seq, n_heads, n_kv_heads,
                           head_dim, scale);
        return;
    }
    if (!ld_out_fits("attention_fwd_half", ld_out, n_heads, head_dim, __LINE__)) return;
    if (attention_mma_fwd(fmt, warp_rows, out_half, ld_out, out, lse, q, k, v, doc_ids, batch, seq, n_heads,
                          n_kv_heads, head_dim, scale))
        return;
    ah_shape sh;
    size_t bytes = 0;
    const bool bf16 = fmt == KERNELS_BF16;
    const void *kernel = bf16 ? (const void *)attention_fwd_half_kernel<__nv_bfloat16>
                              : (const void *)attention_fwd_half_kernel<__half>;
    // false: the fp32 kernels of attention.cu (the WMMA tile layout does not fit)
    const bool wmma = half_shape(&sh, fwd_bytes, kernel, &bytes, doc_ids, batch, seq, n_heads,
                                 n_kv_heads, head_dim, scale);
    const size_t tokens = (size_t)batch * seq;
    const int q_width = n_heads * head_dim, kv_width = n_kv_heads * head_dim;
    float *copies[4] = {widened_copy(fmt, q, tokens, q_width, q_width),
                        widened_copy(fmt, k, tokens, kv_width, kv_width),
                        widened_copy(fmt, v, tokens, kv_width, kv_width),
                        out ? NULL : scratch_floats(tokens * q_width)};
    float *out32 = out ? out : copies[3];
    if (copies[0] && copies[1] && copies[2] && out32) {
        if (!wmma)
            cuda_attention_fwd(out32, lse, copies[0], copies[1], copies[2], doc_ids, batch, seq, n_heads,
                               n_kv_heads, head_dim, scale);
        else if (bf16)
            launch_fwd<__nv_bfloat16>(out32, lse, copies[0], copies[1], copies[2], sh, bytes);
        else
            launch_fwd<__half>(out32, lse, copies[0], copies[1], copies[2], sh, bytes);
        cuda_to_half_2d(fmt, out_half, ld_out, out32, q_width, (int)tokens, q_width, 1.0f);
    }
    release_copies(copies, 4);
}

extern "C" void cuda_attention_fwd_half(kernels_half_format fmt, uint16_t *out_half, int ld_out, float *out,
                                        float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                                        const int32_t *doc_ids, int batch, int seq, int n_heads,
                                        int n_kv_heads, int head_dim, float scale) {
    cuda_attention_fwd_half_rows(AM_FWD_WARP_ROWS, fmt, out_half, ld_out, out, lse, q, k, v, doc_ids, batch, seq,
                                 n_heads, n_kv_heads, head_dim, scale);
}

extern "C" void cuda_attention_bwd_half_budget(size_t ds_budget, kernels_half_format fmt, float *dq, float *dk,
                                               float *dv, const float *dout, const uint16_t *q, const uint16_t *k,
                                               const uint16_t *v, const uint16_t *out_half, int ld_out,
                                               const float *lse, const int32_t *doc_ids, int batch, int seq,
                                               int n_heads, int n_kv_heads, int head_dim, float scale) {
    if (!cuda_known_half_format(fmt, "attention_bwd_half", __FILE__, __LINE__)) return;
    if (!shape_valid(batch, seq, n_heads, n_kv_heads, head_dim)) {
        cuda_attention_bwd(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, doc_ids, batch, seq,
                           n_heads, n_kv_heads, head_dim, scale);
        return;
    }
    if (!ld_out_fits("attention_bwd_half", ld_out, n_heads, head_dim, __LINE__)) return;
    ah_shape dq_sh, dkv_sh;
    size_t dq_smem = 0, dkv_smem = 0;
    const bool bf16 = fmt == KERNELS_BF16;
    const void *dq_kernel = bf16 ? (const void *)attention_bwd_dq_half_kernel<__nv_bfloat16>
                                 : (const void *)attention_bwd_dq_half_kernel<__half>;
    const void *dkv_kernel = bf16 ? (const void *)attention_bwd_dkv_half_kernel<__nv_bfloat16>
                                  : (const void *)attention_bwd_dkv_half_kernel<__half>;
    if (!half_shape(&dq_sh, dq_bytes, dq_kernel, &dq_smem, doc_ids, batch, seq, n_heads,
                    n_kv_heads, head_dim, scale) ||
        !half_shape(&dkv_sh, dkv_bytes, dkv_kernel, &dkv_smem, doc_ids, batch, seq, n_heads,
                    n_kv_heads, head_dim, scale)) {
        fallback_bwd(fmt, dq, dk, dv, dout, q, k, v, out_half, ld_out, lse, doc_ids, batch, seq, n_heads,
                     n_kv_heads, head_dim, scale);
        return;
    }
    if (bf16)
        launch_bwd<__nv_bfloat16>(ds_budget, dq, dk, dv, dout, q, k, v, out_half, ld_out, lse, dq_sh, dq_smem,
                                  dkv_sh, dkv_smem);
    else
        launch_bwd<__half>(ds_budget, dq, dk, dv, dout, q, k, v, out_half, ld_out, lse, dq_sh, dq_smem, dkv_sh,
                           dkv_smem);
}

extern "C" void cuda_attention_bwd_half(kernels_half_format fmt, float *dq, float *dk, float *dv, const float *dout,
                                        const uint16_t *q, const uint16_t *k, const uint16_t *v,
                                        const uint16_t *out_half, int ld_out, const float *lse,
                                        const int32_t *doc_ids, int batch, int seq, int n_heads,
                                        int n_kv_heads, int head_dim, float scale) {
    cuda_attention_bwd_half_budget(AM_DS_BUDGET, fmt, dq, dk, dv, dout, q, k, v, out_half, ld_out, lse, doc_ids,
                                   batch, seq, n_heads, n_kv_heads, head_dim, scale);
}

// The backward's scratch is the larger: D, then the mma path's staged dout and dS chunk, or the
// other paths' fp32 copies (at most five tensors the size of the inputs: the fp32 fallback's).
// The fp32 attention allocates only D.
extern "C" size_t cuda_attention_scratch_bytes(bool half, int batch, int seq, int n_heads, int n_kv_heads,
                                               int head_dim) {
    if (!shape_valid(batch, seq, n_heads, n_kv_heads, head_dim)) return 0;
    const size_t tokens = (size_t)batch * seq, D = (size_t)batch * n_heads * seq * sizeof(float);
    if (!half) return D;
    const size_t mma = attention_mma_bwd_scratch_bytes(batch, seq, n_heads, n_kv_heads, head_dim, AM_DS_BUDGET);
    if (mma) return D + mma;
    return D + tokens * (3 * (size_t)n_heads + 2 * (size_t)n_kv_heads) * (size_t)head_dim * sizeof(float);
}
