// half: the 16-bit ops of mixed precision (kernels.h: to_half, from_half, to_half_2d,
// gemm_half), mirroring kernels/cpu/half.c.
//
// Casts (the conversions live in half_bits.cuh, shared with every fused 16-bit producer).
// __float2bfloat16_rn / __float2half_rn are the PTX cvt.rn conversions: round to
// nearest, ties to even, without .satfinite, so fp16 overflows to +-inf as torch does
// (what fp16 loss scaling detects); fp32 subnormals are converted, not flushed (the
// backend is never built with -ftz / --use_fast_math), and fp16 underflows gradually
// through its subnormals. NaN stays NaN (the hardware returns the canonical NaN, so the
// payload may differ from the CPU's, which the contract allows). Widening is exact.
//
// gemm_half: cuBLASLt, A and B as CUDA_R_16BF / CUDA_R_16F, C = D in CUDA_R_32F,
// CUBLAS_COMPUTE_32F with fp32 scalars: tensor cores multiply the 16-bit values (each
// product exact in fp32) and accumulate in fp32, so the result differs from the CPU's only
// in summation order. No pedantic math here: tensor cores are the point of this path.
// Row-major is handled as in gemm.cu: row-major C = op(A) op(B) is column-major
// C^T = op(B)^T op(A)^T, so B goes first with n and m swapped, each operand keeps its own
// transpose flag, and leading dimensions pass through. A layout describes the matrix as
// stored: B (not transposed) is row-major [k, n] = column-major n x k, transposed it is
// k x n; A (not transposed) is column-major k x m, transposed m x k; C is n x m.
// cuBLASLt, like BLAS, does not read C when beta == 0, so NaN in C does not propagate
// (tests/test_kernels_cuda.c poisons C with NaN to hold it to that).
//
// Process-wide state, and why: the table carries no context (see device.cu), so the
// cuBLASLt handle and its workspace are created once under pthread_once on the device
// current at the first gemm_half, like the cuBLAS handle; a small cache of matmul plans
// (descriptors + the heuristic's algorithm) spares the heuristic query on every call of a
// training step, which repeats the same few shapes. The cache is guarded by a mutex held
// through cublasLtMatmul (which only enqueues), so an entry is never evicted while in use.
// Every op runs on the default stream, so consecutive matmuls share the workspace safely.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/half_bits.cuh"
#include "kernels/nf4.h"

// ------------------------------------------------------------------ casts

// Vectorised (cuda_common.cuh: cuda_vec4_plan): a float4 in and four 16-bit values out as
// one 8-byte store where the pointers allow, one element at a time otherwise. Every element
// goes through half_bits / half_widen (half_bits.cuh), the one rounding every 16-bit
// producer of this backend uses, so the path taken never changes a bit.
template <kernels_half_format F>
struct to_half_op {
    uint16_t *out;
    const float *x;
    __device__ void one(size_t i) const { out[i] = half_bits<F>(x[i]); }
    __device__ void four(size_t i) const {
        const float4 v = *reinterpret_cast<const float4 *>(x + i);
        *reinterpret_cast<uint2 *>(out + i) = half_bits4<F>(v.x, v.y, v.z, v.w);
    }
};

template <kernels_half_format F>
struct from_half_op {
    float *out;
    const uint16_t *x;
    __device__ void one(size_t i) const { out[i] = half_widen<F>(x[i]); }
    __device__ void four(size_t i) const {
        const uint2 w = *reinterpret_cast<const uint2 *>(x + i);
        *reinterpret_cast<float4 *>(out + i) = half_widen4<F>(w);
    }
};

static bool known_format(kernels_half_format fmt, const char *op, int line) {
    return cuda_known_half_format(fmt, op, __FILE__, line);
}

extern "C" void cuda_to_half(uint16_t *out, const float *x, size_t n, kernels_half_format fmt) {
    if (!known_format(fmt, "to_half", __LINE__) || !n) return;
    const cuda_vec4_plan plan = cuda_vec4_plan_for(n, {x}, {out});
    if (fmt == KERNELS_BF16)
        cuda_vec4_launch(to_half_op<KERNELS_BF16>{out, x}, plan);
    else
        cuda_vec4_launch(to_half_op<KERNELS_FP16>{out, x}, plan);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_from_half(float *out, const uint16_t *x, size_t n, kernels_half_format fmt) {
    if (!known_format(fmt, "from_half", __LINE__) || !n) return;
    const cuda_vec4_plan plan = cuda_vec4_plan_for(n, {out}, {x});
    if (fmt == KERNELS_BF16)
        cuda_vec4_launch(from_half_op<KERNELS_BF16>{out, x}, plan);
    else
        cuda_vec4_launch(from_half_op<KERNELS_FP16>{out, x}, plan);
    CUDA_CHECK_LAUNCH();
}

// to_half_2d: a 2D grid-stride loop, x over a row's columns (consecutive threads on
// consecutive columns, so loads and stores coalesce), y over rows, shaped by cuda_rows_shape
// (cuda_common.cuh: the thread block is as wide as the rows, so a narrow block of columns, a
// LoRA rank of 16, keeps every thread busy).
// W = 4 moves a float4 in and 8 bytes out per thread where every row start is aligned (cols,
// both strides multiples of 4, both pointers aligned); W = 1 otherwise. Either way each value
// is one fp32 multiply (IEEE, uncontracted: scale 1 gives x itself) and half_bits, so the
// bits are cuda_to_half's.
template <kernels_half_format F, int W>
__global__ void to_half_2d_kernel(uint16_t *out, int ld_out, const float *x, int ld_x, int rows,
                                  int units, float scale) {
    for (size_t r = blockIdx.y * (size_t)blockDim.y + threadIdx.y; r < (size_t)rows;
         r += (size_t)gridDim.y * blockDim.y) {
        const float *xr = x + r * ld_x;
        uint16_t *hr = out + r * ld_out;
        for (size_t u = blockIdx.x * (size_t)blockDim.x + threadIdx.x; u < (size_t)units;
             u += (size_t)gridDim.x * blockDim.x) {
            if constexpr (W == 4) {
                const float4 v = *reinterpret_cast<const float4 *>(xr + 4 * u);
                // __stwb: one 8-byte store (in a 2D loop nvcc splits a plain uint2 store)
                __stwb(reinterpret_cast<uint2 *>(hr + 4 * u),
                       half_bits4<F>(__fmul_rn(scale, v.x), __fmul_rn(scale, v.y),
                                     __fmul_rn(scale, v.z), __fmul_rn(scale, v.w)));
            } else {
                hr[u] = half_bits<F>(__fmul_rn(scale, xr[u]));
            }
        }
    }
}

template <kernels_half_format F>
static void launch_to_half_2d(uint16_t *out, int ld_out, const float *x, int ld_x, int rows,
                              int cols, float scale) {
    const bool vec4 = cols % 4 == 0 && ld_x % 4 == 0 && ld_out % 4 == 0 &&
                      (uintptr_t)x % 16 == 0 && (uintptr_t)out % 8 == 0;
    const int units = vec4 ? cols / 4 : cols;
    dim3 grid, block;
    cuda_rows_shape(rows, units, &grid, &block);
    if (vec4)
        CUDA_LAUNCH(grid, block, 0, to_half_2d_kernel<F, 4>)(out, ld_out, x, ld_x, rows, units, scale);
    else
        CUDA_LAUNCH(grid, block, 0, to_half_2d_kernel<F, 1>)(out, ld_out, x, ld_x, rows, units, scale);
}

extern "C" void cuda_to_half_2d(kernels_half_format fmt, uint16_t *out, int ld_out, const float *x,
                                int ld_x, int rows, int cols, float scale) {
    if (!known_format(fmt, "to_half_2d", __LINE__) || rows <= 0 || cols <= 0) return;
    if (fmt == KERNELS_BF16)
        launch_to_half_2d<KERNELS_BF16>(out, ld_out, x, ld_x, rows, cols, scale);
    else
        launch_to_half_2d<KERNELS_FP16>(out, ld_out, x, ld_x, rows, cols, scale);
    CUDA_CHECK_LAUNCH();
}

// to_half_2d_many: blockIdx.y picks the block, a 1D grid-stride loop over its values (rows
// of cols); each value is to_half_2d_kernel's (__fmul_rn then half_bits), so the same bits.
// The blocks are small (a LoRA rank's rows or columns), so one scalar path is enough.
template <kernels_half_format F>
__global__ void to_half_2d_many_kernel(const kernels_half_block *blocks) {
    const kernels_half_block b = blocks[blockIdx.y];
    const size_t n = (size_t)(b.rows > 0 ? b.rows : 0) * (size_t)(b.cols > 0 ? b.cols : 0);
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / (size_t)b.cols, c = i % (size_t)b.cols;
        b.out[r * b.ld_out + c] = half_bits<F>(__fmul_rn(b.scale, b.x[r * b.ld_x + c]));
    }
}

extern "C" void cuda_to_half_2d_many(kernels_half_format fmt, const kernels_half_block *blocks, int n) {
    if (!known_format(fmt, "to_half_2d_many", __LINE__) || n <= 0) return;
    // 64 blocks of threads per cast: 16K values in flight each, the casts' sizes (up to a
    // LoRA rank x 8192 at Llama-3.2-1B's MLP) a few loop turns.
    for (int first = 0; first < n; first += 65535) {  // gridDim.y's limit
        const dim3 grid(64, (unsigned)(n - first < 65535 ? n - first : 65535));
        if (fmt == KERNELS_BF16)
            CUDA_LAUNCH(grid, CUDA_THREADS, 0, to_half_2d_many_kernel<KERNELS_BF16>)(blocks + first);
        else
            CUDA_LAUNCH(grid, CUDA_THREADS, 0, to_half_2d_many_kernel<KERNELS_FP16>)(blocks + first);
        CUDA_CHECK_LAUNCH();
    }
}

// ------------------------------------------------------------------ nf4_to_half_2d

__constant__ float nf4_values[16] = NF4_VALUES_INIT;

// A grid-stride loop over units of W elements of the flattened weight. W = 8 where a row holds
// whole units and every store lands aligned (cols, ld_out multiples of 8, out 16-byte and
// codes 4-byte aligned): four code bytes in, one 16-byte store out, and a unit never crosses
// a row or an absmax block (64 is a multiple of 8). W = 1 otherwise. Each value is one
// __fmul_rn of the table value and its block's absmax, then half_bits: the CPU's bits.
template <kernels_half_format F, int W>
__global__ void nf4_to_half_2d_kernel(uint16_t *out, int ld_out, const uint8_t *codes, const float *absmax,
                                      int cols, size_t units) {
    for (size_t u = blockIdx.x * (size_t)blockDim.x + threadIdx.x; u < units; u += (size_t)gridDim.x * blockDim.x) {
        const size_t e = u * W, row = e / (size_t)cols, col = e % (size_t)cols;
        const float scale = absmax[e / NF4_BLOCK];
        if constexpr (W == 8) {
            const uint32_t packed = *reinterpret_cast<const uint32_t *>(codes + e / 2);
            uint16_t h[8];
#pragma unroll
            for (int b = 0; b < 4; b++) {
                const uint32_t byte = (packed >> (8 * b)) & 0xFF;
                h[2 * b] = half_bits<F>(__fmul_rn(nf4_values[byte >> 4], scale));
                h[2 * b + 1] = half_bits<F>(__fmul_rn(nf4_values[byte & 15], scale));
            }
            uint4 v;
            v.x = h[0] | (uint32_t)h[1] << 16;
            v.y = h[2] | (uint32_t)h[3] << 16;
            v.z = h[4] | (uint32_t)h[5] << 16;
            v.w = h[6] | (uint32_t)h[7] << 16;
            *reinterpret_cast<uint4 *>(out + row * ld_out + col) = v;
        } else {
            const uint8_t byte = codes[e / 2];
            const int code = e % 2 == 0 ? byte >> 4 : byte & 15;
            out[row * ld_out + col] = half_bits<F>(__fmul_rn(nf4_values[code], scale));
        }
    }
}

template <kernels_half_format F>
static void launch_nf4_to_half_2d(uint16_t *out, int ld_out, const uint8_t *codes, const float *absmax, int rows,
                                  int cols) {
    const size_t n = (size_t)rows * (size_t)cols;
    const bool vec8 = cols % 8 == 0 && ld_out % 8 == 0 && (uintptr_t)out % 16 == 0 && (uintptr_t)codes % 4 == 0;
    const size_t units = vec8 ? n / 8 : n;
    if (vec8)
        CUDA_LAUNCH(cuda_grid_for(units), CUDA_THREADS, 0, nf4_to_half_2d_kernel<F, 8>)(out, ld_out, codes, absmax,
                                                                                         cols, units);
    else
        CUDA_LAUNCH(cuda_grid_for(units), CUDA_THREADS, 0, nf4_to_half_2d_kernel<F, 1>)(out, ld_out, codes, absmax,
                                                                                         cols, units);
}

extern "C" void cuda_nf4_to_half_2d(kernels_half_format fmt, uint16_t *out, int ld_out, const uint8_t *codes,
                                    const float *absmax, int rows, int cols) {
    if (!known_format(fmt, "nf4_to_half_2d", __LINE__) || rows <= 0 || cols <= 0) return;
    if (fmt == KERNELS_BF16)
        launch_nf4_to_half_2d<KERNELS_BF16>(out, ld_out, codes, absmax, rows, cols);
    else
        launch_nf4_to_half_2d<KERNELS_FP16>(out, ld_out, codes, absmax, rows, cols);
    CUDA_CHECK_LAUNCH();
}

// ------------------------------------------------------------------ gemm_half

// k == 0: an empty product, C = beta C, with beta == 0 not reading C (a copy of gemm.cu's
// kernel: without separable compilation a kernel is launched from its own source file).
__global__ void gemm_half_scale_kernel(float *c, int m, int n, int ldc, float beta) {
    size_t total = (size_t)m * n;
    GRID_STRIDE_LOOP(i, total) {
        float *cij = c + (i / n) * (size_t)ldc + i % n;
        *cij = beta == 0.0f ? 0.0f : beta * *cij;
    }
}

// k == 0 into 16-bit C: zeros, rows ldc apart.
__global__ void gemm_half_zero16_kernel(uint16_t *c, int m, int n, int ldc) {
    size_t total = (size_t)m * n;
    GRID_STRIDE_LOOP(i, total) c[(i / n) * (size_t)ldc + i % n] = 0;
}

// The workspace (CUDA_HALF_WORKSPACE_BYTES, cuda_ops.h) is allocated once, so nothing is
// allocated per call.
#define LT_PLAN_SLOTS 64

static pthread_once_t lt_once = PTHREAD_ONCE_INIT;
static cublasLtHandle_t lt_handle = NULL;
static cublasStatus_t lt_status = CUBLAS_STATUS_NOT_INITIALIZED;
static void *lt_workspace = NULL;
static size_t lt_workspace_bytes = 0;

static void create_lt(void) {
    cublasLtHandle_t created = NULL;
    lt_status = cublasLtCreate(&created);
    if (lt_status != CUBLAS_STATUS_SUCCESS) return;
    lt_handle = created;
    // Without a workspace cuBLASLt still works (fewer algorithms), so a failed allocation
    // degrades instead of failing (cuda_alloc clears its error). Through cuda_alloc, so that
    // the backend's memory count (cuda_memory_held) includes it.
    lt_workspace = cuda_alloc(CUDA_HALF_WORKSPACE_BYTES);
    if (lt_workspace) lt_workspace_bytes = CUDA_HALF_WORKSPACE_BYTES;
}

// Everything the heuristic's choice depends on; alpha and beta are not among them.
typedef struct lt_plan_key {
    int fmt, trans_a, trans_b, m, n, k, lda, ldb, ldc;
    int out_half; // C = D in fmt (gemm_half_to_half) rather than fp32
    int align_a, align_b, align_c; // bytes, powers of two up to 256
} lt_plan_key;

typedef struct lt_plan {
    bool used;
    lt_plan_key key;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t layout_a, layout_b, layout_c; // as cuBLASLt sees them (swapped)
    cublasLtMatmulAlgo_t algo;
    size_t workspace_bytes;
} lt_plan;

static pthread_mutex_t plan_lock = PTHREAD_MUTEX_INITIALIZER;
static lt_plan plans[LT_PLAN_SLOTS];
static int plan_next_victim = 0; // round robin once every slot is taken

// cuBLASLt assumes 256-byte aligned pointers unless told otherwise; a view into a larger
// buffer (a row block, one matrix of a batch) may be aligned to no more than its element.
static int pointer_alignment(const void *ptr) {
    uintptr_t address = (uintptr_t)ptr;
    int align = 256;
    while (align > 1 && address % (uintptr_t)align != 0) align /= 2;
    return align;
}

static void destroy_plan(lt_plan *plan) {
    if (plan->layout_c) cublasLtMatrixLayoutDestroy(plan->layout_c);
    if (plan->layout_b) cublasLtMatrixLayoutDestroy(plan->layout_b);
    if (plan->layout_a) cublasLtMatrixLayoutDestroy(plan->layout_a);
    if (plan->op) cublasLtMatmulDescDestroy(plan->op);
    memset(plan, 0, sizeof *plan);
}

#define LT_TRY(call)                                                                     \
    do {                                                                                 \
        cublasStatus_t lt_try_status_ = (call);                                          \
        if (lt_try_status_ != CUBLAS_STATUS_SUCCESS) {                                   \
            ctune_cuda_record(__FILE__, __LINE__, #call,                                 \
                              cublasGetStatusString(lt_try_status_));                    \
            return false;                                                                \
        }                                                                                \
    } while (0)

// Fills plan (zeroed by the caller) for key: descriptors in cuBLASLt's column-major view
// (see the top of the file) and the heuristic's best algorithm. false: failure recorded;
// the caller destroys what was created.
static bool build_plan(lt_plan *plan, const lt_plan_key *key) {
    const cudaDataType_t half_type = key->fmt == KERNELS_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    // cuBLASLt's A is our B, its B our A, its m our n.
    const cublasOperation_t op_first = key->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_second = key->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    LT_TRY(cublasLtMatmulDescCreate(&plan->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LT_TRY(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSA, &op_first,
                                          sizeof op_first));
    LT_TRY(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSB, &op_second,
                                          sizeof op_second));
    const uint64_t n = (uint64_t)key->n, m = (uint64_t)key->m, k = (uint64_t)key->k;
    LT_TRY(cublasLtMatrixLayoutCreate(&plan->layout_a, half_type, key->trans_b ? k : n,
                                      key->trans_b ? n : k, key->ldb));
    LT_TRY(cublasLtMatrixLayoutCreate(&plan->layout_b, half_type, key->trans_a ? m : k,
                                      key->trans_a ? k : m, key->lda));
    LT_TRY(cublasLtMatrixLayoutCreate(&plan->layout_c, key->out_half ? half_type : CUDA_R_32F, n, m, key->ldc));

    cublasLtMatmulPreference_t pref = NULL;
    LT_TRY(cublasLtMatmulPreferenceCreate(&pref));
    const uint32_t align_first = (uint32_t)key->align_b, align_second = (uint32_t)key->align_a;
    const uint32_t align_c = (uint32_t)key->align_c;
    cublasLtMatmulHeuristicResult_t result;
    memset(&result, 0, sizeof result);
    int found = 0;
    cublasStatus_t status = cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &lt_workspace_bytes,
        sizeof lt_workspace_bytes);
    const struct { cublasLtMatmulPreferenceAttributes_t attr; const uint32_t *value; } aligns[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_first},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_second},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c},
    };
    for (int i = 0; i < 4 && status == CUBLAS_STATUS_SUCCESS; i++)
        status = cublasLtMatmulPreferenceSetAttribute(pref, aligns[i].attr, aligns[i].value,
                                                      sizeof *aligns[i].value);
    if (status == CUBLAS_STATUS_SUCCESS)
        status = cublasLtMatmulAlgoGetHeuristic(lt_handle, plan->op, plan->layout_a,
                                                plan->layout_b, plan->layout_c, plan->layout_c,
                                                pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (status == CUBLAS_STATUS_SUCCESS && (found < 1 || result.state != CUBLAS_STATUS_SUCCESS))
        status = CUBLAS_STATUS_NOT_SUPPORTED;
    if (status != CUBLAS_STATUS_SUCCESS) {
        char message[256];
        snprintf(message, sizeof message,
                 "%s (no algorithm for %s %s ta %d tb %d m %d n %d k %d lda %d ldb %d "
                 "ldc %d)",
                 cublasGetStatusString(status), key->fmt == KERNELS_BF16 ? "bf16" : "fp16",
                 key->out_half ? "gemm_half_to_half" : "gemm_half", key->trans_a, key->trans_b, key->m, key->n,
                 key->k, key->lda, key->ldb, key->ldc);
        ctune_cuda_record(__FILE__, __LINE__, "cublasLtMatmulAlgoGetHeuristic", message);
        return false;
    }
    plan->algo = result.algo;
    plan->workspace_bytes = result.workspaceSize;
    return true;
}

// The plan for key, from the cache or newly built into a slot; NULL: failure recorded.
// Called with plan_lock held.
static lt_plan *find_plan(const lt_plan_key *key) {
    int free_slot = -1;
    for (int i = 0; i < LT_PLAN_SLOTS; i++) {
        if (plans[i].used && memcmp(&plans[i].key, key, sizeof *key) == 0) return &plans[i];
        if (!plans[i].used && free_slot < 0) free_slot = i;
    }
    if (free_slot < 0) {
        free_slot = plan_next_victim;
        plan_next_victim = (plan_next_victim + 1) % LT_PLAN_SLOTS;
        destroy_plan(&plans[free_slot]);
    }
    lt_plan *plan = &plans[free_slot];
    if (!build_plan(plan, key)) {
        destroy_plan(plan);
        return NULL;
    }
    plan->key = *key;
    plan->used = true;
    return plan;
}

// D = alpha op(A) op(B) + beta C through the plan for the shape, C read from c_in and D
// written to c_out (the same layout; the same buffer for gemm_half), both fp32 or, with
// out_half, 16-bit values of fmt (the epilogue rounds the fp32 result). false where the matmul
// itself was refused: recorded as the run's error only with record_refusal (a missing plan
// or handle always is).
static bool lt_matmul(kernels_half_format fmt, bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                      const uint16_t *a, int lda, const uint16_t *b, int ldb, float beta, const void *c_in,
                      void *c_out, int ldc, bool out_half, bool record_refusal) {
    pthread_once(&lt_once, create_lt);
    if (lt_status != CUBLAS_STATUS_SUCCESS) {
        ctune_cuda_record(__FILE__, __LINE__, "cublasLtCreate", cublasGetStatusString(lt_status));
        return true;
    }
    lt_plan_key key;
    memset(&key, 0, sizeof key); // memcmp compares the whole struct
    key.fmt = (int)fmt;
    key.trans_a = trans_a;
    key.trans_b = trans_b;
    key.m = m, key.n = n, key.k = k;
    key.lda = lda, key.ldb = ldb, key.ldc = ldc;
    key.out_half = out_half;
    key.align_a = pointer_alignment(a);
    key.align_b = pointer_alignment(b);
    const int align_in = pointer_alignment(c_in), align_out = pointer_alignment(c_out);
    key.align_c = align_in < align_out ? align_in : align_out;

    pthread_mutex_lock(&plan_lock);
    lt_plan *plan = find_plan(&key);
    bool done = true;
    if (plan) {
        void *workspace = plan->workspace_bytes ? lt_workspace : NULL;
        cublasStatus_t status = cublasLtMatmul(
            lt_handle, plan->op, &alpha, b, plan->layout_a, a, plan->layout_b, &beta, c_in,
            plan->layout_c, c_out, plan->layout_c, &plan->algo, workspace, plan->workspace_bytes, 0);
        done = status == CUBLAS_STATUS_SUCCESS;
        if (!done && record_refusal)
            ctune_cuda_record(__FILE__, __LINE__, "cublasLtMatmul", cublasGetStatusString(status));
    }
    pthread_mutex_unlock(&plan_lock);
    return done;
}

extern "C" void cuda_gemm_half(kernels_half_format fmt, bool trans_a, bool trans_b, int m,
                               int n, int k, float alpha, const uint16_t *a, int lda,
                               const uint16_t *b, int ldb, float beta, float *c, int ldc) {
    if (!known_format(fmt, "gemm_half", __LINE__) || m <= 0 || n <= 0) return;
    if (k <= 0) {
        CUDA_LAUNCH(cuda_grid_for((size_t)m * n), CUDA_THREADS, 0, gemm_half_scale_kernel)(
            c, m, n, ldc, beta);
        CUDA_CHECK_LAUNCH();
        return;
    }
    lt_matmul(fmt, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, c, ldc, false, true);
}

// The residual r as the epilogue's C (beta 1: 1 * r is exact, so D = acc + r, rounded once,
// as the product stored then added). k == 0: c = r. Should cuBLASLt refuse C != D for the
// plan's algorithm, the product then the add, row by row: the same bits, one pass more.
extern "C" void cuda_gemm_half_add(kernels_half_format fmt, bool trans_a, bool trans_b, int m, int n, int k,
                                   const uint16_t *a, int lda, const uint16_t *b, int ldb, const float *r,
                                   float *c, int ldc) {
    if (!known_format(fmt, "gemm_half_add", __LINE__) || m <= 0 || n <= 0) return;
    if (k <= 0) {
        CUDA_CHECK(cudaMemcpy2DAsync(c, (size_t)ldc * sizeof(float), r, (size_t)ldc * sizeof(float),
                                     (size_t)n * sizeof(float), (size_t)m, cudaMemcpyDeviceToDevice, 0));
        return;
    }
    if (lt_matmul(fmt, trans_a, trans_b, m, n, k, 1.0f, a, lda, b, ldb, 1.0f, r, c, ldc, false, false)) return;
    lt_matmul(fmt, trans_a, trans_b, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, c, ldc, false, true);
    if (ldc == n) {
        cuda_add(c, c, r, (size_t)m * n);
        return;
    }
    for (int i = 0; i < m; i++) cuda_add(c + (size_t)i * ldc, c + (size_t)i * ldc, r + (size_t)i * ldc, (size_t)n);
}

// C = D in fmt: the epilogue converts the fp32 accumulator (alpha 1: unchanged) with
// round-to-nearest-even, to_half's rounding, so the result is gemm_half's then to_half's up to
// the summation order of the algorithm chosen for this layout (it may differ from the fp32
// layout's). k == 0: zeros (a +0 of either format is all zero bits).
extern "C" void cuda_gemm_half_to_half(kernels_half_format fmt, bool trans_a, bool trans_b, int m, int n, int k,
                                       const uint16_t *a, int lda, const uint16_t *b, int ldb, uint16_t *c_half,
                                       int ldc) {
    if (!known_format(fmt, "gemm_half_to_half", __LINE__) || m <= 0 || n <= 0) return;
    if (k <= 0) {
        CUDA_LAUNCH(cuda_grid_for((size_t)m * n), CUDA_THREADS, 0, gemm_half_zero16_kernel)(c_half, m, n, ldc);
        CUDA_CHECK_LAUNCH();
        return;
    }
    lt_matmul(fmt, trans_a, trans_b, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c_half, c_half, ldc, true, true);
}
