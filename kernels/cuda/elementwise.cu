// Element-wise ops: add, axpy, scale, counter-based dropout, and the sum of squares for
// gradient norms, mirroring kernels/cpu/elementwise.c. Grid-stride loops over size_t n.
// out may alias an input of add (each element is read before it is written).
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "kernels/clip_rule.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/half_bits.cuh"

__global__ void add_kernel(float *out, const float *a, const float *b, size_t n) {
    GRID_STRIDE_LOOP(i, n) out[i] = a[i] + b[i];
}

__global__ void axpy_kernel(float *y, float alpha, const float *x, size_t n) {
    // __fmul_rn keeps y + alpha*x two roundings, as on the CPU (no FMA contraction).
    GRID_STRIDE_LOOP(i, n) y[i] = y[i] + __fmul_rn(alpha, x[i]);
}

__global__ void scale_kernel(float *x, float alpha, size_t n) {
    GRID_STRIDE_LOOP(i, n) x[i] *= alpha;
}

// splitmix64 exactly as kernels.h specifies; unsigned 64-bit arithmetic wraps the same on
// host and device, so the mask is bit-identical to the CPU backend's.
__device__ inline uint64_t splitmix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Element i after dropout. Kept values are divided by 1 - p (IEEE division: nvcc's default
// -prec-div=true; the backend must never be built with --use_fast_math), as the CPU does.
__device__ inline float dropped(const float *x, float p, float keep_scale, uint64_t seed, uint64_t offset,
                                size_t i) {
    uint64_t u = splitmix64(seed ^ splitmix64(offset + i));
    float uniform = (float)(u >> 40) * 0x1p-24f;
    return uniform >= p ? x[i] / keep_scale : 0.0f;
}

__global__ void dropout_kernel(float *out, const float *x, float p, uint64_t seed,
                               uint64_t offset, size_t n) {
    const float keep_scale = 1.0f - p;
    GRID_STRIDE_LOOP(i, n) out[i] = dropped(x, p, keep_scale, seed, offset, i);
}

// y + value: axpy's y + 1 * value (an exact product), the same bits.
__global__ void dropout_add_kernel(float *y, const float *x, float p, uint64_t seed, uint64_t offset, size_t n) {
    const float keep_scale = 1.0f - p;
    GRID_STRIDE_LOOP(i, n) y[i] = y[i] + dropped(x, p, keep_scale, seed, offset, i);
}

// to_half's rounding (half_bits.cuh) of each value: to_half(dropout(x)) bit for bit.
template <kernels_half_format F>
__global__ void dropout_half_kernel(uint16_t *out, const float *x, float p, uint64_t seed, uint64_t offset,
                                    size_t n) {
    const float keep_scale = 1.0f - p;
    GRID_STRIDE_LOOP(i, n) out[i] = half_bits<F>(dropped(x, p, keep_scale, seed, offset, i));
}

extern "C" void cuda_add(float *out, const float *a, const float *b, size_t n) {
    if (!n) return;
    CUDA_LAUNCH(cuda_grid_for(n), CUDA_THREADS, 0, add_kernel)(out, a, b, n);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_axpy(float *y, float alpha, const float *x, size_t n) {
    if (!n) return;
    CUDA_LAUNCH(cuda_grid_for(n), CUDA_THREADS, 0, axpy_kernel)(y, alpha, x, n);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_scale(float *x, float alpha, size_t n) {
    if (!n) return;
    CUDA_LAUNCH(cuda_grid_for(n), CUDA_THREADS, 0, scale_kernel)(x, alpha, n);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_dropout(float *out, const float *x, float p, uint64_t seed, uint64_t offset,
                             size_t n) {
    if (!n) return;
    CUDA_LAUNCH(cuda_grid_for(n), CUDA_THREADS, 0, dropout_kernel)(out, x, p, seed, offset, n);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_dropout_add(float *y, const float *x, float p, uint64_t seed, uint64_t offset, size_t n) {
    if (!n) return;
    CUDA_LAUNCH(cuda_grid_for(n), CUDA_THREADS, 0, dropout_add_kernel)(y, x, p, seed, offset, n);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_dropout_half(kernels_half_format fmt, uint16_t *out_half, const float *x, float p,
                                  uint64_t seed, uint64_t offset, size_t n) {
    if (!cuda_known_half_format(fmt, "dropout_half", __FILE__, __LINE__) || !n) return;
    if (fmt == KERNELS_BF16)
        CUDA_LAUNCH(cuda_grid_for(n), CUDA_THREADS, 0, dropout_half_kernel<KERNELS_BF16>)(
            out_half, x, p, seed, offset, n);
    else
        CUDA_LAUNCH(cuda_grid_for(n), CUDA_THREADS, 0, dropout_half_kernel<KERNELS_FP16>)(
            out_half, x, p, seed, offset, n);
    CUDA_CHECK_LAUNCH();
}

// Sum of squares in double, deterministic: SUMSQ_BLOCKS blocks each sum a fixed strided
// subset of the elements (thread t of block b takes i = b*T + t + k*B*T, k ascending) and
// reduce it in a fixed tree; one block then adds the partials in a fixed tree. The launch
// shape never depends on the device, so the bits repeat run to run (they differ from the
// CPU's block order by rounding only).
#define SUMSQ_BLOCKS 512

__global__ void sum_squares_partial_kernel(double *partial, const float *x, size_t n) {
    __shared__ double scratch[CUDA_THREADS];
    double acc = 0.0;
    GRID_STRIDE_LOOP(i, n) acc += (double)x[i] * x[i];
    double total = block_sum(acc, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

__global__ void sum_partials_kernel(double *result, const double *partial, int count) {
    __shared__ double scratch[SUMSQ_BLOCKS];
    scratch[threadIdx.x] = threadIdx.x < (unsigned)count ? partial[threadIdx.x] : 0.0;
    __syncthreads();
    for (unsigned int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) scratch[threadIdx.x] += scratch[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) *result = scratch[0];
}

// Launches cuda_sum_squares' two passes: partial[SUMSQ_BLOCKS] is scratch, *result its sum.
static void sum_squares_launch(const float *x, size_t n, double *partial, double *result) {
    CUDA_LAUNCH(SUMSQ_BLOCKS, CUDA_THREADS, 0, sum_squares_partial_kernel)(partial, x, n);
    CUDA_CHECK_LAUNCH();
    CUDA_LAUNCH(1, SUMSQ_BLOCKS, 0, sum_partials_kernel)(result, partial, SUMSQ_BLOCKS);
    CUDA_CHECK_LAUNCH();
}

extern "C" double cuda_sum_squares(const float *x, size_t n) {
    if (!n) return 0.0;
    double *partial = NULL;
    // Stream-ordered allocation from the default pool: cheap after the first call.
    CUDA_CHECK(cudaMallocAsync((void **)&partial, (SUMSQ_BLOCKS + 1) * sizeof(double), 0));
    if (!partial) return NAN;
    sum_squares_launch(x, n, partial, partial + SUMSQ_BLOCKS);
    double fetched = NAN;
    CUDA_CHECK(cudaMemcpy(&fetched, partial + SUMSQ_BLOCKS, sizeof(double), cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaFreeAsync(partial, 0));
    return fetched;
}

// Many sum_squares at once (gradient-norm blocks): CUDA block b reproduces cuda_sum_squares on
// x[b*block, ...) addition for addition, so the bits are the same. With len <= SUMSQ_BLOCKS
// * CUDA_THREADS every thread of the partial kernel sees at most one element, partial j is the
// block_sum of chunk j's squares (0.0 + a == a), the partials past the last chunk are zeros,
// and the one-block tree over SUMSQ_BLOCKS partials adds those zeros exactly; here the 256
// threads walk the same halving tree over the same SUMSQ_BLOCKS slots.
//
// Each chunk (256 elements, zero-padded past len) is reduced by one warp in registers, the 8
// warps taking chunks w, w+8, ... concurrently, with no barrier until the final tree. Why
// that is block_sum's result bit for bit: block_sum over 256 threads, thread t holding s[t],
// does for stride S = 128, 64, ..., 1: s[t] = s[t] + s[t+S] for every t < S. Give lane l of
// the warp v[j] = s[l + 32j], j = 0..7 (element c*256 + l + 32j, the element thread l + 32j
// of block c of the partial kernel squares). Then
//   S = 128: t < 128 is j < 4, and t + 128 is slot j + 4 of the same lane: v[j] += v[j+4];
//   S = 64:  j < 2, t + 64 is slot j + 2:                                  v[j] += v[j+2];
//   S = 32:  j = 0, t + 32 is slot 1:                                      v[0] += v[1];
// leaving s[l] = v[0] in lane l for l < 32. For S = 16, ..., 1, s[l] + s[l+S] for l < S is
// v[0] + (lane l+S's v[0]), which __shfl_down_sync(v[0], S) delivers: lane l+S < 2S held
// the value of the previous level (by induction, lanes below 2S are exact after each step;
// what lanes >= S compute is never read again). Every addition has the same two operands in
// the same order as block_sum's, so lane 0 ends with block_sum's total: partial[c]. (nvcc
// may fuse a square into the addition after it, here or in the other kernels; the square of
// an fp32 value is exact in double, so an FMA rounds the same sum and no bit changes.)
#define SUMSQ_WARPS (CUDA_THREADS / 32)

__global__ void sum_squares_blocks_kernel(double *sums, const float *x, size_t n, size_t block) {
    __shared__ double partial[SUMSQ_BLOCKS];
    const size_t start = (size_t)blockIdx.x * block;
    const size_t len = n - start < block ? n - start : block;
    const unsigned int chunks = (unsigned int)((len + CUDA_THREADS - 1) / CUDA_THREADS);
    const unsigned int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    // Slots no chunk fills; disjoint from the warps' slots, so no barrier between the two.
    for (unsigned int j = chunks + threadIdx.x; j < SUMSQ_BLOCKS; j += blockDim.x)
        partial[j] = 0.0;
    for (unsigned int c = warp; c < chunks; c += SUMSQ_WARPS) {
        const float *xc = x + start + (size_t)c * CUDA_THREADS;
        const size_t avail = len - (size_t)c * CUDA_THREADS;
        double v[8];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const size_t i = lane + 32 * j;
            v[j] = i < avail ? (double)xc[i] * xc[i] : 0.0;
        }
#pragma unroll
        for (int j = 0; j < 4; j++) v[j] += v[j + 4];
        v[0] += v[2];
        v[1] += v[3];
        v[0] += v[1];
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2)
            v[0] += __shfl_down_sync(CUDA_FULL_MASK, v[0], offset);
        if (lane == 0) partial[c] = v[0];
    }
    __syncthreads();
    for (unsigned int stride = SUMSQ_BLOCKS / 2; stride > 0; stride /= 2) {
        for (unsigned int j = threadIdx.x; j < stride; j += blockDim.x) partial[j] += partial[j + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) sums[blockIdx.x] = partial[0];
}

// The block sums into sums (device memory), no wait. false where scratch could not be had.
static bool sum_squares_blocks_launch(const float *x, size_t n, size_t block, double *sums) {
    const size_t n_blocks = (n + block - 1) / block;
    if (block <= (size_t)SUMSQ_BLOCKS * CUDA_THREADS && n_blocks <= 0x7fffffffu) {
        CUDA_LAUNCH((unsigned int)n_blocks, CUDA_THREADS, 0, sum_squares_blocks_kernel)(sums, x, n, block);
        CUDA_CHECK_LAUNCH();
        return true;
    }
    // Blocks too long to reproduce in one CUDA block: one sum_squares each (slow, exact).
    double *partial = NULL;
    CUDA_CHECK(cudaMallocAsync((void **)&partial, SUMSQ_BLOCKS * sizeof(double), 0));
    if (!partial) return false;
    for (size_t b = 0; b < n_blocks; b++)
        sum_squares_launch(x + b * block, n - b * block < block ? n - b * block : block, partial, sums + b);
    CUDA_CHECK(cudaFreeAsync(partial, 0));
    return true;
}

extern "C" void cuda_sum_squares_blocks(const float *x, size_t n, size_t block, double *host_sums) {
    if (!n || !block) return;
    const size_t n_blocks = (n + block - 1) / block;
    double *sums = NULL;
    CUDA_CHECK(cudaMallocAsync((void **)&sums, n_blocks * sizeof(double), 0));
    if (!sums || !sum_squares_blocks_launch(x, n, block, sums)) {
        for (size_t b = 0; b < n_blocks; b++) host_sums[b] = NAN;
        if (sums) CUDA_CHECK(cudaFreeAsync(sums, 0));
        return;
    }
    CUDA_CHECK(cudaMemcpy(host_sums, sums, n_blocks * sizeof(double), cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaFreeAsync(sums, 0));
}

extern "C" void cuda_sum_squares_blocks_to(const float *x, size_t n, size_t block, double *sums) {
    if (!n || !block) return;
    (void)sum_squares_blocks_launch(x, n, block, sums); // a failed allocation is recorded by CUDA_CHECK
}

// clip_factor in two launches: one thread per group of KERNELS_NORM_GROUP block sums adds its
// group in order (clip_rule_run_sum) and parks the total in the group's first slot, which no
// other thread reads; then one thread adds the totals in order and applies the rule. The same
// additions, in the same order, as clip_rule_grouped_total on the host.
__global__ void norm_groups_kernel(double *sums, size_t n_blocks) {
    const size_t first = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) * KERNELS_NORM_GROUP;
    if (first >= n_blocks) return;
    const size_t len = n_blocks - first < KERNELS_NORM_GROUP ? n_blocks - first : KERNELS_NORM_GROUP;
    sums[first] = clip_rule_run_sum(sums, first, len);
}

__global__ void clip_factor_kernel(const double *sums, size_t n_blocks, double max_norm, double loss_scale,
                                   double *norm, float *factor) {
    double total = 0.0;
    for (size_t g = 0; g < n_blocks; g += KERNELS_NORM_GROUP) total += sums[g];
    clip_rule_apply(total, max_norm, loss_scale, norm, factor);
}

extern "C" void cuda_clip_factor(double *sums, size_t n_blocks, double max_norm, double loss_scale, double *norm,
                                 float *factor) {
    const size_t n_groups = (n_blocks + KERNELS_NORM_GROUP - 1) / KERNELS_NORM_GROUP;
    if (n_groups) {
        CUDA_LAUNCH(cuda_grid_for(n_groups), CUDA_THREADS, 0, norm_groups_kernel)(sums, n_blocks);
        CUDA_CHECK_LAUNCH();
    }
    CUDA_LAUNCH(1, 1, 0, clip_factor_kernel)(sums, n_blocks, max_norm, loss_scale, norm, factor);
    CUDA_CHECK_LAUNCH();
}
