/* Element-wise ops: add, axpy, scale, counter-based dropout, and the sum of squares used
 * for gradient norms. All are embarrassingly parallel except sum_squares, whose reduction
 * order is fixed (see below) so its result never depends on the thread count. */
#include "kernels/clip_rule.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/half_round.h"

void cpu_add(float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for if (n >= CPU_PARALLEL_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void cpu_axpy(float *y, float alpha, const float *x, size_t n) {
#pragma omp parallel for if (n >= CPU_PARALLEL_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) y[i] += alpha * x[i];
}

void cpu_scale(float *x, float alpha, size_t n) {
#pragma omp parallel for if (n >= CPU_PARALLEL_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) x[i] *= alpha;
}

/* splitmix64 (Steele, Lea, Flood 2014): a bijective 64-bit mixer; used as a counter-based
 * generator so element i's mask bit depends only on (seed, offset + i), on every backend. */
static inline uint64_t splitmix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Element i's value after dropout: u = top 24 bits (exact: 24 bits fit a float mantissa);
 * an element is kept when u >= p, so P(keep) = 1 - p up to 2^-24. Kept values are divided
 * (not multiplied by a reciprocal) by 1 - p so that every backend rounds the same way. */
static inline float dropped(const float *x, float p, float keep_scale, uint64_t seed, uint64_t offset, size_t i) {
    uint64_t u = splitmix64(seed ^ splitmix64(offset + i));
    float uniform = (float)(u >> 40) * 0x1p-24f;
    return uniform >= p ? x[i] / keep_scale : 0.0f;
}

void cpu_dropout(float *out, const float *x, float p, uint64_t seed, uint64_t offset, size_t n) {
    const float keep_scale = 1.0f - p;
#pragma omp parallel for if (n >= CPU_PARALLEL_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = dropped(x, p, keep_scale, seed, offset, i);
}

/* y + dropout(x), as axpy adds alpha * value with alpha 1 (exact): the same bits. */
void cpu_dropout_add(float *y, const float *x, float p, uint64_t seed, uint64_t offset, size_t n) {
    const float keep_scale = 1.0f - p;
#pragma omp parallel for if (n >= CPU_PARALLEL_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) y[i] += dropped(x, p, keep_scale, seed, offset, i);
}

void cpu_dropout_half(kernels_half_format fmt, uint16_t *out_half, const float *x, float p, uint64_t seed,
                      uint64_t offset, size_t n) {
    const float keep_scale = 1.0f - p;
#pragma omp parallel for if (n >= CPU_PARALLEL_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) out_half[i] = cpu_half_from_float(dropped(x, p, keep_scale, seed, offset, i), fmt);
}

/* Sum of squares in double. The array is cut into fixed blocks of SUMSQ_BLOCK elements;
 * each block is summed sequentially (four interleaved accumulators, combined in a fixed
 * order), and the block sums are added in block order. Threads only decide who computes a
 * block, never the order of additions, so the result is bitwise independent of the thread
 * count. Blocks are processed in groups so the partial sums fit on the stack. */
#define SUMSQ_BLOCK 8192
#define SUMSQ_GROUP 512

static double sum_squares_block(const float *x, size_t n) {
    double acc0 = 0.0, acc1 = 0.0, acc2 = 0.0, acc3 = 0.0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        acc0 += (double)x[i] * x[i];
        acc1 += (double)x[i + 1] * x[i + 1];
        acc2 += (double)x[i + 2] * x[i + 2];
        acc3 += (double)x[i + 3] * x[i + 3];
    }
    for (; i < n; i++) acc0 += (double)x[i] * x[i];
    return (acc0 + acc1) + (acc2 + acc3);
}

void cpu_sum_squares_blocks(const float *x, size_t n, size_t block, double *host_sums) {
    size_t n_blocks = block ? (n + block - 1) / block : 0;
    for (size_t b = 0; b < n_blocks; b++)
        host_sums[b] = cpu_sum_squares(x + b * block, n - b * block < block ? n - b * block : block);
}

void cpu_clip_factor(double *sums, size_t n_blocks, double max_norm, double loss_scale, double *norm,
                     float *factor) {
    clip_rule_apply(clip_rule_grouped_total(sums, n_blocks), max_norm, loss_scale, norm, factor);
}

double cpu_sum_squares(const float *x, size_t n) {
    double total = 0.0;
    size_t n_blocks = (n + SUMSQ_BLOCK - 1) / SUMSQ_BLOCK;
    for (size_t group = 0; group < n_blocks; group += SUMSQ_GROUP) {
        double partial[SUMSQ_GROUP];
        int in_group = (int)(n_blocks - group < SUMSQ_GROUP ? n_blocks - group : SUMSQ_GROUP);
#pragma omp parallel for if (in_group > 1) schedule(static)
        for (int b = 0; b < in_group; b++) {
            size_t start = (group + (size_t)b) * SUMSQ_BLOCK;
            size_t len = n - start < SUMSQ_BLOCK ? n - start : SUMSQ_BLOCK;
            partial[b] = sum_squares_block(x + start, len);
        }
        for (int b = 0; b < in_group; b++) total += partial[b];
    }
    return total;
}
