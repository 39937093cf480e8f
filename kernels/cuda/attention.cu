// Causal grouped-query attention in fp32, flash-attention style, mirroring the semantics of
// kernels/cpu/attention.c (see kernels.h for shapes): query s of sequence b sees key j when
// j <= s and, with doc_ids, doc[j] == doc[s]; S = scale * (q.k); lse = m + log(l);
// query head h reads kv head h / (n_heads / n_kv_heads).
//
// Tiling. A block has ATT_WARPS warps; every warp owns ATT_ROWS rows of a tile of
// ATT_TILE = ATT_WARPS * ATT_ROWS rows (queries in the forward and dq, keys in dk/dv), and
// the block walks the tiles of the other side (ATT_TILE rows each) through shared memory.
// Inside a warp, lane c handles row c of the streamed tile: it computes one score as a
// full dot product (the streamed rows are stored with stride d+1, so 32 lanes reading 32
// different rows at the same column hit 32 different banks), the warp reduces max/sum
// with shuffles, and the weighted sums of the streamed rows accumulate in registers,
// lane c holding columns c, c+32, ... (so head_dim <= ATT_MAX_D). No seq x seq matrix
// exists; tiles wholly above the diagonal are never loaded.
//
// Forward: per query row an online softmax (running max m and sum l; when a tile raises m,
// the accumulator and l are rescaled by exp(m_old - m_new)); out = acc * (1/l).
// Backward (FlashAttention-2): P = exp(S - lse), D_s = dout_s.out_s, dP = dout V^T,
// dS = P (dP - D); dq = scale dS K (one kernel over query tiles), dk = scale dS^T Q and
// dv = P^T dout (one kernel over key tiles of a kv head, looping over the query heads of
// its group and then the query tiles, ascending). Every output row has exactly one writer
// and a fixed summation order: no atomics, deterministic.
//
// fp32 throughout with CUDA's full-precision expf/logf (2 ulp; the CPU uses its own
// cpu_expf, within 2 ulp), so results agree with the CPU backend to rounding, not bits.
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "kernels/cuda/attention_dims.cuh"
#include "kernels/cuda/cuda_common.cuh"

#define ATT_WARPS 8
#define ATT_ROWS 4
#define ATT_TILE (ATT_WARPS * ATT_ROWS)
#define ATT_MAX_D 256
#define ATT_CHUNKS (ATT_MAX_D / 32)
#define FULL_MASK 0xffffffffu

typedef attention_dims att_shape;

__device__ inline float dot_row(const float *a, const float *b, int d) {
    float sum = 0.0f;
    for (int x = 0; x < d; x++) sum += a[x] * b[x];
    return sum;
}

// Copies rows [r0, r0+ATT_TILE) (those < seq; the rest zero) of one head of a
// [batch*seq, stride] tensor into shared memory with row stride ld.
__device__ void load_tile(float *dst, int ld, const float *src, size_t stride, const att_shape &sh,
                          int b, int r0, int head) {
    const int d = sh.d;
    for (int e = threadIdx.x; e < ATT_TILE * d; e += blockDim.x) {
        const int r = e / d, x = e % d, s = r0 + r;
        dst[r * ld + x] =
            s < sh.seq ? src[((size_t)b * sh.seq + s) * stride + (size_t)head * d + x] : 0.0f;
    }
}

// Document ids of rows [r0, r0+ATT_TILE) (-1 past the end, which no visible pair uses).
__device__ void load_docs(int32_t *dst, const att_shape &sh, int b, int r0) {
    for (int r = threadIdx.x; r < ATT_TILE; r += blockDim.x) {
        const int s = r0 + r;
        dst[r] = sh.doc_ids && s < sh.seq ? sh.doc_ids[(size_t)b * sh.seq + s] : -1;
    }
}

__device__ inline bool visible(const att_shape &sh, int query, int key, int32_t query_doc,
                               int32_t key_doc) {
    return query < sh.seq && key <= query && (!sh.doc_ids || query_doc == key_doc);
}

// ---- forward: one block per (query tile, head, sequence) ----
__global__ void __launch_bounds__(ATT_WARPS * 32)
    attention_fwd_kernel(float *out, float *lse, const float *q, const float *k, const float *v,
                         att_shape sh) {
    extern __shared__ float smem[];
    __shared__ int32_t qdoc[ATT_TILE], kdoc[ATT_TILE];
    const int d = sh.d, n_tiles = (sh.seq + ATT_TILE - 1) / ATT_TILE;
    const int i0 = (n_tiles - 1 - (int)blockIdx.x) * ATT_TILE;  // long rows first
    const int h = blockIdx.y, b = blockIdx.z, g = h / sh.group;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float *Qs = smem, *Ks = Qs + ATT_TILE * d, *Vs = Ks + ATT_TILE * (d + 1);

    load_tile(Qs, d, q, sh.q_stride, sh, b, i0, h);
    load_docs(qdoc, sh, b, i0);
    float m[ATT_ROWS], l[ATT_ROWS], acc[ATT_ROWS][ATT_CHUNKS];
#pragma unroll
    for (int rr = 0; rr < ATT_ROWS; rr++) {
        m[rr] = -INFINITY;
        l[rr] = 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_CHUNKS; i++) acc[rr][i] = 0.0f;
    }
    const int last_query = min(i0 + ATT_TILE, sh.seq) - 1;
    for (int j0 = 0; j0 <= last_query; j0 += ATT_TILE) {
        __syncthreads();  // the previous key tile is consumed (and Qs/qdoc are loaded)
        load_tile(Ks, d + 1, k, sh.kv_stride, sh, b, j0, g);
        load_tile(Vs, d, v, sh.kv_stride, sh, b, j0, g);
        load_docs(kdoc, sh, b, j0);
        __syncthreads();
#pragma unroll
        for (int rr = 0; rr < ATT_ROWS; rr++) {
            const int r = warp * ATT_ROWS + rr, s = i0 + r, j = j0 + lane;
            const bool seen = visible(sh, s, j, qdoc[r], kdoc[lane]);
            float score = -INFINITY;
            if (seen) score = sh.scale * dot_row(Qs + r * d, Ks + lane * (d + 1), d);
            const float tile_max = warp_max(score);
            if (tile_max == -INFINITY) continue;  // warp-uniform: nothing visible here
            if (tile_max > m[rr]) {
                if (l[rr] != 0.0f) {
                    const float corr = expf(m[rr] - tile_max);
                    l[rr] *= corr;
#pragma unroll
                    for (int i = 0; i < ATT_CHUNKS; i++) acc[rr][i] *= corr;
                }
                m[rr] = tile_max;
            }
            const float p = seen ? expf(score - m[rr]) : 0.0f;
            l[rr] += warp_sum(p);
            const int n_keys = min(ATT_TILE, s - j0 + 1);  // keys past s have p = 0
            for (int c = 0; c < n_keys; c++) {
                const float pc = __shfl_sync(FULL_MASK, p, c);
                const float *vrow = Vs + c * d;
#pragma unroll
                for (int i = 0; i < ATT_CHUNKS; i++) {
                    const int x = lane + 32 * i;
                    if (x < d) acc[rr][i] += pc * vrow[x];
                }
            }
        }
    }
#pragma unroll
    for (int rr = 0; rr < ATT_ROWS; rr++) {
        const int s = i0 + warp * ATT_ROWS + rr;
        if (s >= sh.seq) continue;
        // Key s = query s is always visible, so l >= 1 here.
        const float inv = 1.0f / l[rr];
        float *orow = out + ((size_t)b * sh.seq + s) * sh.q_stride + (size_t)h * d;
#pragma unroll
        for (int i = 0; i < ATT_CHUNKS; i++) {
            const int x = lane + 32 * i;
            if (x < d) orow[x] = acc[rr][i] * inv;
        }
        if (lane == 0) lse[((size_t)b * sh.n_heads + h) * sh.seq + s] = m[rr] + logf(l[rr]);
    }
}

// ---- backward, step 1: D[b, h, s] = dout_s . out_s, one warp per row ----
__global__ void attention_row_dots_kernel(float *D, const float *dout, const float *out,
                                          att_shape sh) {
    size_t row, token;
    int h;
    if (!attention_row_of_warp(sh, &row, &token, &h)) return;  // whole warps leave together
    const int lane = threadIdx.x % 32;
    const size_t off = token * sh.q_stride + (size_t)h * sh.d;
    float sum = 0.0f;
    for (int x = lane; x < sh.d; x += 32) sum += dout[off + x] * out[off + x];
    sum = warp_sum(sum);
    if (lane == 0) D[row] = sum;
}

// ---- backward, step 2: dq, one block per (query tile, head, sequence) ----
__global__ void __launch_bounds__(ATT_WARPS * 32)
    attention_bwd_dq_kernel(float *dq, const float *dout, const float *q, const float *k,
                            const float *v, const float *lse, const float *D, att_shape sh) {
    extern __shared__ float smem[];
    __shared__ int32_t qdoc[ATT_TILE], kdoc[ATT_TILE];
    const int d = sh.d, n_tiles = (sh.seq + ATT_TILE - 1) / ATT_TILE;
    const int i0 = (n_tiles - 1 - (int)blockIdx.x) * ATT_TILE;
    const int h = blockIdx.y, b = blockIdx.z, g = h / sh.group;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float *Qs = smem, *dOs = Qs + ATT_TILE * d, *Ks = dOs + ATT_TILE * d,
          *Vs = Ks + ATT_TILE * (d + 1);

    load_tile(Qs, d, q, sh.q_stride, sh, b, i0, h);
    load_tile(dOs, d, dout, sh.q_stride, sh, b, i0, h);
    load_docs(qdoc, sh, b, i0);
    float row_lse[ATT_ROWS], row_D[ATT_ROWS], acc[ATT_ROWS][ATT_CHUNKS];
#pragma unroll
    for (int rr = 0; rr < ATT_ROWS; rr++) {
        const int s = i0 + warp * ATT_ROWS + rr;
        const size_t stat = ((size_t)b * sh.n_heads + h) * sh.seq + s;
        row_lse[rr] = s < sh.seq ? lse[stat] : 0.0f;
        row_D[rr] = s < sh.seq ? D[stat] : 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_CHUNKS; i++) acc[rr][i] = 0.0f;
    }
    const int last_query = min(i0 + ATT_TILE, sh.seq) - 1;
    for (int j0 = 0; j0 <= last_query; j0 += ATT_TILE) {
        __syncthreads();
        load_tile(Ks, d + 1, k, sh.kv_stride, sh, b, j0, g);
        load_tile(Vs, d + 1, v, sh.kv_stride, sh, b, j0, g);
        load_docs(kdoc, sh, b, j0);
        __syncthreads();
#pragma unroll
        for (int rr = 0; rr < ATT_ROWS; rr++) {
            const int r = warp * ATT_ROWS + rr, s = i0 + r, j = j0 + lane;
            const bool seen = visible(sh, s, j, qdoc[r], kdoc[lane]);
            if (!__any_sync(FULL_MASK, seen)) continue;
            float ds = 0.0f;
            if (seen) {
                const float score = sh.scale * dot_row(Qs + r * d, Ks + lane * (d + 1), d);
                const float p = expf(score - row_lse[rr]);
                const float dp = dot_row(dOs + r * d, Vs + lane * (d + 1), d);
                ds = p * (dp - row_D[rr]);
            }
            const int n_keys = min(ATT_TILE, s - j0 + 1);
            for (int c = 0; c < n_keys; c++) {
                const float dsc = __shfl_sync(FULL_MASK, ds, c);
                const float *krow = Ks + c * (d + 1);
#pragma unroll
                for (int i = 0; i < ATT_CHUNKS; i++) {
                    const int x = lane + 32 * i;
                    if (x < d) acc[rr][i] += dsc * krow[x];
                }
            }
        }
    }
#pragma unroll
    for (int rr = 0; rr < ATT_ROWS; rr++) {
        const int s = i0 + warp * ATT_ROWS + rr;
        if (s >= sh.seq) continue;
        float *row = dq + ((size_t)b * sh.seq + s) * sh.q_stride + (size_t)h * d;
#pragma unroll
        for (int i = 0; i < ATT_CHUNKS; i++) {
            const int x = lane + 32 * i;
            if (x < d) row[x] = sh.scale * acc[rr][i];
        }
    }
}

// ---- backward, step 3: dk, dv, one block per (key tile, kv head, sequence) ----
__global__ void __launch_bounds__(ATT_WARPS * 32)
    attention_bwd_dkv_kernel(float *dk, float *dv, const float *dout, const float *q,
                             const float *k, const float *v, const float *lse, const float *D,
                             att_shape sh) {
    extern __shared__ float smem[];
    __shared__ int32_t qdoc[ATT_TILE], kdoc[ATT_TILE];
    __shared__ float tile_lse[ATT_TILE], tile_D[ATT_TILE];
    const int d = sh.d, j0 = blockIdx.x * ATT_TILE;
    const int g = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float *Ks = smem, *Vs = Ks + ATT_TILE * d, *Qs = Vs + ATT_TILE * d,
          *dOs = Qs + ATT_TILE * (d + 1);

    load_tile(Ks, d, k, sh.kv_stride, sh, b, j0, g);
    load_tile(Vs, d, v, sh.kv_stride, sh, b, j0, g);
    load_docs(kdoc, sh, b, j0);
    float dk_acc[ATT_ROWS][ATT_CHUNKS], dv_acc[ATT_ROWS][ATT_CHUNKS];
#pragma unroll
    for (int rr = 0; rr < ATT_ROWS; rr++)
#pragma unroll
        for (int i = 0; i < ATT_CHUNKS; i++) dk_acc[rr][i] = dv_acc[rr][i] = 0.0f;

    for (int h = g * sh.group; h < (g + 1) * sh.group; h++) {
        // Query tiles start at j0 (tiles are aligned and equal on both sides): earlier
        // queries see none of these keys.
        for (int i0 = j0; i0 < sh.seq; i0 += ATT_TILE) {
            __syncthreads();
            load_tile(Qs, d + 1, q, sh.q_stride, sh, b, i0, h);
            load_tile(dOs, d + 1, dout, sh.q_stride, sh, b, i0, h);
            load_docs(qdoc, sh, b, i0);
            for (int r = threadIdx.x; r < ATT_TILE; r += blockDim.x) {
                const int s = i0 + r;
                const size_t stat = ((size_t)b * sh.n_heads + h) * sh.seq + s;
                tile_lse[r] = s < sh.seq ? lse[stat] : 0.0f;
                tile_D[r] = s < sh.seq ? D[stat] : 0.0f;
            }
            __syncthreads();
#pragma unroll
            for (int rr = 0; rr < ATT_ROWS; rr++) {
                const int kr = warp * ATT_ROWS + rr, j = j0 + kr, s = i0 + lane;
                if (j >= sh.seq) continue;  // warp-uniform
                const bool seen = visible(sh, s, j, qdoc[lane], kdoc[kr]);
                if (!__any_sync(FULL_MASK, seen)) continue;
                float p = 0.0f, ds = 0.0f;
                if (seen) {
                    const float score = sh.scale * dot_row(Qs + lane * (d + 1), Ks + kr * d, d);
                    p = expf(score - tile_lse[lane]);
                    const float dp = dot_row(dOs + lane * (d + 1), Vs + kr * d, d);
                    ds = p * (dp - tile_D[lane]);
                }
                for (int c = 0; c < ATT_TILE; c++) {
                    const float pc = __shfl_sync(FULL_MASK, p, c);
                    const float dsc = __shfl_sync(FULL_MASK, ds, c);
                    const float *qrow = Qs + c * (d + 1), *dorow = dOs + c * (d + 1);
#pragma unroll
                    for (int i = 0; i < ATT_CHUNKS; i++) {
                        const int x = lane + 32 * i;
                        if (x < d) {
                            dv_acc[rr][i] += pc * dorow[x];
                            dk_acc[rr][i] += dsc * qrow[x];
                        }
                    }
                }
            }
        }
    }
#pragma unroll
    for (int rr = 0; rr < ATT_ROWS; rr++) {
        const int j = j0 + warp * ATT_ROWS + rr;
        if (j >= sh.seq) continue;
        const size_t off = ((size_t)b * sh.seq + j) * sh.kv_stride + (size_t)g * d;
#pragma unroll
        for (int i = 0; i < ATT_CHUNKS; i++) {
            const int x = lane + 32 * i;
            if (x < d) {
                dk[off + x] = sh.scale * dk_acc[rr][i];
                dv[off + x] = dv_acc[rr][i];
            }
        }
    }
}

// Validates what the kernels rely on; a violation is recorded (cuda_status.h) and the
// call does nothing.
static bool attention_shape(att_shape *sh, const int32_t *doc_ids, int batch, int seq,
                            int n_heads, int n_kv_heads, int head_dim, float scale) {
    if (batch <= 0 || seq <= 0) return false;
    if (!attention_dims_valid(batch, seq, n_heads, n_kv_heads, head_dim, ATT_MAX_D)) {
        ctune_cuda_record(__FILE__, __LINE__, "attention",
                          "unsupported shape (needs 0 < head_dim <= 256, n_heads a multiple "
                          "of n_kv_heads, batch and n_heads <= 65535)");
        return false;
    }
    attention_dims_fill(sh, doc_ids, batch, seq, n_heads, n_kv_heads, head_dim, scale);
    return true;
}

// Shared memory of a kernel: two tiles with row stride d and two with d + 1 (the forward
// has one of the d-stride ones fewer). Above 48 KiB a kernel must opt in.
static size_t tile_bytes(int d, int plain_tiles, int padded_tiles) {
    return sizeof(float) * ATT_TILE * ((size_t)plain_tiles * d + (size_t)padded_tiles * (d + 1));
}

template <typename Kernel>
static void allow_smem(Kernel kernel, size_t bytes) {
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

extern "C" void cuda_attention_fwd(float *out, float *lse, const float *q, const float *k,
                                   const float *v, const int32_t *doc_ids, int batch, int seq,
                                   int n_heads, int n_kv_heads, int head_dim, float scale) {
    att_shape sh;
    if (!attention_shape(&sh, doc_ids, batch, seq, n_heads, n_kv_heads, head_dim, scale)) return;
    const size_t bytes = tile_bytes(head_dim, 2, 1);  // Q, V plain; K padded
    allow_smem(attention_fwd_kernel, bytes);
    const dim3 grid((unsigned)((seq + ATT_TILE - 1) / ATT_TILE), (unsigned)n_heads, (unsigned)batch);
    CUDA_LAUNCH(grid, ATT_WARPS * 32, bytes, attention_fwd_kernel)(out, lse, q, k, v, sh);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_attention_bwd(float *dq, float *dk, float *dv, const float *dout,
                                   const float *q, const float *k, const float *v,
                                   const float *out, const float *lse, const int32_t *doc_ids,
                                   int batch, int seq, int n_heads, int n_kv_heads, int head_dim,
                                   float scale) {
    att_shape sh;
    if (!attention_shape(&sh, doc_ids, batch, seq, n_heads, n_kv_heads, head_dim, scale)) return;
    const size_t rows = (size_t)batch * n_heads * seq;
    float *D = NULL;
    CUDA_CHECK(cudaMallocAsync((void **)&D, rows * sizeof(float), 0));
    if (!D) return;
    const size_t dot_threads = rows * 32;
    CUDA_LAUNCH((unsigned)((dot_threads + CUDA_THREADS - 1) / CUDA_THREADS), CUDA_THREADS, 0,
                attention_row_dots_kernel)(D, dout, out, sh);
    CUDA_CHECK_LAUNCH();

    const unsigned n_tiles = (unsigned)((seq + ATT_TILE - 1) / ATT_TILE);
    const size_t bytes = tile_bytes(head_dim, 2, 2);
    allow_smem(attention_bwd_dq_kernel, bytes);
    CUDA_LAUNCH(dim3(n_tiles, (unsigned)n_heads, (unsigned)batch), ATT_WARPS * 32, bytes,
                attention_bwd_dq_kernel)(dq, dout, q, k, v, lse, D, sh);
    CUDA_CHECK_LAUNCH();
    allow_smem(attention_bwd_dkv_kernel, bytes);
    CUDA_LAUNCH(dim3(n_tiles, (unsigned)n_kv_heads, (unsigned)batch), ATT_WARPS * 32, bytes,
                attention_bwd_dkv_kernel)(dk, dv, dout, q, k, v, lse, D, sh);
    CUDA_CHECK_LAUNCH();
    CUDA_CHECK(cudaFreeAsync(D, 0));
}
