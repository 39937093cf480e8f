// cublas_emu: the cuBLAS and cuBLASLt calls of kernels/cuda (gemm.cu, half.cu, device.cu) on the
// host emulator. What the libraries document is checked: argument ranges, the descriptors'
// consistency (types: 16-bit A and B, C = D in fp32 or their type; op(A) m x k, op(B) k x n,
// C and D m x n, leading dimensions), the
// attribute sizes, every operand inside a device buffer, the pointers as aligned as the
// algorithm was chosen for and its workspace given. The product is column-major, as both
// libraries compute it: each element's accumulator summed in double and rounded once to
// fp32, then alpha acc + beta C in fp32 (C unread when beta is 0). So a wrong transpose, swapped operand or dimension, or a stride
// off in the row-major-to-column-major mapping gives wrong values or a refused call.
#include <stdio.h>

#include <vector>

#include "cublasLt.h"

struct emu_cublas {
    cublasMath_t math = CUBLAS_DEFAULT_MATH;
};
struct emu_lt {
    int unused = 0;
};
struct emu_lt_desc {
    cublasComputeType_t compute;
    cudaDataType_t scale;
    cublasOperation_t trans_a = CUBLAS_OP_N, trans_b = CUBLAS_OP_N;
};
struct emu_lt_layout {
    cudaDataType_t type;
    uint64_t rows, cols;
    int64_t ld;
};
struct emu_lt_pref {
    uint64_t max_workspace = 0;
    uint32_t align[4] = {256, 256, 256, 256};  // A, B, C, D: cuBLASLt's default assumption
};

namespace {

size_t type_bytes(cudaDataType_t t) { return t == CUDA_R_32F ? 4 : 2; }

float element(cudaDataType_t t, const void *base, size_t i) {
    if (t == CUDA_R_32F) return ((const float *)base)[i];
    const uint16_t h = ((const uint16_t *)base)[i];
    return t == CUDA_R_16BF ? emu_bf16_widen(h) : emu_fp16_widen(h);
}

// The bytes a column-major rows x cols matrix with leading dimension ld spans.
size_t span(uint64_t rows, uint64_t cols, int64_t ld, size_t elem) {
    return rows && cols ? ((size_t)ld * (cols - 1) + rows) * elem : 0;
}

// The library objects are plain host structs: made and freed here, always successfully.
template <typename T>
cublasStatus_t make(T **out, T value) {
    *out = new T(value);
    return CUBLAS_STATUS_SUCCESS;
}
template <typename T>
cublasStatus_t destroy(T *object) {
    delete object;
    return CUBLAS_STATUS_SUCCESS;
}

int alignment_of(const void *p) {
    int a = 256;
    while (a > 1 && (uintptr_t)p % (uintptr_t)a) a /= 2;
    return a;
}

// D(i, j) = alpha sum_p op(A)(i, p) op(B)(p, j) + beta C(i, j), column-major; C and D of type
// tcd: fp32, or 16-bit (C widened, D rounded to nearest even from the fp32 epilogue value, as
// cuBLASLt's epilogue converts).
void product(int m, int n, int k, float alpha, cudaDataType_t ta, const void *A, int64_t lda, bool trans_a,
             cudaDataType_t tb, const void *B, int64_t ldb, bool trans_b, float beta, cudaDataType_t tcd,
             const void *C, int64_t ldc, void *D, int64_t ldd) {
    // Both operands widened once, each row of op(A) and column of op(B) contiguous: the
    // emulated training runs (ctune_emu) spend most of their time here.
    std::vector<float> rows((size_t)m * k), columns((size_t)n * k);
    for (int i = 0; i < m; i++)
        for (int p = 0; p < k; p++)
            rows[(size_t)i * k + p] = element(ta, A, trans_a ? p + (size_t)i * lda : i + (size_t)p * lda);
    for (int j = 0; j < n; j++)
        for (int p = 0; p < k; p++)
            columns[(size_t)j * k + p] = element(tb, B, trans_b ? j + (size_t)p * ldb : p + (size_t)j * ldb);
    for (int j = 0; j < n; j++) {
        const float *column = columns.data() + (size_t)j * k;
        for (int i = 0; i < m; i++) {
            const float *row = rows.data() + (size_t)i * k;
            double s = 0.0;
            for (int p = 0; p < k; p++) s += (double)row[p] * column[p];
            // The accumulator is fp32 on the GPU (here its sum of exact products is rounded
            // once), the epilogue fp32 arithmetic on it.
            float d = alpha * (float)s;
            if (beta != 0.0f) d = d + beta * element(tcd, C, i + (size_t)j * ldc);
            const size_t at = i + (size_t)j * ldd;
            if (tcd == CUDA_R_32F)
                ((float *)D)[at] = d;
            else
                ((uint16_t *)D)[at] = tcd == CUDA_R_16BF ? emu_bf16_bits(d) : emu_fp16_bits(d);
        }
    }
}

}  // namespace

const char *cublasGetStatusString(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

// ------------------------------------------------------------------ cuBLAS

cublasStatus_t cublasCreate(cublasHandle_t *handle) { return make(handle, emu_cublas()); }
cublasStatus_t cublasDestroy(cublasHandle_t handle) { return destroy(handle); }

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (stream) emu_fail("cublasSetStream: a stream other than the default one");
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                           int k, const float *alpha, const float *A, int lda, const float *B, int ldb,
                           const float *beta, float *C, int ldc) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    // fp32 must stay fp32: TF32 would be the default math's choice on tensor-core GPUs.
    if (handle->math != CUBLAS_PEDANTIC_MATH) emu_fail("cublasSgemm without CUBLAS_PEDANTIC_MATH");
    const bool ta = transa == CUBLAS_OP_T, tb = transb == CUBLAS_OP_T;
    const int a_rows = ta ? k : m, b_rows = tb ? n : k;
    if ((transa != CUBLAS_OP_N && !ta) || (transb != CUBLAS_OP_N && !tb) || m < 0 || n < 0 || k < 0 ||
        lda < (a_rows > 1 ? a_rows : 1) || ldb < (b_rows > 1 ? b_rows : 1) || ldc < (m > 1 ? m : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (!m || !n) return CUBLAS_STATUS_SUCCESS;
    if (k) {
        emu_check_device(A, span(a_rows, ta ? m : k, lda, 4), 4, "cublasSgemm A");
        emu_check_device(B, span(b_rows, tb ? k : n, ldb, 4), 4, "cublasSgemm B");
    }
    emu_check_device(C, span(m, n, ldc, 4), 4, "cublasSgemm C");
    product(m, n, k, *alpha, CUDA_R_32F, A, lda, ta, CUDA_R_32F, B, ldb, tb, *beta, CUDA_R_32F, C, ldc, C, ldc);
    return CUBLAS_STATUS_SUCCESS;
}

// ------------------------------------------------------------------ cuBLASLt

cublasStatus_t cublasLtCreate(cublasLtHandle_t *handle) { return make(handle, emu_lt()); }
cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) { return destroy(handle); }
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *desc, cublasComputeType_t compute, cudaDataType_t scale) {
    return make(desc, emu_lt_desc{compute, scale});
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) { return destroy(desc); }

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t size) {
    if (!desc || !buf || size != sizeof(int32_t)) return CUBLAS_STATUS_INVALID_VALUE;
    int32_t op;
    memcpy(&op, buf, sizeof op);
    if (op != CUBLAS_OP_N && op != CUBLAS_OP_T) return CUBLAS_STATUS_INVALID_VALUE;
    if (attr == CUBLASLT_MATMUL_DESC_TRANSA)
        desc->trans_a = (cublasOperation_t)op;
    else if (attr == CUBLASLT_MATMUL_DESC_TRANSB)
        desc->trans_b = (cublasOperation_t)op;
    else
        emu_fail("cublasLtMatmulDescSetAttribute: attribute %d is not emulated", (int)attr);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *layout, cudaDataType_t type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
    return make(layout, emu_lt_layout{type, rows, cols, ld});
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) { return destroy(layout); }
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *pref) { return make(pref, emu_lt_pref()); }
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) { return destroy(pref); }

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t size) {
    if (!pref || !buf) return CUBLAS_STATUS_INVALID_VALUE;
    if (attr == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES) {
        if (size != sizeof(uint64_t)) return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&pref->max_workspace, buf, size);
        return CUBLAS_STATUS_SUCCESS;
    }
    if (attr < CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES || attr > CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES)
        emu_fail("cublasLtMatmulPreferenceSetAttribute: attribute %d is not emulated", (int)attr);
    if (size != sizeof(uint32_t)) return CUBLAS_STATUS_INVALID_VALUE;
    memcpy(&pref->align[attr - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES], buf, size);
    return CUBLAS_STATUS_SUCCESS;
}

namespace {

struct lt_problem {
    int m, n, k;
    bool ta, tb;
};

// The problem the descriptors describe, or the status cuBLASLt gives for them.
cublasStatus_t describe(const emu_lt_desc *desc, const emu_lt_layout *a, const emu_lt_layout *b,
                        const emu_lt_layout *c, const emu_lt_layout *d, lt_problem *p) {
    if (!desc || !a || !b || !c || !d) return CUBLAS_STATUS_INVALID_VALUE;
    if (desc->compute != CUBLAS_COMPUTE_32F || desc->scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    // C = D: fp32, or the operands' 16-bit type (what kernels/cuda/half.cu asks for).
    if (a->type != b->type || (a->type != CUDA_R_16F && a->type != CUDA_R_16BF) || c->type != d->type ||
        (d->type != CUDA_R_32F && d->type != a->type))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    for (const emu_lt_layout *l : {a, b, c, d})
        if (l->ld < (int64_t)l->rows || l->ld < 1) return CUBLAS_STATUS_INVALID_VALUE;
    p->ta = desc->trans_a == CUBLAS_OP_T;
    p->tb = desc->trans_b == CUBLAS_OP_T;
    const uint64_t m = d->rows, n = d->cols, k = p->ta ? a->rows : a->cols;
    if (c->rows != m || c->cols != n || (p->ta ? a->cols : a->rows) != m || (p->tb ? b->cols : b->rows) != k ||
        (p->tb ? b->rows : b->cols) != n || !m || !n || !k || m > INT32_MAX || n > INT32_MAX || k > INT32_MAX)
        return CUBLAS_STATUS_INVALID_VALUE;
    p->m = (int)m, p->n = (int)n, p->k = (int)k;
    return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

// One algorithm for every valid problem whose alignments it can honour (at least one
// element); it takes up to 1 MiB of the workspace offered, so the workspace is exercised.
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t *results, int *returned) {
    *returned = 0;
    if (!handle || !pref || requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
    lt_problem p;
    const cublasStatus_t status = describe(desc, a, b, c, d, &p);
    if (status != CUBLAS_STATUS_SUCCESS) return status;
    const size_t elem[4] = {2, 2, type_bytes(c->type), type_bytes(d->type)};
    for (int i = 0; i < 4; i++)
        if (pref->align[i] < elem[i] || (pref->align[i] & (pref->align[i] - 1))) return CUBLAS_STATUS_NOT_SUPPORTED;
    memset(&results[0], 0, sizeof results[0]);
    for (int i = 0; i < 4; i++) results[0].algo.data[i] = pref->align[i];
    results[0].workspaceSize = pref->max_workspace < ((uint64_t)1 << 20) ? pref->max_workspace : (size_t)1 << 20;
    results[0].algo.data[4] = results[0].workspaceSize;
    results[0].state = CUBLAS_STATUS_SUCCESS;
    results[0].wavesCount = 1.0f;
    *returned = 1;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void *alpha, const void *A,
                              cublasLtMatrixLayout_t a, const void *B, cublasLtMatrixLayout_t b, const void *beta,
                              const void *C, cublasLtMatrixLayout_t c, void *D, cublasLtMatrixLayout_t d,
                              const cublasLtMatmulAlgo_t *algo, void *workspace, size_t workspace_bytes,
                              cudaStream_t stream) {
    if (!handle || !algo) return CUBLAS_STATUS_INVALID_VALUE;
    if (stream) emu_fail("cublasLtMatmul on a stream other than the default one");
    lt_problem p;
    const cublasStatus_t status = describe(desc, a, b, c, d, &p);
    if (status != CUBLAS_STATUS_SUCCESS) return status;
    const void *ptrs[4] = {A, B, C, D};
    const char *names[4] = {"A", "B", "C", "D"};
    const emu_lt_layout *layouts[4] = {a, b, c, d};
    const float f_beta = *(const float *)beta;
    for (int i = 0; i < 4; i++) {
        if (i == 2 && f_beta == 0.0f) continue;  // C unread
        if (alignment_of(ptrs[i]) < (int)algo->data[i])
            emu_fail("cublasLtMatmul: %s at %p is %d-byte aligned; the algorithm was chosen for %d", names[i],
                     ptrs[i], alignment_of(ptrs[i]), (int)algo->data[i]);
        char what[32];
        snprintf(what, sizeof what, "cublasLtMatmul %s", names[i]);
        const emu_lt_layout *l = layouts[i];
        emu_check_device(ptrs[i], span(l->rows, l->cols, l->ld, type_bytes(l->type)), 1, what);
    }
    if (algo->data[4]) {
        if (workspace_bytes < algo->data[4])
            emu_fail("cublasLtMatmul: %zu bytes of workspace for an algorithm that needs %zu", workspace_bytes,
                     (size_t)algo->data[4]);
        emu_check_device(workspace, workspace_bytes, 1, "cublasLtMatmul workspace");
    }
    product(p.m, p.n, p.k, *(const float *)alpha, a->type, A, a->ld, p.ta, b->type, B, b->ld, p.tb, f_beta, d->type,
            C, c->ld, D, d->ld);
    return CUBLAS_STATUS_SUCCESS;
}
