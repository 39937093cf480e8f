// DoRA (weight-decomposed LoRA, peft's use_dora), mirroring kernels/cpu/dora.c:
//   dora_norm_scale:     norm[i] = (float)sqrt(sum_j combined[i, j]^2), scale[i] = magnitude[i] / norm[i]
//   scale_cols:          y[t, j] = (scale[j] + offset) * x[t, j], or y[t, j] + that product
//   dora_magnitude_grad: dmag[j] = (accumulate ? dmag[j] : 0) + (float)(sum_t dy z / norm[j])
// The norm is a block per row with a fixed-tree double sum (rmsnorm's forward). scale_cols
// rounds each sum and product on its own (__fadd_rn, __fmul_rn: nvcc would otherwise fuse
// the add's product into an FMA), so its bits are the CPU's. The magnitude gradient is a
// reduction over rows, done without atomics in two passes: double partial sums over fixed
// chunks of rows, then the chunks added in order, per column; the chunk length depends on
// rows only, so the bits repeat on every device (they differ from the CPU's row order by
// rounding only).
#include <cuda_runtime.h>
#include <math.h>

#include "kernels/cuda/cuda_common.cuh"

// Rows a chunk of the magnitude gradient sums, at least; longer (so that at most
// DORA_MAX_CHUNKS chunks exist) when there are many rows: the partial sums' scratch is then
// at most DORA_MAX_CHUNKS * cols doubles, whatever the token count.
#define DORA_ROW_CHUNK 64
#define DORA_MAX_CHUNKS 256

__global__ void dora_norm_scale_kernel(float *norm, float *scale, const float *combined, const float *magnitude,
                                       int cols) {
    __shared__ double scratch[CUDA_THREADS];
    const size_t row = blockIdx.x;
    const float *cr = combined + row * cols;
    double acc = 0.0;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) acc += (double)cr[j] * cr[j];
    const double sum = block_sum(acc, scratch);
    if (threadIdx.x == 0) {
        const float n = (float)sqrt(sum);  // IEEE double sqrt, rounded once (no fast math)
        norm[row] = n;
        scale[row] = magnitude[row] / n;   // IEEE division: a zero row gives inf or NaN
    }
}

// A 2D grid-stride loop (cuda_rows_shape): x over a row's columns, y over rows.
__global__ void scale_cols_kernel(float *y, const float *x, const float *scale, float offset, int rows, int cols,
                                  bool add) {
    for (size_t t = blockIdx.y * (size_t)blockDim.y + threadIdx.y; t < (size_t)rows;
         t += (size_t)gridDim.y * blockDim.y) {
        const float *xr = x + t * cols;
        float *yr = y + t * cols;
        for (size_t j = blockIdx.x * (size_t)blockDim.x + threadIdx.x; j < (size_t)cols;
             j += (size_t)gridDim.x * blockDim.x) {
            const float product = __fmul_rn(__fadd_rn(scale[j], offset), xr[j]);
            yr[j] = add ? __fadd_rn(yr[j], product) : product;
        }
    }
}

// partial[chunk, c] = sum over the chunk's rows, in row order, of dy z (exact products in
// double). Consecutive threads take consecutive columns of a row, so the loads coalesce.
__global__ void dora_magnitude_partial_kernel(double *partial, const float *dy, const float *z, int rows, int cols,
                                              int chunk_rows, int n_chunks) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    for (int chunk = blockIdx.y; chunk < n_chunks; chunk += gridDim.y) {
        const int r0 = chunk * chunk_rows;
        const int r1 = rows - r0 < chunk_rows ? rows : r0 + chunk_rows;
        double acc = 0.0;
        for (int r = r0; r < r1; r++) {
            const size_t i = (size_t)r * cols + c;
            acc += (double)dy[i] * z[i];
        }
        partial[(size_t)chunk * cols + c] = acc;
    }
}

__global__ void dora_magnitude_sum_kernel(float *dmag, const double *partial, const float *norm, int n_chunks,
                                          int cols, bool accumulate) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    double acc = 0.0;
    for (int chunk = 0; chunk < n_chunks; chunk++) acc += partial[(size_t)chunk * cols + c];
    const float base = accumulate ? dmag[c] : 0.0f;
    dmag[c] = __fadd_rn(base, (float)(acc / norm[c]));
}

extern "C" void cuda_dora_norm_scale(float *norm, float *scale, const float *combined, const float *magnitude,
                                     int rows, int cols) {
    if (rows <= 0) return;
    CUDA_LAUNCH(rows, CUDA_THREADS, 0, dora_norm_scale_kernel)(norm, scale, combined, magnitude, cols);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_scale_cols(float *y, const float *x, const float *scale, float offset, int rows, int cols,
                                bool add) {
    if (rows <= 0 || cols <= 0) return;
    dim3 grid, block;
    cuda_rows_shape(rows, cols, &grid, &block);
    CUDA_LAUNCH(grid, block, 0, scale_cols_kernel)(y, x, scale, offset, rows, cols, add);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_dora_magnitude_grad(float *dmag, const float *dy, const float *z, const float *norm, int rows,
                                         int cols, bool accumulate) {
    if (cols <= 0) return;
    const int rows_used = rows > 0 ? rows : 0;
    int chunk_rows = (rows_used + DORA_MAX_CHUNKS - 1) / DORA_MAX_CHUNKS;
    if (chunk_rows < DORA_ROW_CHUNK) chunk_rows = DORA_ROW_CHUNK;
    const int n_chunks = (rows_used + chunk_rows - 1) / chunk_rows;  // 0 without rows: sums of nothing
    const unsigned int col_blocks = (unsigned int)((cols + CUDA_THREADS - 1) / CUDA_THREADS);
    double *partial = NULL;
    if (n_chunks) {
        CUDA_CHECK(cudaMallocAsync((void **)&partial, (size_t)n_chunks * cols * sizeof(double), 0));
        if (!partial) return;
        CUDA_LAUNCH(dim3(col_blocks, (unsigned int)n_chunks), CUDA_THREADS, 0, dora_magnitude_partial_kernel)(
            partial, dy, z, rows_used, cols, chunk_rows, n_chunks);
        CUDA_CHECK_LAUNCH();
    }
    CUDA_LAUNCH(col_blocks, CUDA_THREADS, 0, dora_magnitude_sum_kernel)(dmag, partial, norm, n_chunks, cols,
                                                                        accumulate);
    CUDA_CHECK_LAUNCH();
    if (partial) CUDA_CHECK(cudaFreeAsync(partial, 0));
}
