/* gemm: C[m,n] = alpha * op(A) op(B) + beta * C, row-major, through OpenBLAS cblas_sgemm.
 * op(A) is [m,k] (A stored [m,k], or [k,m] when trans_a), op(B) is [k,n]; lda/ldb/ldc are
 * row strides in elements. Matches BLAS semantics: with beta == 0, C is not read (NaN in
 * C does not propagate).
 *
 * Same bits for any thread count. OpenBLAS's own threading cannot promise that: its single-
 * and multi-threaded drivers cut a long k into different blocks (on the Intel test machines a
 * 128 x 128 product gave other bits with 1 and 2 threads from k = 321 on), and on AMD Zen
 * the kernels it picks give other bits for the same element depending on how the threads
 * split m and n (every shape tested from 64 x 96 x 256 on). So the partition is ours and
 * fixed by the shape alone: C is cut into TILE_ROWS x TILE_COLS tiles, each computed by one
 * thread (OpenBLAS, built for OpenMP, runs serially inside an active parallel region, and
 * with one thread), and k is fed in slices of at most K_SLICE (below the block depth of the
 * x86 sgemm kernels), each accumulated into C in order: every element of C is one fixed-order
 * sum whatever the threads (tests/test_kernels_cpu.c checks 1 vs 2 vs 3). */
#include <cblas.h>

#include "kernels/cpu/cpu_ops.h"

enum { K_SLICE = 256, TILE_ROWS = 128, TILE_COLS = 512, GEMV_COLS = CPU_GEMV_COLS };

/* m == 1 (a generated token's forward on the KV cache): C's one row is a matrix-vector
 * product. sgemm would pack the whole of B for it each call (OpenBLAS 0.3.21 does not turn
 * such products into gemv itself), doubling the memory traffic of a step that is all memory
 * traffic; sgemv reads B once. Same partition rules: GEMV_COLS columns of C per tile, k in
 * K_SLICE slices, fixed by the shape. */
void cpu_gemv_tile(bool trans_b, int n, int k, float alpha, const float *a, int inc_x, const float *b, int ldb,
                   float beta, float *c) {
    if (beta == 0.0f) /* BLAS leaves C unread at beta 0; so do we (the kernels' scal may not) */
        for (int j = 0; j < n; j++) c[j] = 0.0f;
    for (int k0 = 0; k0 < k; k0 += K_SLICE) {
        const int kk = k - k0 < K_SLICE ? k - k0 : K_SLICE;
        const float *x = a + (size_t)k0 * inc_x;
        const float slice_beta = k0 || beta == 0.0f ? 1.0f : beta;
        if (trans_b) /* B is [n,k]: C = B[:, slice] x */
            cblas_sgemv(CblasRowMajor, CblasNoTrans, n, kk, alpha, b + k0, ldb, x, inc_x, slice_beta, c, 1);
        else /* B is [k,n]: C = B[slice, :]^T x */
            cblas_sgemv(CblasRowMajor, CblasTrans, kk, n, alpha, b + (size_t)k0 * ldb, ldb, x, inc_x, slice_beta, c, 1);
    }
}

/* One tile: C[m,n] (pointers already at the tile) over every slice of k, on this thread. */
static void gemm_tile(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                      const float *b, int ldb, float beta, float *c, int ldc) {
    for (int k0 = 0; k0 < k; k0 += K_SLICE) {
        const int kk = k - k0 < K_SLICE ? k - k0 : K_SLICE;
        /* slice k0 of op(A) is columns k0.. of A, or its rows k0.. when transposed; of op(B)
         * rows k0.. of B, or its columns when transposed */
        const float *as = trans_a ? a + (size_t)k0 * lda : a + k0;
        const float *bs = trans_b ? b + k0 : b + (size_t)k0 * ldb;
        cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, m, n,
                    kk, alpha, as, lda, bs, ldb, k0 ? 1.0f : beta, c, ldc);
    }
}

void cpu_gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
              int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    if (m <= 0 || n <= 0) return;
    if (k <= 0) {
        /* An empty product: C = beta * C (BLAS implementations differ on this edge). */
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                float *cij = &c[(size_t)i * ldc + j];
                *cij = beta == 0.0f ? 0.0f : beta * *cij;
            }
        return;
    }
    if (m == 1) {
        const int tiles = (n + GEMV_COLS - 1) / GEMV_COLS;
#pragma omp parallel for schedule(static)
        for (int t = 0; t < tiles; t++) {
            const int j0 = t * GEMV_COLS, cols = n - j0 < GEMV_COLS ? n - j0 : GEMV_COLS;
            /* op(A)'s one row: a column of A when transposed */
            cpu_gemv_tile(trans_b, cols, k, alpha, a, trans_a ? lda : 1, trans_b ? b + (size_t)j0 * ldb : b + j0, ldb,
                          beta, c + j0);
        }
        return;
    }
    const int tiles_m = (m + TILE_ROWS - 1) / TILE_ROWS, tiles_n = (n + TILE_COLS - 1) / TILE_COLS;
#pragma omp parallel for schedule(static)
    for (int t = 0; t < tiles_m * tiles_n; t++) {
        const int i0 = t / tiles_n * TILE_ROWS, j0 = t % tiles_n * TILE_COLS;
        const int rows = m - i0 < TILE_ROWS ? m - i0 : TILE_ROWS, cols = n - j0 < TILE_COLS ? n - j0 : TILE_COLS;
        /* rows i0.. of op(A) are A's rows i0.., or its columns when transposed; columns j0.. of
         * op(B) are B's columns j0.., or its rows when transposed */
        const float *at = trans_a ? a + i0 : a + (size_t)i0 * lda;
        const float *bt = trans_b ? b + (size_t)j0 * ldb : b + j0;
        gemm_tile(trans_a, trans_b, rows, cols, k, alpha, at, lda, bt, ldb, beta, c + (size_t)i0 * ldc + j0, ldc);
    }
}
