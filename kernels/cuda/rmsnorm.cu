// RMSNorm as transformers' LlamaRMSNorm in fp32, mirroring kernels/cpu/rmsnorm.c:
//   rstd = 1 / sqrt(mean(x^2) + eps)  (sum in double, mean rounded to fp32);  y = w (x rstd)
// Backward, g = dy w, r = rstd:  dx = r g - x r^3 mean(g x);  dw += sum_rows dy (x r).
// One block per row for the row reductions (fixed-tree double sums). dw is a reduction
// over rows, done without atomics in two passes: partial sums (in double) over fixed
// chunks of RMS_ROW_CHUNK rows, then the chunks added in order; deterministic.
// rmsnorm_fwd_half is the same kernel with a store that rounds y to 16 bits (half_bits.cuh,
// to_half's rounding) and keeps the fp32 y only when asked: rstd and every y are computed by
// the same instructions as rmsnorm_fwd's, so out_half is to_half(rmsnorm_fwd's out) bit for
// bit (y = w (x r) is two products, nothing for the compiler to contract). Its 16-bit rows
// are ld_half apart (a row may sit beside other columns of a wider GEMM operand); the stores
// stay scalar and coalesced either way (consecutive threads, consecutive columns), so
// ld_half == dim costs what the contiguous store did.
// rmsnorm_bwd_half is rmsnorm_bwd's dx kernel with that store: the fp32 dx it leaves (written,
// or added to) and to_half of it, a residual stream's gradient rounded in the pass that adds
// to it.
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/half_bits.cuh"

#define RMS_ROW_CHUNK 64

// Store: f32_store or half_store<F> (half_bits.cuh), taking (row, column, y): the fp32
// rows are dim apart, the 16-bit rows ld_half.
template <class Store>
__global__ void rmsnorm_fwd_kernel(Store store, float *rstd, const float *x, const float *weight,
                                   int dim, float eps) {
    __shared__ double scratch[CUDA_THREADS];
    const size_t row = blockIdx.x;
    const float *xr = x + row * dim;
    double acc = 0.0;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) acc += (double)xr[j] * xr[j];
    double sum = block_sum(acc, scratch);
    float variance = (float)(sum / dim);
    float rs = 1.0f / sqrtf(variance + eps);  // IEEE sqrt and division (no fast math)
    if (threadIdx.x == 0) rstd[row] = rs;
    for (int j = threadIdx.x; j < dim; j += blockDim.x)
        store(row, j, weight[j] * (xr[j] * rs));
}

// add_to_dx: dx + value, axpy's bits with alpha 1 (y + __fmul_rn(1, value) is y + value).
// Store takes the dx it leaves: f32_store into dx, or half_store (rmsnorm_bwd_half) into dx
// and its 16-bit rounding; each element is read and written by the same thread.
template <class Store>
__global__ void rmsnorm_bwd_dx_kernel(Store store, const float *dx, const float *dout, const float *x,
                                      const float *weight, const float *rstd, int dim, bool add_to_dx) {
    __shared__ double scratch[CUDA_THREADS];
    const size_t row = blockIdx.x;
    const float *xr = x + row * dim, *dyr = dout + row * dim, *dxr = dx + row * dim;
    const float rs = rstd[row];
    double acc = 0.0;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) acc += (double)dyr[j] * weight[j] * xr[j];
    double gx = block_sum(acc, scratch);
    float coef = (float)(gx / dim) * rs * rs * rs;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        const float value = __fmul_rn(rs, dyr[j] * weight[j]) - __fmul_rn(coef, xr[j]);
        store(row, j, add_to_dx ? dxr[j] + value : value);
    }
}

// partial[chunk, c] = sum over the chunk's rows, in row order, of dy (x r). Chunks stride
// over gridDim.y (at most 65535), so any row count launches: a q/k norm's rows are tokens x
// heads (Qwen3 at 64 heads and 65536 tokens: 65536 chunks).
__global__ void rmsnorm_dw_partial_kernel(double *partial, const float *dout, const float *x,
                                          const float *rstd, int n_rows, int dim, int n_chunks) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= dim) return;
    for (int chunk = blockIdx.y; chunk < n_chunks; chunk += gridDim.y) {
        const int r0 = chunk * RMS_ROW_CHUNK;
        const int r1 = r0 + RMS_ROW_CHUNK < n_rows ? r0 + RMS_ROW_CHUNK : n_rows;
        double acc = 0.0;
        for (int r = r0; r < r1; r++) {
            size_t i = (size_t)r * dim + c;
            acc += (double)(dout[i] * (x[i] * rstd[r]));
        }
        partial[(size_t)chunk * dim + c] = acc;
    }
}

__global__ void rmsnorm_dw_sum_kernel(float *dweight, const double *partial, int n_chunks,
                                      int dim) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= dim) return;
    double acc = 0.0;
    for (int chunk = 0; chunk < n_chunks; chunk++) acc += partial[(size_t)chunk * dim + c];
    dweight[c] += (float)acc;
}

extern "C" void cuda_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *weight,
                                 int n_rows, int dim, float eps) {
    if (n_rows <= 0 || dim <= 0) return;
    CUDA_LAUNCH(n_rows, CUDA_THREADS, 0, rmsnorm_fwd_kernel<f32_store>)(f32_store{out, dim}, rstd, x, weight,
                                                                       dim, eps);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_rmsnorm_fwd_half(kernels_half_format fmt, uint16_t *out_half, int ld_half,
                                      float *out, float *rstd, const float *x,
                                      const float *weight, int n_rows, int dim, float eps) {
    if (!cuda_known_half_format(fmt, "rmsnorm_fwd_half", __FILE__, __LINE__)) return;
    if (n_rows <= 0 || dim <= 0) return;
    if (fmt == KERNELS_BF16)
        CUDA_LAUNCH(n_rows, CUDA_THREADS, 0, rmsnorm_fwd_kernel<half_store<KERNELS_BF16>>)(
            half_store<KERNELS_BF16>{out_half, ld_half, out, dim}, rstd, x, weight, dim, eps);
    else
        CUDA_LAUNCH(n_rows, CUDA_THREADS, 0, rmsnorm_fwd_kernel<half_store<KERNELS_FP16>>)(
            half_store<KERNELS_FP16>{out_half, ld_half, out, dim}, rstd, x, weight, dim, eps);
    CUDA_CHECK_LAUNCH();
}

// dw += sum over rows of dy (x r): two passes, partial sums over fixed chunks, then in order.
static void rmsnorm_bwd_dweight(float *dweight, const float *dout, const float *x, const float *rstd, int n_rows,
                                int dim) {
    const int n_chunks = (n_rows + RMS_ROW_CHUNK - 1) / RMS_ROW_CHUNK;
    double *partial = NULL;
    CUDA_CHECK(cudaMallocAsync((void **)&partial, (size_t)n_chunks * dim * sizeof(double), 0));
    if (!partial) return;
    const unsigned int col_blocks = (unsigned int)((dim + CUDA_THREADS - 1) / CUDA_THREADS);
    const unsigned int chunk_blocks = (unsigned int)(n_chunks < 65535 ? n_chunks : 65535);
    CUDA_LAUNCH(dim3(col_blocks, chunk_blocks), CUDA_THREADS, 0, rmsnorm_dw_partial_kernel)(
        partial, dout, x, rstd, n_rows, dim, n_chunks);
    CUDA_CHECK_LAUNCH();
    CUDA_LAUNCH(col_blocks, CUDA_THREADS, 0, rmsnorm_dw_sum_kernel)(dweight, partial, n_chunks, dim);
    CUDA_CHECK_LAUNCH();
    CUDA_CHECK(cudaFreeAsync(partial, 0));
}

extern "C" void cuda_rmsnorm_bwd(float *dx, float *dweight, const float *dout, const float *x,
                                 const float *weight, const float *rstd, int n_rows, int dim, bool add_to_dx) {
    if (n_rows <= 0 || dim <= 0) return;
    CUDA_LAUNCH(n_rows, CUDA_THREADS, 0, rmsnorm_bwd_dx_kernel<f32_store>)(f32_store{dx, dim}, dx, dout, x, weight,
                                                                          rstd, dim, add_to_dx);
    CUDA_CHECK_LAUNCH();
    if (dweight) rmsnorm_bwd_dweight(dweight, dout, x, rstd, n_rows, dim);
}

extern "C" void cuda_rmsnorm_bwd_half(kernels_half_format fmt, uint16_t *dx_half, int ld_half, float *dx,
                                      float *dweight, const float *dout, const float *x, const float *weight,
                                      const float *rstd, int n_rows, int dim, bool add_to_dx) {
    if (!cuda_known_half_format(fmt, "rmsnorm_bwd_half", __FILE__, __LINE__)) return;
    if (n_rows <= 0 || dim <= 0) return;
    if (fmt == KERNELS_BF16)
        CUDA_LAUNCH(n_rows, CUDA_THREADS, 0, rmsnorm_bwd_dx_kernel<half_store<KERNELS_BF16>>)(
            half_store<KERNELS_BF16>{dx_half, ld_half, dx, dim}, dx, dout, x, weight, rstd, dim, add_to_dx);
    else
        CUDA_LAUNCH(n_rows, CUDA_THREADS, 0, rmsnorm_bwd_dx_kernel<half_store<KERNELS_FP16>>)(
            half_store<KERNELS_FP16>{dx_half, ld_half, dx, dim}, dx, dout, x, weight, rstd, dim, add_to_dx);
    CUDA_CHECK_LAUNCH();
    if (dweight) rmsnorm_bwd_dweight(dweight, dout, x, rstd, n_rows, dim);
}
