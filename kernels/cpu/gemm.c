/* gemm: C[m,n] = alpha * op(A) op(B) + beta * C, row-major, through OpenBLAS cblas_sgemm.
 * op(A) is [m,k] (A stored [m,k], or [k,m] when trans_a), op(B) is [k,n]; lda/ldb/ldc are
 * row strides in elements. Matches BLAS semantics: with beta == 0, C is not read (NaN in
 * C does not propagate). OpenBLAS splits the work over m and n, never over k, so
 * every element of C is one fixed-order dot product: results repeat run to run. */
#include <cblas.h>

#include "kernels/cpu/cpu_ops.h"

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
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
