/* gemm: C[m,n] = alpha * op(A) op(B) + beta * C, row-major, through OpenBLAS cblas_sgemm.
 * op(A) is [m,k] (A stored [m,k], or [k,m] when trans_a), op(B) is [k,n]; lda/ldb/ldc are
 * row strides in elements. Matches BLAS semantics: with beta == 0, C is not read (NaN in
 * C does not propagate).
 *
 * Same bits for any thread count: OpenBLAS splits the work over m and n, never over k, but
 * its single- and multi-threaded drivers cut a long k into different blocks (beyond the
 * kernel's block depth, GEMM_Q: measured here, a 128 x 128 product gives other bits with 1
 * and 2 threads from k = 321 on), so the partial sums of one dot product are grouped
 * differently, and a rank count that changes the threads per rank (ranks x threads = cores)
 * would change the results. So k is fed in slices of at most K_SLICE (below the block depth
 * of the x86 sgemm kernels), each accumulated into C in order: every element of C is one
 * fixed-order sum whatever the threads (tests/test_kernels_cpu.c checks 1 vs 2 vs 3). */
#include <cblas.h>

#include "kernels/cpu/cpu_ops.h"

enum { K_SLICE = 256 };

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
