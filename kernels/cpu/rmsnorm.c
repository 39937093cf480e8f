/* RMSNorm as transformers' LlamaRMSNorm in fp32:
 *   rstd = 1 / sqrt(mean(x^2) + eps);  y = w * (x * rstd)
 * (the mean is accumulated in double, then rounded to fp32 as torch's fp32 result is).
 * Backward, with g = dy * w and r = rstd:
 *   dx = r * g - x * r^3 * mean(g * x)
 *   dw += sum over rows of dy * x * r
 * dx rows are independent (parallel over rows); dw is a reduction over rows, so it runs as
 * a second pass parallel over column blocks with rows summed in order (deterministic). */
#include <math.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/half_round.h"

#define RMSNORM_COL_BLOCK 256

static float row_rstd(const float *xr, int dim, float eps) {
    double sum = 0.0;
    for (int j = 0; j < dim; j++) sum += (double)xr[j] * xr[j];
    float variance = (float)(sum / dim);
    return 1.0f / sqrtf(variance + eps);
}

void cpu_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *weight, int n_rows,
                     int dim, float eps) {
#pragma omp parallel for if ((size_t)n_rows * dim >= CPU_PARALLEL_MIN) schedule(static)
    for (int r = 0; r < n_rows; r++) {
        const float *xr = x + (size_t)r * dim;
        float *yr = out + (size_t)r * dim;
        float rs = row_rstd(xr, dim, eps);
        rstd[r] = rs;
        for (int j = 0; j < dim; j++) yr[j] = weight[j] * (xr[j] * rs);
    }
}

void cpu_rmsnorm_fwd_half(kernels_half_format fmt, uint16_t *out_half, int ld_half, float *out,
                          float *rstd, const float *x, const float *weight, int n_rows, int dim,
                          float eps) {
#pragma omp parallel for if ((size_t)n_rows * dim >= CPU_PARALLEL_MIN) schedule(static)
    for (int r = 0; r < n_rows; r++) {
        const float *xr = x + (size_t)r * dim;
        uint16_t *hr = out_half + (size_t)r * ld_half;
        float rs = row_rstd(xr, dim, eps);
        rstd[r] = rs;
        for (int j = 0; j < dim; j++) {
            float y = weight[j] * (xr[j] * rs);
            if (out) out[(size_t)r * dim + j] = y;
            hr[j] = cpu_half_from_float(y, fmt);
        }
    }
}

/* dx (written, or added to), its 16-bit rounding when dx_half is not NULL, and dw. */
static void rmsnorm_bwd(kernels_half_format fmt, uint16_t *dx_half, int ld_half, float *dx, float *dweight,
                        const float *dout, const float *x, const float *weight, const float *rstd, int n_rows,
                        int dim, bool add_to_dx) {
    int parallel = (size_t)n_rows * dim >= CPU_PARALLEL_MIN;
#pragma omp parallel for if (parallel) schedule(static)
    for (int r = 0; r < n_rows; r++) {
        const float *xr = x + (size_t)r * dim;
        const float *dyr = dout + (size_t)r * dim;
        float *dxr = dx + (size_t)r * dim;
        float rs = rstd[r];
        double gx = 0.0;
        for (int j = 0; j < dim; j++) gx += (double)dyr[j] * weight[j] * xr[j];
        float coef = (float)(gx / dim) * rs * rs * rs;
        if (add_to_dx)
            for (int j = 0; j < dim; j++) dxr[j] += rs * (dyr[j] * weight[j]) - coef * xr[j];
        else
            for (int j = 0; j < dim; j++) dxr[j] = rs * (dyr[j] * weight[j]) - coef * xr[j];
        if (dx_half) {
            uint16_t *hr = dx_half + (size_t)r * ld_half;
            for (int j = 0; j < dim; j++) hr[j] = cpu_half_from_float(dxr[j], fmt);
        }
    }
    if (!dweight) return;
    int n_blocks = (dim + RMSNORM_COL_BLOCK - 1) / RMSNORM_COL_BLOCK;
#pragma omp parallel for if (parallel) schedule(static)
    for (int blk = 0; blk < n_blocks; blk++) {
        int c0 = blk * RMSNORM_COL_BLOCK;
        int width = dim - c0 < RMSNORM_COL_BLOCK ? dim - c0 : RMSNORM_COL_BLOCK;
        double acc[RMSNORM_COL_BLOCK] = {0};
        for (int r = 0; r < n_rows; r++) {
            const float *xr = x + (size_t)r * dim + c0;
            const float *dyr = dout + (size_t)r * dim + c0;
            float rs = rstd[r];
            for (int j = 0; j < width; j++) acc[j] += (double)(dyr[j] * (xr[j] * rs));
        }
        for (int j = 0; j < width; j++) dweight[c0 + j] += (float)acc[j];
    }
}

void cpu_rmsnorm_bwd(float *dx, float *dweight, const float *dout, const float *x,
                     const float *weight, const float *rstd, int n_rows, int dim, bool add_to_dx) {
    rmsnorm_bwd(KERNELS_BF16, NULL, 0, dx, dweight, dout, x, weight, rstd, n_rows, dim, add_to_dx);
}

void cpu_rmsnorm_bwd_half(kernels_half_format fmt, uint16_t *dx_half, int ld_half, float *dx, float *dweight,
                          const float *dout, const float *x, const float *weight, const float *rstd, int n_rows,
                          int dim, bool add_to_dx) {
    rmsnorm_bwd(fmt, dx_half, ld_half, dx, dweight, dout, x, weight, rstd, n_rows, dim, add_to_dx);
}
