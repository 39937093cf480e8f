// gemm: C[m,n] = alpha op(A) op(B) + beta C, row-major (kernels.h), through cuBLAS in true
// fp32 (the handle is in CUBLAS_PEDANTIC_MATH: no TF32), so it agrees with the CPU
// reference (OpenBLAS) to fp32 rounding.
//
// cuBLAS is column-major. A row-major [r, c] matrix with row stride ld is, read
// column-major, its transpose [c, r] with leading dimension ld. So the row-major product
// C = op(A) op(B) is the column-major C^T = op(B)^T op(A)^T: call cuBLAS with the operands
// swapped (B first), the dimensions swapped (n, m), and each operand's transpose flag as
// given. For B: not transposed, it is stored [k, n] row-major = [n, k] column-major, which
// is op(B)^T as needed (CUBLAS_OP_N); transposed, it is stored [n, k] = [k, n]
// column-major and needs CUBLAS_OP_T. Likewise A. Leading dimensions pass through.
#include <cublas_v2.h>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_internal.cuh"

// k == 0: an empty product, C = beta C, with beta == 0 not reading C (as the CPU backend).
__global__ void gemm_scale_kernel(float *c, int m, int n, int ldc, float beta) {
    size_t total = (size_t)m * n;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        float *cij = c + (i / n) * (size_t)ldc + i % n;
        *cij = beta == 0.0f ? 0.0f : beta * *cij;
    }
}

static const char *cublas_message(cublasStatus_t status) { return cublasGetStatusString(status); }

extern "C" void cuda_gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                          const float *a, int lda, const float *b, int ldb, float beta, float *c,
                          int ldc) {
    if (m <= 0 || n <= 0) return;
    if (k <= 0) {
        CUDA_LAUNCH(cuda_grid_for((size_t)m * n), CUDA_THREADS, 0, gemm_scale_kernel)(c, m, n, ldc, beta);
        CUDA_CHECK_LAUNCH();
        return;
    }
    cublasHandle_t handle = ctune_cublas_handle();
    if (!handle) return;
    // cuBLAS, like BLAS, does not read C when beta == 0 (NaN in C does not propagate).
    cublasStatus_t status =
        cublasSgemm(handle, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                    n, m, k, &alpha, b, ldb, a, lda, &beta, c, ldc);
    if (status != CUBLAS_STATUS_SUCCESS)
        ctune_cuda_record(__FILE__, __LINE__, "cublasSgemm", cublas_message(status));
}
