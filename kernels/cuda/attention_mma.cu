// attention_mma: causal grouped-query attention on tensor cores with register accumulators,
// FlashAttention-2 style (mma.sync.m16n8k16, bf16 or fp16 operands, fp32 sums), for head
// sizes 64 and 128. Same contract and arithmetic as attention_half.cu's WMMA kernels (which
// take every other shape): q, k, v arrive as 16-bit tensors of the format (the kernels stream
// them with cp.async, so they must be 16-byte aligned; otherwise the WMMA kernels run); dout
// is rounded once into stream-ordered scratch; softmax statistics, lse and D are fp32; P
// (relative to the running row maximum in the forward) and dS are rounded where they enter a
// product. The forward's epilogue rounds each fp32 output value with half_bits (to_half's
// rounding, half_bits.cuh), so out_half is to_half(out) bit for bit, and writes the fp32 value
// too when the caller asks for it.
//
// Why it is fast where the WMMA kernels are not (H100, Llama-3.2-1B shapes: those ran at
// 9-14 TFLOP/s): mma.sync fixes which lane holds which element of a product, so scores,
// softmax and the output accumulators stay in registers (the WMMA kernels round-trip them
// through shared memory every tile), and the score fragment of S = Q K^T is, element for
// element, the operand fragment P of P V (FlashAttention-2's register reuse).
//
// Tiling: a block has 4 warps and a tile of 64 rows (16 per warp: queries in the forward and
// dq, keys in dk/dv) and streams tiles of 64 rows of the other side through two shared-memory
// buffers (tile t+1 is copied while tile t is multiplied), 16-bit, row-major; fragments come
// from shared memory through ldmatrix (.trans where a product reads the tile as B rather than
// B^T). Every output element has one writer and a fixed summation order (keys ascending; in
// dk/dv the group's heads, then queries ascending): no atomics, the same bits every run. dq
// multiplies the 16-bit dS blocks that dk/dv stored (am_dq_ds_kernel) where they fit a
// scratch budget, and recomputes them otherwise. Exponentials are ex2.approx.ftz of one fused
// multiply-add, score * scale * log2(e) - max (or - lse * log2(e)).
//
// These loops are bound by the warps' own instruction issue, so they are kept lean and
// counted without a GPU: scripts/sass_mix.py prints the instructions per product of each
// loop (docs/kernels.md has the counts).
//
// Fragment layouts of mma.m16n8k16 (PTX ISA, "Matrix fragments for mma.m16n8k16"), lane =
// 4 * gid + tig: A (16 x 16, row-major) a0 = (gid, 2tig..2tig+1), a1 = (gid+8, same),
// a2 = (gid, 2tig+8..), a3 = (gid+8, 2tig+8..); B (16 x 8) b0 = (k 2tig..2tig+1, n gid),
// b1 = (k 2tig+8.., n gid); C (16 x 8, fp32) c0, c1 = (gid, 2tig, 2tig+1), c2, c3 = (gid+8, ..).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "kernels/cuda/attention_dims.cuh"
#include "kernels/cuda/attention_mma.cuh"
#include "kernels/cuda/attention_mma_ptx.cuh"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/half_bits.cuh"

#define AM_ROWS 64                // rows of a block's tile and of a streamed tile
#define AM_THREADS 128            // 4 warps of 16 rows
#define AM_LOG2E 1.4426950408889634f
#define AM_LN2 0.6931471805599453f

struct am_shape : attention_dims {
    float scale_log2;  // scale * log2(e)
};

// ------------------------------------------------------------------ formats

template <typename T>
struct am_format;

template <>
struct am_format<__nv_bfloat16> {
    static constexpr kernels_half_format fmt = KERNELS_BF16;
    static __device__ __forceinline__ __nv_bfloat16 one(float x) { return __float2bfloat16_rn(x); }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __nv_bfloat162 p = __floats2bfloat162_rn(lo, hi);  // lo in the low 16 bits
        return *reinterpret_cast<uint32_t *>(&p);
    }
    static __device__ __forceinline__ void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
        am_mma_bf16(c, a, b0, b1);
    }
};

template <>
struct am_format<__half> {
    static constexpr kernels_half_format fmt = KERNELS_FP16;
    static __device__ __forceinline__ __half one(float x) { return __float2half_rn(x); }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __half2 p = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t *>(&p);
    }
    static __device__ __forceinline__ void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
        am_mma_f16(c, a, b0, b1);
    }
};

// ------------------------------------------------------------------ tiles and fragments

// A thread's fixed share of copying a 64-row tile of DP 16-bit columns: the 8-column piece
// `col` of rows `row`, row + STEP, ... (set once per kernel).
template <int DP>
struct am_copy_place {
    static constexpr int PIECES = DP / 8, STEP = AM_THREADS / PIECES, COPIES = AM_ROWS / STEP;
    int row, col;
    __device__ __forceinline__ am_copy_place() : row((int)threadIdx.x / PIECES), col(8 * ((int)threadIdx.x % PIECES)) {}
};

// Row 0 of one head of a [batch*seq, stride] 16-bit tensor in sequence b.
template <typename T>
__device__ __forceinline__ const T *am_head_rows(const T *src, size_t stride, const am_shape &sh, int b, int head) {
    return src + (size_t)b * sh.seq * stride + (size_t)head * sh.d;
}

// A thread's copies of consecutive 64-row tiles of the same head of N tensors of the same
// shape (K and V, or Q and dO): the address of its first piece of the next tile in each and
// their row, so that a tile costs a pointer step, a bound test and the copy per 16 bytes (the
// generic copy loop, with a division and 64-bit products per piece, was ~500 instructions per
// K/V tile pair: most of a forward step's instructions). The tensors share the row state to
// keep the registers of the kernels' loops (which decide how many blocks an SM holds) low.
template <typename T, int DP, int N>
struct am_tiles {
    static constexpr int STEP = am_copy_place<DP>::STEP;
    const T *next[N];  // each tensor's next piece
    uint32_t step;     // elements from one of the thread's pieces to its next (STEP rows)
    int row;           // the row of the next pieces
    int smem;          // the thread's first piece within a tile in shared memory

    // Tiles from row r0 of a head of each tensor (rows0, rows1: am_head_rows).
    __device__ __forceinline__ am_tiles(size_t stride, int r0, const am_copy_place<DP> &cp, const T *rows0,
                                        const T *rows1 = nullptr)
        : step((uint32_t)(STEP * stride)), row(r0 + cp.row), smem(cp.row * (DP + 8) + cp.col) {
        const T *rows[2] = {rows0, rows1};
#pragma unroll
        for (int n = 0; n < N; n++) next[n] = rows[n] + (size_t)row * stride + cp.col;
    }

    // Starts copying each tensor's next tile into nat0 (nat1) (row-major, stride DP+8: the
    // 16-byte rows of an 8 x 8 ldmatrix block fall in distinct banks; rows past seq become
    // zero) and moves on to the tiles after them. Complete after am_cp_wait and a barrier.
    // tensor0 (tensor1): any address inside the tensor (the kernel's parameter: no register),
    // given to the zero-filled copies.
    __device__ __forceinline__ void load(int seq, T *nat0, const T *tensor0, T *nat1 = nullptr,
                                         const T *tensor1 = nullptr) {
        T *nat[2] = {nat0, nat1};
        const T *tensor[2] = {tensor0, tensor1};
#pragma unroll
        for (int i = 0; i < am_copy_place<DP>::COPIES; i++) {
            const bool valid = row + i * STEP < seq;
#pragma unroll
            for (int n = 0; n < N; n++) {
                am_cp16(nat[n] + smem + i * STEP * (DP + 8), valid ? next[n] : tensor[n], valid);
                next[n] += step;
            }
        }
        row += AM_ROWS;
    }
};

// Document ids of rows [r0, r0+64) (-1 past the end, where no visible pair looks); nothing
// without documents, where no mask reads them.
__device__ __forceinline__ void am_load_docs(int32_t *dst, const am_shape &sh, int b, int r0) {
    const int r = (int)threadIdx.x, s = r0 + r;
    if (!sh.doc_ids || r >= AM_ROWS) return;
    if (s < sh.seq)
        am_cp4(dst + r, sh.doc_ids + (size_t)b * sh.seq + s, true);
    else
        dst[r] = -1;
}

// A fragment: rows [r0, r0+16), columns [k0, k0+16) of a row-major tile with stride ld
// (blocks: rows r0 / r0+8 at columns k0, then the same at k0+8: a0..a3).
template <typename T>
__device__ __forceinline__ void am_frag_a(uint32_t a[4], const T *x, int ld, int r0, int k0, int lane) {
    am_ldsm(a, x + (r0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + k0 + (lane >> 4) * 8);
}

// B fragments of two n-tiles [n0, n0+8) and [n0+8, n0+16), k in [k0, k0+16), where
// B[k][n] = x[n][k] (x row-major, stride ld): b = {b0, b1} of n0, then {b0, b1} of n0+8.
template <typename T>
__device__ __forceinline__ void am_frag_bt(uint32_t b[4], const T *x, int ld, int n0, int k0, int lane) {
    am_ldsm(b, x + (n0 + (lane & 7) + (lane >> 4) * 8) * ld + k0 + ((lane >> 3) & 1) * 8);
}

// The same where B[k][n] = y[k][n] (y row-major, stride ld): transposed on load.
template <typename T>
__device__ __forceinline__ void am_frag_b(uint32_t b[4], const T *y, int ld, int n0, int k0, int lane) {
    am_ldsm_trans(b, y + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + n0 + (lane >> 4) * 8);
}

// The A fragment of columns [16kc, 16kc+16) of a 16 x 64 fp32 accumulator (8 n-tiles of 8):
// the accumulator's layout is the operand's, so this is a rounding, not a shuffle.
template <typename T>
__device__ __forceinline__ void am_acc_to_a(uint32_t a[4], const float c[8][4], int kc) {
    a[0] = am_format<T>::pack(c[2 * kc][0], c[2 * kc][1]);
    a[1] = am_format<T>::pack(c[2 * kc][2], c[2 * kc][3]);
    a[2] = am_format<T>::pack(c[2 * kc + 1][0], c[2 * kc + 1][1]);
    a[3] = am_format<T>::pack(c[2 * kc + 1][2], c[2 * kc + 1][3]);
}

// A thread's share of a 16 x DP fp32 accumulator, zeroed.
template <int DP>
__device__ __forceinline__ void am_zero(float acc[DP / 8][4]) {
#pragma unroll
    for (int dn = 0; dn < DP / 8; dn++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[dn][e] = 0.0f;
}

// acc[g][16 x 64] = A_g[16 x DP] B^T for RG row groups g, A_g rows [r0 + 64 g, +16) of a
// (row-major, stride DP+8) and B's 64 rows those of bt (same layout): Q K^T, dO V^T, K Q^T,
// V dO^T. Each B fragment loaded serves every group (the forward's two groups per warp halve
// the shared-memory loads per product).
template <typename T, int DP, int RG = 1>
__device__ __forceinline__ void am_product_abt(float (*acc)[8][4], const T *a, int r0, const T *bt, int lane) {
#pragma unroll
    for (int g = 0; g < RG; g++)
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[g][nt][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < DP; kk += 16) {
        uint32_t fa[RG][4];
#pragma unroll
        for (int g = 0; g < RG; g++) am_frag_a(fa[g], a, DP + 8, r0 + g * AM_ROWS, kk, lane);
#pragma unroll
        for (int nt = 0; nt < 8; nt += 2) {
            uint32_t fb[4];
            am_frag_bt(fb, bt, DP + 8, nt * 8, kk, lane);
#pragma unroll
            for (int g = 0; g < RG; g++) {
                am_format<T>::mma(acc[g][nt], fa[g], fb[0], fb[1]);
                am_format<T>::mma(acc[g][nt + 1], fa[g], fb[2], fb[3]);
            }
        }
    }
}

// out[g][16 x DP] += A_g[16 x 64] B for RG row groups g, A_g the 16-bit rounding of acc[g]
// (P or dS) and B the 64 rows of y (row-major, stride DP+8): P V, dS K, P^T dO, dS^T Q; each
// B fragment serves every group. With store_rows (one group), A is also written there as it
// is made (16 rows of 64 16-bit values, row-major; each thread its fragments' column pairs):
// dS for am_dq_ds_kernel, without keeping it alive past its product.
template <typename T, int DP, int RG = 1>
__device__ __forceinline__ void am_accumulate(float (*out)[DP / 8][4], const float (*acc)[8][4], const T *y,
                                              int lane, uint16_t *store_rows = nullptr) {
    static_assert(RG >= 1, "at least one row group");
#pragma unroll
    for (int kc = 0; kc < 4; kc++) {
        uint32_t fa[RG][4];
#pragma unroll
        for (int g = 0; g < RG; g++) am_acc_to_a<T>(fa[g], acc[g], kc);
        if (RG == 1 && store_rows) {  // fa[i]: row gid + 8 (i & 1), columns 16 kc + 8 (i >> 1) + 2 tig, + 1
            const int gid = lane >> 2, tig = lane & 3;
#pragma unroll
            for (int i = 0; i < 4; i++)
                *reinterpret_cast<uint32_t *>(store_rows + (gid + 8 * (i & 1)) * AM_ROWS + 16 * kc + 8 * (i >> 1) +
                                              2 * tig) = fa[0][i];
        }
#pragma unroll
        for (int dn = 0; dn < DP / 8; dn += 2) {
            uint32_t fb[4];
            am_frag_b(fb, y, DP + 8, dn * 8, kc * 16, lane);
#pragma unroll
            for (int g = 0; g < RG; g++) {
                am_format<T>::mma(out[g][dn], fa[g], fb[0], fb[1]);
                am_format<T>::mma(out[g][dn + 1], fa[g], fb[2], fb[3]);
            }
        }
    }
}

// Whether query sees key; the documents (of query and key: qdocs[qi], kdocs[ki], the tiles'
// shared-memory copies) are read only when there are any.
__device__ __forceinline__ bool am_visible(const am_shape &sh, int query, int key, const int32_t *qdocs, int qi,
                                           const int32_t *kdocs, int ki) {
    return query < sh.seq && key <= query && (!sh.doc_ids || qdocs[qi] == kdocs[ki]);
}

// Whether a warp's 16 query rows from warp_first see every key of the 64-key tile from j0:
// no documents, every row real, the tile's last key at or before the first row. Then no
// element needs the mask (most tiles of a long sequence: all but the diagonal ones), and
// the kernels skip its per-element arithmetic (the masked and unmasked loop bodies compute
// a visible element the same way).
__device__ __forceinline__ bool am_tile_unmasked(const am_shape &sh, int warp_first, int j0) {
    return !sh.doc_ids && warp_first + 15 < sh.seq && j0 + AM_ROWS - 1 <= warp_first;
}

// Column (within a 64-wide tile) of element e of n-tile nt of a thread's accumulator.
__device__ __forceinline__ int am_col(int nt, int e, int tig) { return nt * 8 + 2 * tig + (e & 1); }

// Writes a thread's two rows of a 16 x DP accumulator times factor (rows past seq skipped).
template <int DP>
__device__ __forceinline__ void am_store_rows(float *dst, size_t stride, size_t col0, const am_shape &sh,
                                              int b, const int rows[2], const float acc[DP / 8][4],
                                              float factor, int tig) {
#pragma unroll
    for (int r = 0; r < 2; r++) {
        if (rows[r] >= sh.seq) continue;
        float *row = dst + ((size_t)b * sh.seq + rows[r]) * stride + col0;
#pragma unroll
        for (int dn = 0; dn < DP / 8; dn++)
            *reinterpret_cast<float2 *>(row + dn * 8 + 2 * tig) =
                make_float2(acc[dn][2 * r] * factor, acc[dn][2 * r + 1] * factor);
    }
}

// A block over a query tile (forward, dq): which tile, head and sequence, and this thread's
// place in it. Late (long) query tiles are launched first. The forward's tile may be RG
// 64-row tiles (a warp then owns rows row0 + 64 g of it, g < RG; rows and warp_first /
// warp_last here are group 0's, n_kv covers the whole tile).
struct am_query_block {
    int i0, h, b, g;             // first query, head, sequence, kv head
    int lane, gid, tig, row0;    // lane, its row group and column pair, the warp's first row
    int rows[2];                 // this thread's two query rows
    int warp_first, warp_last;   // the warp's first query and its last one before seq
    int n_kv;                    // key tiles up to the diagonal one
};

__device__ __forceinline__ am_query_block am_query_block_of(const am_shape &sh, int rg = 1) {
    am_query_block qb;
    const int rows = rg * AM_ROWS, n_tiles = (sh.seq + rows - 1) / rows;
    qb.i0 = (n_tiles - 1 - (int)blockIdx.x) * rows;
    qb.h = blockIdx.y;
    qb.b = blockIdx.z;
    qb.g = qb.h / sh.group;
    qb.lane = threadIdx.x % 32;
    qb.gid = qb.lane >> 2;
    qb.tig = qb.lane & 3;
    qb.row0 = threadIdx.x / 32 * 16;
    qb.rows[0] = qb.i0 + qb.row0 + qb.gid;
    qb.rows[1] = qb.rows[0] + 8;
    qb.warp_first = qb.i0 + qb.row0;
    qb.warp_last = min(qb.warp_first + 15, sh.seq - 1);
    qb.n_kv = (min(qb.i0 + rows, sh.seq) - 1) / AM_ROWS + 1;
    return qb;
}

// ------------------------------------------------------------------ forward

// One block per (query tile of RG x 64 rows, head, sequence), late (long) query tiles first.
// Each warp owns RG groups of 16 rows, 64 apart (interleaved: every warp reaches the diagonal
// key tile, so the warps do equal work); with RG = 2 each K/V fragment loaded from shared
// memory serves two products, the copies and barriers per product halve and a warp has two
// independent chains of products and softmax (FlashAttention-2's 128-row tiles at head_dim
// 64), for twice the accumulator registers. Every row takes the same key tiles in the same
// order with either RG (a group whose rows all precede a tile, group 0 on the block's last
// one, sees it masked: maximum unchanged, P = 0), so RG changes no bit of the result. K and
// V tiles are double-buffered: the copy of tile t+1 runs while tile t is multiplied.
template <typename T, int DP, int RG>
__global__ void __launch_bounds__(AM_THREADS)
    am_fwd_kernel(uint16_t *out_half, int ld_out, float *out, float *lse, const T *q, const T *k, const T *v,
                  am_shape sh) {
    extern __shared__ __align__(16) unsigned char am_smem[];
    constexpr int TILE = AM_ROWS * (DP + 8);
    T *Qs = reinterpret_cast<T *>(am_smem);  // RG tiles: one of RG x 64 rows
    T *Ks = Qs + RG * TILE;                   // two buffers
    T *Vs = Ks + 2 * TILE;                    // two buffers
    int32_t *qdoc = reinterpret_cast<int32_t *>(Vs + 2 * TILE);
    int32_t *kdoc = qdoc + RG * AM_ROWS;  // two buffers
    const am_query_block qb = am_query_block_of(sh, RG);
    const int i0 = qb.i0, h = qb.h, b = qb.b, g = qb.g, lane = qb.lane, gid = qb.gid, tig = qb.tig;
    const int row0 = qb.row0, n_kv = qb.n_kv;
    int rows[RG][2], warp_first[RG], warp_last[RG];
#pragma unroll
    for (int rg = 0; rg < RG; rg++) {
        rows[rg][0] = qb.rows[0] + rg * AM_ROWS;
        rows[rg][1] = qb.rows[1] + rg * AM_ROWS;
        warp_first[rg] = qb.warp_first + rg * AM_ROWS;
        warp_last[rg] = min(warp_first[rg] + 15, sh.seq - 1);
    }

    const am_copy_place<DP> cp;
    {
        am_tiles<T, DP, 1> q_tiles(sh.q_stride, i0, cp, am_head_rows(q, sh.q_stride, sh, b, h));
#pragma unroll
        for (int rg = 0; rg < RG; rg++) {
            q_tiles.load(sh.seq, Qs + rg * TILE, q);
            am_load_docs(qdoc + rg * AM_ROWS, sh, b, i0 + rg * AM_ROWS);
        }
    }
    am_tiles<T, DP, 2> kv_tiles(sh.kv_stride, 0, cp, am_head_rows(k, sh.kv_stride, sh, b, g),
                                am_head_rows(v, sh.kv_stride, sh, b, g));
    kv_tiles.load(sh.seq, Ks, k, Vs, v);
    am_load_docs(kdoc, sh, b, 0);
    am_cp_commit();

    float o[RG][DP / 8][4];
#pragma unroll
    for (int rg = 0; rg < RG; rg++) am_zero<DP>(o[rg]);
    // Per thread and group: partial sums l; the running maximum m is of scores times
    // scale * log2(e) (a positive factor: the maximum of the scaled scores is the scaled
    // maximum, exactly).
    float m[RG][2], l[RG][2];
#pragma unroll
    for (int rg = 0; rg < RG; rg++) m[rg][0] = m[rg][1] = -INFINITY, l[rg][0] = l[rg][1] = 0.0f;
    for (int t = 0; t < n_kv; t++) {
        const int j0 = t * AM_ROWS, cur = t & 1;
        if (t + 1 < n_kv) {  // the other buffers were released by the barrier ending t-1
            kv_tiles.load(sh.seq, Ks + (cur ^ 1) * TILE, k, Vs + (cur ^ 1) * TILE, v);
            am_load_docs(kdoc + (cur ^ 1) * AM_ROWS, sh, b, j0 + AM_ROWS);
        }
        am_cp_commit();
        am_cp_wait<1>();  // tile t (and Q) landed
        __syncthreads();
        // Rows all padding, or all before this key tile: P = 0 (warp-uniform).
        bool active = false;
#pragma unroll
        for (int rg = 0; rg < RG; rg++) active |= warp_first[rg] < sh.seq && j0 <= warp_last[rg];
        if (active) {
            const T *Kt = Ks + cur * TILE, *Vt = Vs + cur * TILE;
            const int32_t *kd = kdoc + cur * AM_ROWS;
            float s[RG][8][4];
            am_product_abt<T, DP, RG>(s, Qs, row0, Kt, lane);
#pragma unroll
            for (int rg = 0; rg < RG; rg++) {
                const bool full = am_tile_unmasked(sh, warp_first[rg], j0);
                float mx[2] = {-INFINITY, -INFINITY};
                if (full) {
#pragma unroll
                    for (int nt = 0; nt < 8; nt++)
#pragma unroll
                        for (int e = 0; e < 4; e++) mx[e >> 1] = fmaxf(mx[e >> 1], s[rg][nt][e]);
                } else {
#pragma unroll
                    for (int nt = 0; nt < 8; nt++)
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            const int r = e >> 1, c = am_col(nt, e, tig);
                            if (!am_visible(sh, rows[rg][r], j0 + c, qdoc, rg * AM_ROWS + row0 + gid + 8 * r, kd, c))
                                s[rg][nt][e] = -INFINITY;
                            mx[r] = fmaxf(mx[r], s[rg][nt][e]);
                        }
                }
                float corr[2];
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    // The row's 4 threads (same gid) hold its 64 columns.
                    mx[r] = fmaxf(mx[r], __shfl_xor_sync(CUDA_FULL_MASK, mx[r], 1));
                    mx[r] = fmaxf(mx[r], __shfl_xor_sync(CUDA_FULL_MASK, mx[r], 2));
                    const float m_new = fmaxf(m[rg][r], mx[r] * sh.scale_log2);
                    // Unchanged maximum: exactly 1; nothing summed yet (m = -inf): 0.
                    corr[r] = m[rg][r] == m_new ? 1.0f : m[rg][r] == -INFINITY ? 0.0f : am_exp2(m[rg][r] - m_new);
                    m[rg][r] = m_new;
                    // Not contracted with the += p below into one FMA: the same bits with any RG.
                    l[rg][r] = __fmul_rn(l[rg][r], corr[r]);
                }
                // After the first tiles a row's maximum rarely grows: when no row of the warp's
                // group did, the rescaling would multiply every output sum by exactly 1, and is
                // skipped.
                if (__any_sync(CUDA_FULL_MASK, corr[0] != 1.0f || corr[1] != 1.0f)) {
#pragma unroll
                    for (int dn = 0; dn < DP / 8; dn++)
#pragma unroll
                        for (int e = 0; e < 4; e++) o[rg][dn][e] *= corr[e >> 1];
                }
                // p = exp2(score * scale * log2(e) - m), one fused multiply-add. In a full tile
                // every score and the row maxima are finite: no -inf guard (elsewhere a row that
                // sees no key yet has m = -inf, and -inf - -inf would be NaN).
#pragma unroll
                for (int nt = 0; nt < 8; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int r = e >> 1;
                        const float p = !full && s[rg][nt][e] == -INFINITY
                                            ? 0.0f
                                            : am_exp2(fmaf(s[rg][nt][e], sh.scale_log2, -m[rg][r]));
                        s[rg][nt][e] = p;
                        l[rg][r] += p;
                    }
            }
            am_accumulate<T, DP, RG>(o, s, Vt, lane);
        }
        __syncthreads();  // buffers cur are free for tile t+2
    }
#pragma unroll
    for (int rg = 0; rg < RG; rg++) {
        float inv[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            l[rg][r] += __shfl_xor_sync(CUDA_FULL_MASK, l[rg][r], 1);
            l[rg][r] += __shfl_xor_sync(CUDA_FULL_MASK, l[rg][r], 2);
            // Key s = query s is always visible, so l >= 1 on every real row.
            inv[r] = l[rg][r] > 0.0f ? 1.0f / l[rg][r] : 0.0f;
        }
        // y = o / l in fp32 (one product, nothing to contract), then to_half's rounding of y:
        // the 16-bit stores are scalar (out_half's rows ld_out apart need not be 4-byte aligned).
#pragma unroll
        for (int r = 0; r < 2; r++) {
            if (rows[rg][r] >= sh.seq) continue;
            const size_t token = (size_t)b * sh.seq + rows[rg][r];
            float *orow = out ? out + token * sh.q_stride + (size_t)h * sh.d : NULL;
            uint16_t *hrow = out_half + token * (size_t)ld_out + (size_t)h * sh.d;
#pragma unroll
            for (int dn = 0; dn < DP / 8; dn++) {
                const int c = dn * 8 + 2 * tig;
                const float y0 = o[rg][dn][2 * r] * inv[r], y1 = o[rg][dn][2 * r + 1] * inv[r];
                if (orow) *reinterpret_cast<float2 *>(orow + c) = make_float2(y0, y1);
                hrow[c] = half_bits<am_format<T>::fmt>(y0);
                hrow[c + 1] = half_bits<am_format<T>::fmt>(y1);
            }
            if (tig == 0)
                lse[((size_t)b * sh.n_heads + h) * sh.seq + rows[rg][r]] = m[rg][r] * AM_LN2 + logf(l[rg][r]);
        }
    }
}

// ------------------------------------------------------------------ backward

// dq = scale dS K: one block per (query tile, head, sequence), key tiles ascending, K and V
// double-buffered.
template <typename T, int DP>
__global__ void __launch_bounds__(AM_THREADS)
    am_dq_kernel(float *dq, const T *dout, const T *q, const T *k, const T *v, const float *lse,
                 const float *D, am_shape sh) {
    extern __shared__ __align__(16) unsigned char am_smem[];
    constexpr int TILE = AM_ROWS * (DP + 8);
    T *Qs = reinterpret_cast<T *>(am_smem);
    T *dOs = Qs + TILE;
    T *Ks = dOs + TILE;     // two buffers
    T *Vs = Ks + 2 * TILE;  // two buffers
    int32_t *qdoc = reinterpret_cast<int32_t *>(Vs + 2 * TILE);
    int32_t *kdoc = qdoc + AM_ROWS;  // two buffers
    const am_query_block qb = am_query_block_of(sh);
    const int i0 = qb.i0, h = qb.h, b = qb.b, g = qb.g, lane = qb.lane, gid = qb.gid, tig = qb.tig;
    const int row0 = qb.row0, warp_first = qb.warp_first, warp_last = qb.warp_last, n_kv = qb.n_kv;
    const int *rows = qb.rows;

    const am_copy_place<DP> cp;
    am_tiles<T, DP, 2>(sh.q_stride, i0, cp, am_head_rows(q, sh.q_stride, sh, b, h),
                       am_head_rows(dout, sh.q_stride, sh, b, h))
        .load(sh.seq, Qs, q, dOs, dout);
    am_load_docs(qdoc, sh, b, i0);
    am_tiles<T, DP, 2> kv_tiles(sh.kv_stride, 0, cp, am_head_rows(k, sh.kv_stride, sh, b, g),
                                am_head_rows(v, sh.kv_stride, sh, b, g));
    kv_tiles.load(sh.seq, Ks, k, Vs, v);
    am_load_docs(kdoc, sh, b, 0);
    am_cp_commit();
    float row_lse[2], row_D[2];  // lse in log2 units
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const size_t stat = ((size_t)b * sh.n_heads + h) * sh.seq + rows[r];
        row_lse[r] = rows[r] < sh.seq ? lse[stat] * AM_LOG2E : 0.0f;
        row_D[r] = rows[r] < sh.seq ? D[stat] : 0.0f;
    }

    float acc[DP / 8][4];
    am_zero<DP>(acc);
    for (int t = 0; t < n_kv; t++) {
        const int j0 = t * AM_ROWS, cur = t & 1;
        if (t + 1 < n_kv) {
            kv_tiles.load(sh.seq, Ks + (cur ^ 1) * TILE, k, Vs + (cur ^ 1) * TILE, v);
            am_load_docs(kdoc + (cur ^ 1) * AM_ROWS, sh, b, j0 + AM_ROWS);
        }
        am_cp_commit();
        am_cp_wait<1>();
        __syncthreads();
        if (warp_first < sh.seq && j0 <= warp_last) {  // else dS = 0
            const T *Kt = Ks + cur * TILE, *Vt = Vs + cur * TILE;
            const int32_t *kd = kdoc + cur * AM_ROWS;
            float s[8][4], dp[8][4];
            am_product_abt<T, DP>(&s, Qs, row0, Kt, lane);
            am_product_abt<T, DP>(&dp, dOs, row0, Vt, lane);
            // dS = P (dP - D), P = exp2(score * scale * log2(e) - lse * log2(e)); the masked body
            // computes a visible element the same way.
            if (am_tile_unmasked(sh, warp_first, j0)) {
#pragma unroll
                for (int nt = 0; nt < 8; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int r = e >> 1;
                        const float p = am_exp2(fmaf(s[nt][e], sh.scale_log2, -row_lse[r]));
                        s[nt][e] = p * (dp[nt][e] - row_D[r]);
                    }
            } else {
#pragma unroll
                for (int nt = 0; nt < 8; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int r = e >> 1, c = am_col(nt, e, tig);
                        const float p = am_exp2(fmaf(s[nt][e], sh.scale_log2, -row_lse[r]));
                        const bool vis = am_visible(sh, rows[r], j0 + c, qdoc, row0 + gid + 8 * r, kd, c);
                        s[nt][e] = vis ? p * (dp[nt][e] - row_D[r]) : 0.0f;
                    }
            }
            am_accumulate<T, DP>(&acc, &s, Kt, lane);
        }
        __syncthreads();
    }
    am_store_rows<DP>(dq, sh.q_stride, (size_t)h * sh.d, sh, b, rows, acc, sh.scale, tig);
}

// Index of the 64 x 64 dS block of query tile i and key tile j <= i among a head's blocks
// (the causal triangle, row by row).
__device__ __forceinline__ size_t am_ds_pair(int i, int j) { return (size_t)i * (i + 1) / 2 + j; }

// dk = scale dS^T Q, dv = P^T dO: one block per (key tile, kv head kv0 + blockIdx.y, sequence),
// over the group's query heads, then the query tiles from the key tile on; Q, dO (and their
// rows' documents, lse and D) double-buffered. STORE_DS: also writes the 16-bit dS it
// multiplies (zero where masked) for am_dq_ds_kernel, each 64 x 64 block [key][query]
// row-major at ds + ((b * heads + h - kv0 * group) * pairs + am_ds_pair(query tile, key tile))
// * 4096, heads = gridDim.y * group: the chunk's query heads.
template <typename T, int DP, bool STORE_DS>
__global__ void __launch_bounds__(AM_THREADS)
    am_dkv_kernel(float *dk, float *dv, uint16_t *ds, const T *dout, const T *q, const T *k, const T *v,
                  const float *lse, const float *D, am_shape sh, int kv0) {
    extern __shared__ __align__(16) unsigned char am_smem[];
    constexpr int TILE = AM_ROWS * (DP + 8);
    T *Ks = reinterpret_cast<T *>(am_smem);
    T *Vs = Ks + TILE;
    T *Qs = Vs + TILE;        // two buffers
    T *dOs = Qs + 2 * TILE;   // two buffers
    int32_t *kdoc = reinterpret_cast<int32_t *>(dOs + 2 * TILE);
    int32_t *qdoc = kdoc + AM_ROWS;                                 // two buffers
    float *col_lse = reinterpret_cast<float *>(qdoc + 2 * AM_ROWS);  // two buffers
    float *col_D = col_lse + 2 * AM_ROWS;                           // two buffers

    const int n_tiles = (sh.seq + AM_ROWS - 1) / AM_ROWS;
    const int j0 = blockIdx.x * AM_ROWS, g = kv0 + (int)blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gid = lane >> 2, tig = lane & 3;
    const int row0 = warp * 16;
    const int keys[2] = {j0 + row0 + gid, j0 + row0 + gid + 8};
    const int warp_first = j0 + row0;
    // Query tiles are aligned with key tiles and as long: earlier ones see no key here.
    const int n_q = n_tiles - (int)blockIdx.x, n_steps = sh.group * n_q;

    // Step u: head g * group + u / n_q, query tile j0 + (u % n_q) * 64, into buffer u & 1.
    // The copies run one step ahead of the products: (load_h, load_i0) is the next step to copy.
    const am_copy_place<DP> cp;
    int load_h = g * sh.group, load_i0 = j0;
    auto query_tiles = [&]() {
        return am_tiles<T, DP, 2>(sh.q_stride, j0, cp, am_head_rows(q, sh.q_stride, sh, b, load_h),
                                  am_head_rows(dout, sh.q_stride, sh, b, load_h));
    };
    am_tiles<T, DP, 2> qdo_tiles = query_tiles();
    auto load_step = [&](int buf) {
        qdo_tiles.load(sh.seq, Qs + buf * TILE, q, dOs + buf * TILE, dout);
        am_load_docs(qdoc + buf * AM_ROWS, sh, b, load_i0);
        // The tile's lse (threads 0-63) and D (64-127); zero past the end.
        const int c = (int)threadIdx.x % AM_ROWS, s = load_i0 + c;
        const bool is_lse = threadIdx.x < AM_ROWS;
        const size_t stat = ((size_t)b * sh.n_heads + load_h) * sh.seq + s;
        am_cp4((is_lse ? col_lse : col_D) + buf * AM_ROWS + c, s < sh.seq ? (is_lse ? lse : D) + stat : lse,
               s < sh.seq);
        load_i0 += AM_ROWS;
        if (load_i0 >= j0 + n_q * AM_ROWS && load_h + 1 < (g + 1) * sh.group) {  // the group's next head
            load_i0 = j0;
            load_h++;
            qdo_tiles = query_tiles();
        }
    };
    am_tiles<T, DP, 2>(sh.kv_stride, j0, cp, am_head_rows(k, sh.kv_stride, sh, b, g),
                       am_head_rows(v, sh.kv_stride, sh, b, g))
        .load(sh.seq, Ks, k, Vs, v);
    am_load_docs(kdoc, sh, b, j0);
    load_step(0);
    am_cp_commit();

    float dK[DP / 8][4], dV[DP / 8][4];
    am_zero<DP>(dK);
    am_zero<DP>(dV);
    int i0 = j0, h = g * sh.group;  // the computed step's query tile and head
    // This warp's 16 rows of the step's dS block (STORE_DS), computed where it is written.
    auto ds_rows = [&]() {
        const size_t block = ((size_t)b * gridDim.y * sh.group + (h - kv0 * sh.group)) * am_ds_pair(n_tiles, 0) +
                             am_ds_pair(i0 / AM_ROWS, (int)blockIdx.x);
        return ds + block * (AM_ROWS * AM_ROWS) + (size_t)row0 * AM_ROWS;
    };
    for (int u = 0; u < n_steps; u++) {
        const int cur = u & 1;
        if (u + 1 < n_steps) load_step(cur ^ 1);
        am_cp_commit();
        am_cp_wait<1>();
        __syncthreads();
        // Keys all padding, or all after the tile's last query: P = dS = 0.
        if (warp_first < sh.seq && warp_first <= min(i0 + AM_ROWS, sh.seq) - 1) {
            const T *Qt = Qs + cur * TILE, *dOt = dOs + cur * TILE;
            const int32_t *qd = qdoc + cur * AM_ROWS;
            const float *cl = col_lse + cur * AM_ROWS, *cD = col_D + cur * AM_ROWS;
            float s[8][4], dp[8][4];
            am_product_abt<T, DP>(&s, Ks, row0, Qt, lane);
            am_product_abt<T, DP>(&dp, Vs, row0, dOt, lane);
            // Transposed (the warp's 16 keys against the tile's 64 queries): unmasked when every
            // query is real and at or after the warp's last key. Both bodies compute a visible
            // element the same way: P = exp2(score * scale * log2(e) - lse * log2(e)),
            // dS = P (dP - D).
            const bool full = !sh.doc_ids && i0 + AM_ROWS <= sh.seq && warp_first + 15 <= i0;
            if (full) {
#pragma unroll
                for (int nt = 0; nt < 8; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int c = am_col(nt, e, tig);
                        const float p = am_exp2(fmaf(s[nt][e], sh.scale_log2, -cl[c] * AM_LOG2E));
                        dp[nt][e] = p * (dp[nt][e] - cD[c]);
                        s[nt][e] = p;
                    }
            } else {
#pragma unroll
                for (int nt = 0; nt < 8; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int r = e >> 1, c = am_col(nt, e, tig);  // key row r, query column c
                        float p = 0.0f, ds = 0.0f;
                        if (am_visible(sh, i0 + c, keys[r], qd, c, kdoc, row0 + gid + 8 * r)) {
                            p = am_exp2(fmaf(s[nt][e], sh.scale_log2, -cl[c] * AM_LOG2E));
                            ds = p * (dp[nt][e] - cD[c]);
                        }
                        s[nt][e] = p;
                        dp[nt][e] = ds;
                    }
            }
            am_accumulate<T, DP>(&dV, &s, dOt, lane);
            am_accumulate<T, DP>(&dK, &dp, Qt, lane, STORE_DS ? ds_rows() : nullptr);
        } else if (STORE_DS) {  // dS = 0
            uint16_t *rows = ds_rows();
#pragma unroll
            for (int r = 0; r < 2; r++)
#pragma unroll
                for (int c = 0; c < AM_ROWS; c += 8)
                    *reinterpret_cast<uint32_t *>(rows + (gid + 8 * r) * AM_ROWS + c + 2 * tig) = 0u;
        }
        __syncthreads();
        i0 += AM_ROWS;
        if (i0 >= j0 + n_q * AM_ROWS) i0 = j0, h++;
    }
    am_store_rows<DP>(dk, sh.kv_stride, (size_t)g * sh.d, sh, b, keys, dK, sh.scale, tig);
    am_store_rows<DP>(dv, sh.kv_stride, (size_t)g * sh.d, sh, b, keys, dV, 1.0f, tig);
}

// dq = scale dS K from the 16-bit dS that am_dkv_kernel<STORE_DS> wrote (the same rounding of
// the same formula the recomputing am_dq_kernel makes; the products that made it ran with
// keys and queries exchanged, so a rare last bit may differ): one block per (query tile,
// head kv0 * group + blockIdx.y, sequence), key tiles ascending, each with its dS block,
// double-buffered. One product per tile instead of four, no exponentials: the recomputation
// of S, P and dP was most of the backward's second kernel.
template <typename T, int DP>
__global__ void __launch_bounds__(AM_THREADS)
    am_dq_ds_kernel(float *dq, const uint16_t *ds, const T *k, am_shape sh, int kv0) {
    extern __shared__ __align__(16) unsigned char am_smem[];
    constexpr int TILE = AM_ROWS * (DP + 8), DS_TILE = AM_ROWS * (AM_ROWS + 8);
    T *Ks = reinterpret_cast<T *>(am_smem);  // two buffers
    T *dSs = Ks + 2 * TILE;                   // two buffers, [key][query]
    const int n_tiles = (sh.seq + AM_ROWS - 1) / AM_ROWS;
    const int hq = (int)blockIdx.y;  // the head within the chunk
    // am_query_block_of reads blockIdx.y as the head: add the chunk's first one.
    am_query_block qb = am_query_block_of(sh);
    qb.h = kv0 * sh.group + hq;
    qb.g = qb.h / sh.group;
    const int i0 = qb.i0, h = qb.h, b = qb.b, g = qb.g, lane = qb.lane, tig = qb.tig;
    const int row0 = qb.row0, n_kv = qb.n_kv;
    const int *rows = qb.rows;
    const size_t pairs = am_ds_pair(n_tiles, 0);
    // The query tile's dS blocks (key tiles 0..): consecutive, 8 KB each.
    const uint16_t *ds_blocks =
        ds + (((size_t)b * gridDim.y + hq) * pairs + am_ds_pair(i0 / AM_ROWS, 0)) * (AM_ROWS * AM_ROWS);
    const am_copy_place<DP> cp;
    am_tiles<T, DP, 1> k_tiles(sh.kv_stride, 0, cp, am_head_rows(k, sh.kv_stride, sh, b, g));
    // A block is 512 pieces of 16 bytes: 4 per thread, 8 per 64-value row.
    auto load_ds = [&](int t, int buf) {
        const uint16_t *from = ds_blocks + (size_t)t * (AM_ROWS * AM_ROWS);
#pragma unroll
        for (int i = 0; i < AM_ROWS * AM_ROWS / 8 / AM_THREADS; i++) {
            const int piece = (int)threadIdx.x + i * AM_THREADS, r = piece / 8, c = 8 * (piece % 8);
            am_cp16(dSs + buf * DS_TILE + r * (AM_ROWS + 8) + c, from + r * AM_ROWS + c, true);
        }
    };
    k_tiles.load(sh.seq, Ks, k);
    load_ds(0, 0);
    am_cp_commit();

    float acc[DP / 8][4];
    am_zero<DP>(acc);
    for (int t = 0; t < n_kv; t++) {
        const int cur = t & 1;
        if (t + 1 < n_kv) {
            k_tiles.load(sh.seq, Ks + (cur ^ 1) * TILE, k);
            load_ds(t + 1, cur ^ 1);
        }
        am_cp_commit();
        am_cp_wait<1>();
        __syncthreads();
        const T *Kt = Ks + cur * TILE;
        const T *St = dSs + cur * DS_TILE;
        // acc[16 x DP] += dS[16 x 64] K[64 x DP]: A(query m, key k) = St[k][m], so its 8 x 8
        // blocks come transposed (ldmatrix .trans): a0 = keys 0-7 x queries 0-7, a1 = keys
        // 0-7 x queries 8-15, a2 = keys 8-15 x queries 0-7, a3 = keys 8-15 x queries 8-15.
#pragma unroll
        for (int kc = 0; kc < 4; kc++) {
            uint32_t fa[4];
            const int blk = lane >> 3;
            am_ldsm_trans(fa, St + (kc * 16 + (lane & 7) + (blk >> 1) * 8) * (AM_ROWS + 8) + row0 + (blk & 1) * 8);
#pragma unroll
            for (int dn = 0; dn < DP / 8; dn += 2) {
                uint32_t fb[4];
                am_frag_b(fb, Kt, DP + 8, dn * 8, kc * 16, lane);
                am_format<T>::mma(acc[dn], fa, fb[0], fb[1]);
                am_format<T>::mma(acc[dn + 1], fa, fb[2], fb[3]);
            }
        }
        __syncthreads();
    }
    am_store_rows<DP>(dq, sh.q_stride, (size_t)h * sh.d, sh, b, rows, acc, sh.scale, tig);
}

// ------------------------------------------------------------------ launchers

template <int DP>
static size_t am_tile_bytes(int tiles, int int_rows) {
    return (size_t)tiles * AM_ROWS * (DP + 8) * 2 + (size_t)int_rows * AM_ROWS * 4;
}

// Fills sh; false for the shapes this path does not take.
static bool am_shape_of(am_shape *sh, const int32_t *doc_ids, int batch, int seq, int n_heads, int n_kv_heads,
                        int head_dim, float scale) {
    if (head_dim != 64 && head_dim != 128) return false;
    if (!attention_dims_valid(batch, seq, n_heads, n_kv_heads, head_dim, 128)) return false;
    attention_dims_fill(sh, doc_ids, batch, seq, n_heads, n_kv_heads, head_dim, scale);
    sh->scale_log2 = scale * AM_LOG2E;
    return true;
}

// Whether the kernel may take `bytes` of dynamic shared memory here (opt-in cached per device).
template <typename Kernel>
static bool am_allow_smem(Kernel kernel, size_t bytes) {
    return bytes <= cuda_smem_opt_in((const void *)kernel);
}

template <typename T, int DP, int RG>
static bool am_fwd(uint16_t *out_half, int ld_out, float *out, float *lse, const uint16_t *q, const uint16_t *k,
                   const uint16_t *v, const am_shape &sh) {
    const size_t bytes = am_tile_bytes<DP>(4 + RG, 2 + RG);
    if (!am_allow_smem(am_fwd_kernel<T, DP, RG>, bytes)) return false;
    const int rows = RG * AM_ROWS;
    const dim3 grid((unsigned)((sh.seq + rows - 1) / rows), (unsigned)sh.n_heads, (unsigned)sh.batch);
    CUDA_LAUNCH(grid, AM_THREADS, bytes, am_fwd_kernel<T, DP, RG>)(out_half, ld_out, out, lse, (const T *)q,
                                                                   (const T *)k, (const T *)v, sh);
    CUDA_CHECK_LAUNCH();
    return true;
}

template <typename T, int DP>
static bool am_fwd_rows(int warp_rows, uint16_t *out_half, int ld_out, float *out, float *lse, const uint16_t *q,
                        const uint16_t *k, const uint16_t *v, const am_shape &sh) {
    return warp_rows == 32 ? am_fwd<T, DP, 2>(out_half, ld_out, out, lse, q, k, v, sh)
                           : am_fwd<T, DP, 1>(out_half, ld_out, out, lse, q, k, v, sh);
}

// Bytes of the 16-bit dS blocks of one kv head (its group's query heads, every sequence).
static size_t am_ds_bytes_per_kv(const am_shape &sh) {
    const size_t tiles = (size_t)(sh.seq + AM_ROWS - 1) / AM_ROWS;
    return (size_t)sh.batch * sh.group * (tiles * (tiles + 1) / 2) * AM_ROWS * AM_ROWS * sizeof(uint16_t);
}

// Dynamic shared memory of the backward's kernels at head size DP: dq recomputing dS, dk/dv,
// dq from the stored dS.
struct am_bwd_bytes {
    size_t dq, dkv, dq_ds;
};
template <int DP>
static am_bwd_bytes am_bwd_smem() {
    return {am_tile_bytes<DP>(6, 3), am_tile_bytes<DP>(6, 7), am_tile_bytes<DP>(2, 0) + am_tile_bytes<AM_ROWS>(2, 0)};
}

// Whether the backward's kernels get the shared memory they need for this shape (the
// attribute is set once per device).
template <typename T, int DP>
static bool am_bwd_fits(const am_shape &sh, size_t ds_budget) {
    const am_bwd_bytes smem = am_bwd_smem<DP>();
    return am_ds_bytes_per_kv(sh) <= ds_budget ? am_allow_smem(am_dq_ds_kernel<T, DP>, smem.dq_ds) &&
                                                      am_allow_smem(am_dkv_kernel<T, DP, true>, smem.dkv)
                                                : am_allow_smem(am_dq_kernel<T, DP>, smem.dq) &&
                                                      am_allow_smem(am_dkv_kernel<T, DP, false>, smem.dkv);
}

// dout arrives rounded (the kernels move half the bytes, and cp.async can stream them), as do
// q, k, v. Where the dS blocks of at least one kv head fit ds_budget bytes, dk/dv store them
// and dq multiplies them (am_dq_ds_kernel), kv heads in equal chunks that fit the budget;
// otherwise dq recomputes them (am_dq_kernel).
template <typename T, int DP>
static bool am_bwd(float *dq, float *dk, float *dv, const uint16_t *dout_half, const uint16_t *q, const uint16_t *k,
                   const uint16_t *v, const float *lse, const float *D, const am_shape &sh, size_t ds_budget) {
    if (!am_bwd_fits<T, DP>(sh, ds_budget)) return false;
    const am_bwd_bytes smem = am_bwd_smem<DP>();
    const size_t dq_smem = smem.dq, dkv_smem = smem.dkv, dq_ds_smem = smem.dq_ds;
    const size_t per_kv = am_ds_bytes_per_kv(sh);
    const bool store_ds = per_kv <= ds_budget;
    const T *hdo = (const T *)dout_half, *hq = (const T *)q, *hk = (const T *)k, *hv = (const T *)v;
    const unsigned tiles = (unsigned)((sh.seq + AM_ROWS - 1) / AM_ROWS);
    if (!store_ds) {
        CUDA_LAUNCH(dim3(tiles, (unsigned)sh.n_heads, (unsigned)sh.batch), AM_THREADS, dq_smem,
                    am_dq_kernel<T, DP>)(dq, hdo, hq, hk, hv, lse, D, sh);
        CUDA_CHECK_LAUNCH();
        CUDA_LAUNCH(dim3(tiles, (unsigned)sh.n_kv, (unsigned)sh.batch), AM_THREADS, dkv_smem,
                    am_dkv_kernel<T, DP, false>)(dk, dv, NULL, hdo, hq, hk, hv, lse, D, sh, 0);
        CUDA_CHECK_LAUNCH();
    } else {
        const size_t fit = ds_budget / per_kv;
        const int n_chunks = (int)(((size_t)sh.n_kv + fit - 1) / fit);
        const int chunk_kv = (sh.n_kv + n_chunks - 1) / n_chunks;  // equal chunks: no small last wave
        uint16_t *ds = NULL;
        CUDA_CHECK(cudaMallocAsync((void **)&ds, (size_t)chunk_kv * per_kv, 0));
        for (int kv0 = 0; ds && kv0 < sh.n_kv; kv0 += chunk_kv) {
            const int n = sh.n_kv - kv0 < chunk_kv ? sh.n_kv - kv0 : chunk_kv;
            CUDA_LAUNCH(dim3(tiles, (unsigned)n, (unsigned)sh.batch), AM_THREADS, dkv_smem,
                        am_dkv_kernel<T, DP, true>)(dk, dv, ds, hdo, hq, hk, hv, lse, D, sh, kv0);
            CUDA_CHECK_LAUNCH();
            CUDA_LAUNCH(dim3(tiles, (unsigned)(n * sh.group), (unsigned)sh.batch), AM_THREADS, dq_ds_smem,
                        am_dq_ds_kernel<T, DP>)(dq, ds, hk, sh, kv0);
            CUDA_CHECK_LAUNCH();
        }
        if (ds) CUDA_CHECK(cudaFreeAsync(ds, 0));
    }
    return true;
}

// cp.async copies 16 bytes from the tensors' rows (whose strides are multiples of 64 elements).
static bool am_aligned(const uint16_t *q, const uint16_t *k, const uint16_t *v) {
    return ((uintptr_t)q | (uintptr_t)k | (uintptr_t)v) % 16 == 0;
}

bool attention_mma_fwd(kernels_half_format fmt, int warp_rows, uint16_t *out_half, int ld_out, float *out,
                       float *lse, const uint16_t *q, const uint16_t *k, const uint16_t *v, const int32_t *doc_ids,
                       int batch, int seq, int n_heads, int n_kv_heads, int head_dim, float scale) {
    am_shape sh;
    if (warp_rows != 16 && warp_rows != 32) return false;
    if (!am_shape_of(&sh, doc_ids, batch, seq, n_heads, n_kv_heads, head_dim, scale)) return false;
    if (!am_aligned(q, k, v)) return false;
    const bool bf16 = fmt == KERNELS_BF16;
    if (head_dim == 64)
        return bf16 ? am_fwd_rows<__nv_bfloat16, 64>(warp_rows, out_half, ld_out, out, lse, q, k, v, sh)
                    : am_fwd_rows<__half, 64>(warp_rows, out_half, ld_out, out, lse, q, k, v, sh);
    return bf16 ? am_fwd_rows<__nv_bfloat16, 128>(warp_rows, out_half, ld_out, out, lse, q, k, v, sh)
                : am_fwd_rows<__half, 128>(warp_rows, out_half, ld_out, out, lse, q, k, v, sh);
}

bool attention_mma_bwd_takes(const uint16_t *q, const uint16_t *k, const uint16_t *v, int batch, int seq,
                             int n_heads, int n_kv_heads, int head_dim, size_t ds_budget) {
    am_shape sh;
    if (!am_shape_of(&sh, NULL, batch, seq, n_heads, n_kv_heads, head_dim, 1.0f) || !am_aligned(q, k, v))
        return false;
    // the shared-memory needs do not depend on the format
    return head_dim == 64 ? am_bwd_fits<__nv_bfloat16, 64>(sh, ds_budget) && am_bwd_fits<__half, 64>(sh, ds_budget)
                          : am_bwd_fits<__nv_bfloat16, 128>(sh, ds_budget) &&
                                am_bwd_fits<__half, 128>(sh, ds_budget);
}

bool attention_mma_bwd(kernels_half_format fmt, float *dq, float *dk, float *dv, const uint16_t *dout_half,
                       const uint16_t *q, const uint16_t *k, const uint16_t *v, const float *lse, const float *D,
                       const int32_t *doc_ids, int batch, int seq, int n_heads, int n_kv_heads, int head_dim,
                       float scale, size_t ds_budget) {
    am_shape sh;
    if (!am_shape_of(&sh, doc_ids, batch, seq, n_heads, n_kv_heads, head_dim, scale)) return false;
    if (!am_aligned(q, k, v) || (uintptr_t)dout_half % 16 != 0) return false;
    const bool bf16 = fmt == KERNELS_BF16;
    if (head_dim == 64)
        return bf16 ? am_bwd<__nv_bfloat16, 64>(dq, dk, dv, dout_half, q, k, v, lse, D, sh, ds_budget)
                    : am_bwd<__half, 64>(dq, dk, dv, dout_half, q, k, v, lse, D, sh, ds_budget);
    return bf16 ? am_bwd<__nv_bfloat16, 128>(dq, dk, dv, dout_half, q, k, v, lse, D, sh, ds_budget)
                : am_bwd<__half, 128>(dq, dk, dv, dout_half, q, k, v, lse, D, sh, ds_budget);
}

size_t attention_mma_bwd_scratch_bytes(int batch, int seq, int n_heads, int n_kv_heads, int head_dim,
                                       size_t ds_budget) {
    am_shape sh;
    if (!am_shape_of(&sh, NULL, batch, seq, n_heads, n_kv_heads, head_dim, 1.0f)) return 0;
    const size_t rounded_dout = (size_t)batch * seq * sh.q_stride * sizeof(uint16_t);
    const size_t per_kv = am_ds_bytes_per_kv(sh);
    if (per_kv > ds_budget) return rounded_dout;
    const size_t fit = ds_budget / per_kv;
    const int n_chunks = (int)(((size_t)sh.n_kv + fit - 1) / fit);
    return rounded_dout + (size_t)((sh.n_kv + n_chunks - 1) / n_chunks) * per_kv;
}
