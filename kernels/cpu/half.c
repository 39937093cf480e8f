/* 16-bit formats of mixed precision: fp32 <-> bfloat16 / IEEE binary16 conversions (the
 * rounding itself, and why it is torch's, is in half_round.h) and a gemm whose A and B are
 * 16-bit. */
#include <math.h>
#include <stdlib.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/half_round.h"
#include "kernels/kernels.h"
#include "kernels/nf4.h"

void cpu_to_half(uint16_t *out, const float *x, size_t n, kernels_half_format fmt) {
    if (fmt == KERNELS_BF16) {
#pragma omp parallel for if (n >= CPU_PARALLEL_MIN) schedule(static)
        for (size_t i = 0; i < n; i++) out[i] = bf16_from_float(x[i]);
    } else {
#pragma omp parallel for if (n >= CPU_PARALLEL_MIN) schedule(static)
        for (size_t i = 0; i < n; i++) out[i] = fp16_from_float(x[i]);
    }
}

void cpu_from_half(float *out, const uint16_t *x, size_t n, kernels_half_format fmt) {
    if (fmt == KERNELS_BF16) {
#pragma omp parallel for if (n >= CPU_PARALLEL_MIN) schedule(static)
        for (size_t i = 0; i < n; i++) out[i] = float_from_bf16(x[i]);
    } else {
#pragma omp parallel for if (n >= CPU_PARALLEL_MIN) schedule(static)
        for (size_t i = 0; i < n; i++) out[i] = float_from_fp16(x[i]);
    }
}

/* One multiply then the same rounding as cpu_to_half; scale 1 multiplies to x itself (also
 * for NaN, whose payload then stays what to_half sees), so the bits match to_half's. */
void cpu_to_half_2d(kernels_half_format fmt, uint16_t *out, int ld_out, const float *x, int ld_x,
                    int rows, int cols, float scale) {
    if (rows <= 0 || cols <= 0) return;
#pragma omp parallel for if ((size_t)rows * cols >= CPU_PARALLEL_MIN) schedule(static)
    for (int i = 0; i < rows; i++) {
        const float *xr = x + (size_t)i * ld_x;
        uint16_t *hr = out + (size_t)i * ld_out;
        for (int j = 0; j < cols; j++) hr[j] = cpu_half_from_float(scale * xr[j], fmt);
    }
}

void cpu_to_half_2d_many(kernels_half_format fmt, const kernels_half_block *blocks, int n) {
    for (int i = 0; i < n; i++) {
        const kernels_half_block *b = &blocks[i];
        cpu_to_half_2d(fmt, b->out, b->ld_out, b->x, b->ld_x, b->rows, b->cols, b->scale);
    }
}

void cpu_nf4_to_half_2d(kernels_half_format fmt, uint16_t *out, int ld_out, const uint8_t *codes,
                        const float *absmax, int rows, int cols) {
    if (rows <= 0 || cols <= 0) return;
#pragma omp parallel for if ((size_t)rows * cols >= CPU_PARALLEL_MIN) schedule(static)
    for (int i = 0; i < rows; i++) {
        uint16_t *hr = out + (size_t)i * ld_out;
        for (int j = 0; j < cols; j++)
            hr[j] = cpu_half_from_float(nf4_value_at(codes, absmax, (size_t)i * cols + j), fmt);
    }
}

/* Widens a rows x cols block of a 16-bit matrix with row stride ld into a packed fp32
 * matrix (row stride cols); only the block is read, so padding columns may hold anything. */
static void widen_block(float *dst, const uint16_t *src, int rows, int cols, int ld,
                        kernels_half_format fmt) {
    for (int r = 0; r < rows; r++)
        cpu_from_half(dst + (size_t)r * cols, src + (size_t)r * ld, (size_t)cols, fmt);
}

/* cpu_gemm_half with one row: A's row widened once, and each CPU_GEMV_COLS-column tile of C
 * widening its own slice of B (as [cols, k] or [k, cols], the layouts widening all of B
 * gives) before cpu_gemm's gemv on it: the same sgemv calls on the same values. A tile whose
 * scratch cannot be had is NaN, as cpu_gemm_half's whole result would be. */
static void gemv_half(kernels_half_format fmt, bool trans_a, bool trans_b, int n, int k, float alpha,
                      const uint16_t *a, int lda, const uint16_t *b, int ldb, float beta, float *c) {
    float *x = malloc((size_t)k * sizeof *x);
    if (x) widen_block(x, a, trans_a ? k : 1, trans_a ? 1 : k, lda, fmt);
    const int tiles = (n + CPU_GEMV_COLS - 1) / CPU_GEMV_COLS;
#pragma omp parallel for schedule(static)
    for (int t = 0; t < tiles; t++) {
        const int j0 = t * CPU_GEMV_COLS, cols = n - j0 < CPU_GEMV_COLS ? n - j0 : CPU_GEMV_COLS;
        float *bt = x ? malloc((size_t)cols * (size_t)k * sizeof *bt) : NULL;
        if (!bt) {
            for (int j = 0; j < cols; j++) c[j0 + j] = NAN;
            continue;
        }
        if (trans_b) widen_block(bt, b + (size_t)j0 * ldb, cols, k, ldb, fmt);
        else widen_block(bt, b + j0, k, cols, ldb, fmt);
        cpu_gemv_tile(trans_b, cols, k, alpha, x, 1, bt, trans_b ? k : cols, beta, c + j0);
        free(bt);
    }
    free(x);
}

/* The CPU has no 16-bit matrix unit worth using here: A and B are widened to fp32 (exact)
 * and the fp32 gemm runs on them, so C is what cpu_gemm gives on the widened matrices. The
 * scratch is allocated per call; the CPU backend is the reference, not the fast path. */
void cpu_gemm_half(kernels_half_format fmt, bool trans_a, bool trans_b, int m, int n, int k,
                   float alpha, const uint16_t *a, int lda, const uint16_t *b, int ldb, float beta,
                   float *c, int ldc) {
    if (m <= 0 || n <= 0) return;
    if (k <= 0) {
        /* An empty product never reads A or B. */
        cpu_gemm(trans_a, trans_b, m, n, k, alpha, NULL, 1, NULL, 1, beta, c, ldc);
        return;
    }
    if (m == 1) { /* a generated token: B widened a tile at a time, not whole each call */
        gemv_half(fmt, trans_a, trans_b, n, k, alpha, a, lda, b, ldb, beta, c);
        return;
    }
    /* Stored shapes: A is [m,k] or, transposed, [k,m]; B is [k,n] or [n,k]. */
    int a_rows = trans_a ? k : m, a_cols = trans_a ? m : k;
    int b_rows = trans_b ? n : k, b_cols = trans_b ? k : n;
    size_t a_count = (size_t)a_rows * (size_t)a_cols, b_count = (size_t)b_rows * (size_t)b_cols;
    float *scratch = malloc((a_count + b_count) * sizeof(float));
    if (!scratch) {
        /* The table's void signature cannot report the failure, and leaving C untouched would
         * pass stale numbers off as a result: fill C with NaN so the loss (and the fp16
         * overflow check) sees the failure at once. */
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) c[(size_t)i * ldc + j] = NAN;
        return;
    }
    float *a32 = scratch, *b32 = scratch + a_count;
    widen_block(a32, a, a_rows, a_cols, lda, fmt);
    widen_block(b32, b, b_rows, b_cols, ldb, fmt);
    cpu_gemm(trans_a, trans_b, m, n, k, alpha, a32, a_cols, b32, b_cols, beta, c, ldc);
    free(scratch);
}

/* The product into fp32 scratch, then to_half_2d's rounding into c_half: the bits of
 * gemm_half then to_half by construction. */
void cpu_gemm_half_to_half(kernels_half_format fmt, bool trans_a, bool trans_b, int m, int n, int k,
                           const uint16_t *a, int lda, const uint16_t *b, int ldb, uint16_t *c_half, int ldc) {
    if (m <= 0 || n <= 0) return;
    float *c = malloc((size_t)m * n * sizeof(float));
    if (!c) { /* as cpu_gemm_half: a NaN result rather than stale values passed off as one */
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) c_half[(size_t)i * ldc + j] = cpu_half_from_float(NAN, fmt);
        return;
    }
    cpu_gemm_half(fmt, trans_a, trans_b, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, n);
    cpu_to_half_2d(fmt, c_half, ldc, c, n, m, n, 1.0f);
    free(c);
}

/* The product, then r added row by row (cpu_add's bits). */
void cpu_gemm_half_add(kernels_half_format fmt, bool trans_a, bool trans_b, int m, int n, int k,
                       const uint16_t *a, int lda, const uint16_t *b, int ldb, const float *r, float *c, int ldc) {
    if (m <= 0 || n <= 0) return;
    cpu_gemm_half(fmt, trans_a, trans_b, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
    if (ldc == n) {
        cpu_add(c, c, r, (size_t)m * n);
        return;
    }
    for (int i = 0; i < m; i++) cpu_add(c + (size_t)i * ldc, c + (size_t)i * ldc, r + (size_t)i * ldc, (size_t)n);
}
