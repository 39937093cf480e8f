/* DoRA (weight-decomposed LoRA, peft's use_dora): the three ops around the magnitude vector.
 *   dora_norm_scale:     norm[i] = (float)sqrt(sum_j combined[i, j]^2)  (squares summed in
 *                        double, the root rounded once); scale[i] = magnitude[i] / norm[i] (fp32)
 *   scale_cols:          y[t, j] = (scale[j] + offset) * x[t, j], or y[t, j] + that product
 *   dora_magnitude_grad: dmag[j] = (accumulate ? dmag[j] : 0) + (float)(sum_t dy z / norm[j])
 *                        (products exact in double, summed over t in order, divided once)
 * scale_cols fixes its bits on every backend: each product and sum is rounded to fp32 on its
 * own (ISO C11, as this file is compiled, contracts nothing into an FMA). The two reductions
 * add in a fixed order (row i's columns in order; column j's rows in order), whatever the
 * thread count. */
#include <math.h>

#include "kernels/cpu/cpu_ops.h"

/* Columns a thread of dora_magnitude_grad sums together: each row's slice of them is read
 * contiguously, and the double accumulators fit on the stack. */
#define DORA_COL_BLOCK 256

void cpu_dora_norm_scale(float *norm, float *scale, const float *combined, const float *magnitude, int rows,
                         int cols) {
#pragma omp parallel for if ((size_t)rows * cols >= CPU_PARALLEL_MIN) schedule(static)
    for (int i = 0; i < rows; i++) {
        const float *row = combined + (size_t)i * cols;
        double sum = 0.0;
        for (int j = 0; j < cols; j++) sum += (double)row[j] * row[j];
        const float n = (float)sqrt(sum);
        norm[i] = n;
        scale[i] = magnitude[i] / n; /* a zero row: inf or NaN, as peft's division gives */
    }
}

void cpu_scale_cols(float *y, const float *x, const float *scale, float offset, int rows, int cols, bool add) {
#pragma omp parallel for if ((size_t)rows * cols >= CPU_PARALLEL_MIN) schedule(static)
    for (int t = 0; t < rows; t++) {
        const float *xr = x + (size_t)t * cols;
        float *yr = y + (size_t)t * cols;
        if (add)
            for (int j = 0; j < cols; j++) {
                const float product = (scale[j] + offset) * xr[j];
                yr[j] = yr[j] + product;
            }
        else
            for (int j = 0; j < cols; j++) yr[j] = (scale[j] + offset) * xr[j];
    }
}

void cpu_dora_magnitude_grad(float *dmag, const float *dy, const float *z, const float *norm, int rows, int cols,
                             bool accumulate) {
    const int n_blocks = (cols + DORA_COL_BLOCK - 1) / DORA_COL_BLOCK;
#pragma omp parallel for if ((size_t)rows * cols >= CPU_PARALLEL_MIN) schedule(static)
    for (int blk = 0; blk < n_blocks; blk++) {
        const int c0 = blk * DORA_COL_BLOCK;
        const int width = cols - c0 < DORA_COL_BLOCK ? cols - c0 : DORA_COL_BLOCK;
        double acc[DORA_COL_BLOCK] = {0};
        for (int t = 0; t < rows; t++) {
            const float *dyr = dy + (size_t)t * cols + c0, *zr = z + (size_t)t * cols + c0;
            for (int j = 0; j < width; j++) acc[j] += (double)dyr[j] * zr[j];
        }
        for (int j = 0; j < width; j++) {
            const float base = accumulate ? dmag[c0 + j] : 0.0f;
            dmag[c0 + j] = base + (float)(acc[j] / norm[c0 + j]);
        }
    }
}
