// SwiGLU: out = silu(g) u, silu(g) = g / (1 + exp(-g)), mirroring kernels/cpu/swiglu.c.
// Backward: dup = dout silu(g); dgate = dout u sig (1 + g (1 - sig)).
// Each element is read before it is written, so dgate may alias gate and dup may alias up
// (likewise dgate_half / gate_half and dup_half / up_half when ld_half == cols: a group of
// four is read whole before any of it is written, by the same thread).
// expf is CUDA's full-precision expf (2 ulp), never __expf: no --use_fast_math here.
//
// The 16-bit variants (kernels.h: swiglu_fwd_half, swiglu_bwd_half) run the per-element
// arithmetic of the fp32 ops through the same inline functions (swiglu_value, swiglu_grads)
// on the widened 16-bit inputs, and round with to_half's rounding (half_bits.cuh). nvcc
// contracts a product and a sum into an FMA (1 + exp(-g) and 1 + g (1 - sig) are fused, as
// they always were here), but that choice is made on the expression alone, which is the
// same inlined code in both kernels, with the same operands (a widened 16-bit value is an
// ordinary fp32 value); so the *_half outputs are to_half of the fp32 ops' outputs on the
// widened inputs, bit for bit. tests/test_kernels_cuda_fused.c checks exactly that.
//
// All of them are vectorised (cuda_common.cuh: cuda_vec4_plan): float4 and 8-byte 16-bit
// accesses where the pointers allow, scalar otherwise; each element's value is the same.
// The 16-bit outputs of the *_half ops have rows ld_half apart (the columns between belong
// to another GEMM operand, e.g. a LoRA adapter's, and are never written); every other tensor
// is contiguous [rows, cols]. ld_half == cols (or one row) is the flat layout and takes the
// flat vectorised launch; otherwise a 2D launch (cuda_rows_shape) over (row, column), the
// 16-bit stores through half_store (half_bits.cuh), four columns per thread where cols,
// ld_half and every pointer keep each group of four aligned, one otherwise (as to_half_2d in
// half.cu). Either way element (r, c) gets the flat op's bits for index r * cols + c.
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/half_bits.cuh"

__device__ __forceinline__ float swiglu_value(float g, float u) {
    return g / (1.0f + expf(-g)) * u;
}

__device__ __forceinline__ void swiglu_grads(float g, float u, float dy, float *dg, float *du) {
    float sig = 1.0f / (1.0f + expf(-g));
    float silu = g * sig;
    *dg = dy * u * sig * (1.0f + g * (1.0f - sig));
    *du = dy * silu;
}

struct swiglu_fwd_op {
    float *out;
    const float *gate, *up;
    __device__ void one(size_t i) const { out[i] = swiglu_value(gate[i], up[i]); }
    __device__ void four(size_t i) const {
        const float4 g = *reinterpret_cast<const float4 *>(gate + i);
        const float4 u = *reinterpret_cast<const float4 *>(up + i);
        *reinterpret_cast<float4 *>(out + i) =
            make_float4(swiglu_value(g.x, u.x), swiglu_value(g.y, u.y), swiglu_value(g.z, u.z),
                        swiglu_value(g.w, u.w));
    }
};

struct swiglu_bwd_op {
    float *dgate, *dup;
    const float *dout, *gate, *up;
    __device__ void one(size_t i) const {
        float dg, du;
        swiglu_grads(gate[i], up[i], dout[i], &dg, &du);
        dgate[i] = dg;
        dup[i] = du;
    }
    __device__ void four(size_t i) const {
        const float4 g = *reinterpret_cast<const float4 *>(gate + i);
        const float4 u = *reinterpret_cast<const float4 *>(up + i);
        const float4 dy = *reinterpret_cast<const float4 *>(dout + i);
        float4 dg, du;
        swiglu_grads(g.x, u.x, dy.x, &dg.x, &du.x);
        swiglu_grads(g.y, u.y, dy.y, &dg.y, &du.y);
        swiglu_grads(g.z, u.z, dy.z, &dg.z, &du.z);
        swiglu_grads(g.w, u.w, dy.w, &dg.w, &du.w);
        *reinterpret_cast<float4 *>(dgate + i) = dg;
        *reinterpret_cast<float4 *>(dup + i) = du;
    }
};

// gate and up rounded to F (kept for the backward), or with gate NULL (up NULL too) read as
// already rounded from gate_half and up_half; out = swiglu on their widened values; out and
// out_half through `store` (out NULL: not written). Element i of the contiguous tensors is
// (row, j) = (i / cols, i % cols).
template <kernels_half_format F>
struct swiglu_fwd_half_op {
    half_store<F> store;  // out_half (rows ld_half apart), out (rows cols apart)
    uint16_t *gate_half, *up_half;
    const float *gate, *up;
    int cols;
    __device__ float value(size_t i) const {
        uint16_t hg, hu;
        if (gate) {
            hg = gate_half[i] = half_bits<F>(gate[i]);
            hu = up_half[i] = half_bits<F>(up[i]);
        } else {
            hg = gate_half[i], hu = up_half[i];
        }
        return swiglu_value(half_widen<F>(hg), half_widen<F>(hu));
    }
    // Four values of gate (up) as 16-bit: rounded and kept, or read.
    __device__ uint2 in4(const float *x, uint16_t *x_half, size_t i) const {
        if (!x) return *reinterpret_cast<const uint2 *>(x_half + i);
        const float4 v = *reinterpret_cast<const float4 *>(x + i);
        const uint2 h = half_bits4<F>(v.x, v.y, v.z, v.w);
        __stwb(reinterpret_cast<uint2 *>(x_half + i), h);  // one 8-byte store, as nvcc splits plain
        return h;                                          // ones in 2D loops
    }
    __device__ float4 value4(size_t i) const {
        const uint2 hg = in4(gate, gate_half, i), hu = in4(up, up_half, i);
        const float4 gw = half_widen4<F>(hg), uw = half_widen4<F>(hu);
        return make_float4(swiglu_value(gw.x, uw.x), swiglu_value(gw.y, uw.y),
                           swiglu_value(gw.z, uw.z), swiglu_value(gw.w, uw.w));
    }
    // Flat (ld_half == cols): element i, group i..i+3 (cuda_vec4_kernel).
    __device__ void one(size_t i) const {
        const float y = value(i);
        if (store.out) store.out[i] = y;
        store.out_half[i] = half_bits<F>(y);
    }
    __device__ void four(size_t i) const {
        const float4 y = value4(i);
        if (store.out) *reinterpret_cast<float4 *>(store.out + i) = y;
        *reinterpret_cast<uint2 *>(store.out_half + i) = half_bits4<F>(y.x, y.y, y.z, y.w);
    }
    // Strided: element (row, j), columns j..j+3 (swiglu_rows_kernel).
    __device__ void one(size_t row, int j) const { store(row, j, value(row * cols + j)); }
    __device__ void four(size_t row, int j) const { store.four(row, j, value4(row * cols + j)); }
};

// dgate and dup of the widened gate_half, up_half, rounded to F through their stores (fp32
// NULL: only the 16-bit values are written).
template <kernels_half_format F>
struct swiglu_bwd_half_op {
    half_store<F> dgate, dup;  // rows ld_half apart
    const float *dout;
    const uint16_t *gate_half, *up_half;
    int cols;
    __device__ void grads(size_t i, float *dg, float *du) const {
        swiglu_grads(half_widen<F>(gate_half[i]), half_widen<F>(up_half[i]), dout[i], dg, du);
    }
    __device__ void grads4(size_t i, float4 *dg, float4 *du) const {
        const float4 g = half_widen4<F>(*reinterpret_cast<const uint2 *>(gate_half + i));
        const float4 u = half_widen4<F>(*reinterpret_cast<const uint2 *>(up_half + i));
        const float4 dy = *reinterpret_cast<const float4 *>(dout + i);
        swiglu_grads(g.x, u.x, dy.x, &dg->x, &du->x);
        swiglu_grads(g.y, u.y, dy.y, &dg->y, &du->y);
        swiglu_grads(g.z, u.z, dy.z, &dg->z, &du->z);
        swiglu_grads(g.w, u.w, dy.w, &dg->w, &du->w);
    }
    // Flat (ld_half == cols): element i, group i..i+3 (cuda_vec4_kernel).
    __device__ void one(size_t i) const {
        float dg, du;
        grads(i, &dg, &du);
        dgate.out_half[i] = half_bits<F>(dg);
        dup.out_half[i] = half_bits<F>(du);
    }
    __device__ void four(size_t i) const {
        float4 dg, du;
        grads4(i, &dg, &du);
        *reinterpret_cast<uint2 *>(dgate.out_half + i) = half_bits4<F>(dg.x, dg.y, dg.z, dg.w);
        *reinterpret_cast<uint2 *>(dup.out_half + i) = half_bits4<F>(du.x, du.y, du.z, du.w);
    }
    // Strided: element (row, j), columns j..j+3 (swiglu_rows_kernel).
    __device__ void one(size_t row, int j) const {
        float dg, du;
        grads(row * cols + j, &dg, &du);
        dgate(row, j, dg);
        dup(row, j, du);
    }
    __device__ void four(size_t row, int j) const {
        float4 dg, du;
        grads4(row * cols + j, &dg, &du);
        dgate.four(row, j, dg);
        dup.four(row, j, du);
    }
};

// The strided launch: units of W columns (W = 4: groups, column 4u; W = 1: column u) of each
// row, x over a row's units, y over rows (cuda_rows_shape). Bounded to 8 blocks per SM (at
// most 32 registers, as the flat kernels take: full occupancy for a memory-bound loop; left
// alone nvcc takes 38-40, no spills either way; not yet timed on a GPU).
template <int W, class Op>
__global__ void __launch_bounds__(CUDA_THREADS, 8) swiglu_rows_kernel(Op op, int rows, int units) {
    for (size_t r = blockIdx.y * (size_t)blockDim.y + threadIdx.y; r < (size_t)rows;
         r += (size_t)gridDim.y * blockDim.y)
        for (size_t u = blockIdx.x * (size_t)blockDim.x + threadIdx.x; u < (size_t)units;
             u += (size_t)gridDim.x * blockDim.x) {
            if constexpr (W == 4)
                op.four(r, 4 * (int)u);
            else
                op.one(r, (int)u);
        }
}

// Groups of four stay aligned in every row when cols and ld_half are multiples of 4 and
// every fp32 pointer sits on 16 bytes, every 16-bit one on 8 (NULL: not accessed).
static bool rows_vec4(int cols, int ld_half, std::initializer_list<const void *> f32,
                      std::initializer_list<const void *> h16) {
    bool ok = cols % 4 == 0 && ld_half % 4 == 0;
    for (const void *p : f32) ok = ok && (uintptr_t)p % 16 == 0;
    for (const void *p : h16) ok = ok && (uintptr_t)p % 8 == 0;
    return ok;
}

// ld_half == cols, or a single row, is the flat layout: the flat launch's head, aligned
// groups and tail over rows * cols elements; otherwise the row launch.
template <class Op>
static void swiglu_half_launch(const Op &op, int rows, int cols, int ld_half,
                               std::initializer_list<const void *> f32,
                               std::initializer_list<const void *> h16) {
    if (ld_half == cols || rows == 1) {
        cuda_vec4_launch(op, cuda_vec4_plan_for((size_t)rows * cols, f32, h16));
        return;
    }
    const bool vec4 = rows_vec4(cols, ld_half, f32, h16);
    dim3 grid, block;
    cuda_rows_shape(rows, vec4 ? cols / 4 : cols, &grid, &block);
    if (vec4)
        CUDA_LAUNCH(grid, block, 0, swiglu_rows_kernel<4, Op>)(op, rows, cols / 4);
    else
        CUDA_LAUNCH(grid, block, 0, swiglu_rows_kernel<1, Op>)(op, rows, cols);
}

extern "C" void cuda_swiglu_fwd(float *out, const float *gate, const float *up, size_t n) {
    if (!n) return;
    cuda_vec4_launch(swiglu_fwd_op{out, gate, up}, cuda_vec4_plan_for(n, {out, gate, up}, {}));
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_swiglu_bwd(float *dgate, float *dup, const float *dout, const float *gate,
                                const float *up, size_t n) {
    if (!n) return;
    cuda_vec4_launch(swiglu_bwd_op{dgate, dup, dout, gate, up},
                     cuda_vec4_plan_for(n, {dgate, dup, dout, gate, up}, {}));
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_swiglu_fwd_half(kernels_half_format fmt, uint16_t *out_half, int ld_half,
                                     float *out, uint16_t *gate_half, uint16_t *up_half,
                                     const float *gate, const float *up, int rows, int cols) {
    if (!cuda_known_half_format(fmt, "swiglu_fwd_half", __FILE__, __LINE__)) return;
    if (rows <= 0 || cols <= 0) return;
    const std::initializer_list<const void *> f32 = {out, gate, up};
    const std::initializer_list<const void *> h16 = {out_half, gate_half, up_half};
    if (fmt == KERNELS_BF16)
        swiglu_half_launch(swiglu_fwd_half_op<KERNELS_BF16>{{out_half, ld_half, out, cols},
                                                            gate_half, up_half, gate, up, cols},
                           rows, cols, ld_half, f32, h16);
    else
        swiglu_half_launch(swiglu_fwd_half_op<KERNELS_FP16>{{out_half, ld_half, out, cols},
                                                            gate_half, up_half, gate, up, cols},
                           rows, cols, ld_half, f32, h16);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_swiglu_bwd_half(kernels_half_format fmt, uint16_t *dgate_half,
                                     uint16_t *dup_half, int ld_half, const float *dout,
                                     const uint16_t *gate_half, const uint16_t *up_half, int rows,
                                     int cols) {
    if (!cuda_known_half_format(fmt, "swiglu_bwd_half", __FILE__, __LINE__)) return;
    if (rows <= 0 || cols <= 0) return;
    const std::initializer_list<const void *> f32 = {dout};
    const std::initializer_list<const void *> h16 = {dgate_half, dup_half, gate_half, up_half};
    if (fmt == KERNELS_BF16)
        swiglu_half_launch(
            swiglu_bwd_half_op<KERNELS_BF16>{{dgate_half, ld_half, NULL, cols},
                                             {dup_half, ld_half, NULL, cols}, dout, gate_half,
                                             up_half, cols},
            rows, cols, ld_half, f32, h16);
    else
        swiglu_half_launch(
            swiglu_bwd_half_op<KERNELS_FP16>{{dgate_half, ld_half, NULL, cols},
                                             {dup_half, ld_half, NULL, cols}, dout, gate_half,
                                             up_half, cols},
            rows, cols, ld_half, f32, h16);
    CUDA_CHECK_LAUNCH();
}
