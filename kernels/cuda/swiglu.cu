// SwiGLU: out = silu(g) u, silu(g) = g / (1 + exp(-g)), mirroring kernels/cpu/swiglu.c.
// Backward: dup = dout silu(g); dgate = dout u sig (1 + g (1 - sig)).
// Each element is read before it is written, so dgate may alias gate and dup may alias up
// (likewise dgate_half / gate_half and dup_half / up_half: a group of four is read whole
// before any of it is written, by the same thread).
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

// gate and up rounded to F (kept for the backward), out = swiglu on their widened values.
template <kernels_half_format F>
struct swiglu_fwd_half_op {
    uint16_t *out_half;
    float *out;  // NULL: not written
    uint16_t *gate_half, *up_half;
    const float *gate, *up;
    __device__ void one(size_t i) const {
        const uint16_t hg = half_bits<F>(gate[i]), hu = half_bits<F>(up[i]);
        gate_half[i] = hg;
        up_half[i] = hu;
        const float y = swiglu_value(half_widen<F>(hg), half_widen<F>(hu));
        if (out) out[i] = y;
        out_half[i] = half_bits<F>(y);
    }
    __device__ void four(size_t i) const {
        const float4 g = *reinterpret_cast<const float4 *>(gate + i);
        const float4 u = *reinterpret_cast<const float4 *>(up + i);
        const uint2 hg = half_bits4<F>(g.x, g.y, g.z, g.w), hu = half_bits4<F>(u.x, u.y, u.z, u.w);
        *reinterpret_cast<uint2 *>(gate_half + i) = hg;
        *reinterpret_cast<uint2 *>(up_half + i) = hu;
        const float4 gw = half_widen4<F>(hg), uw = half_widen4<F>(hu);
        const float4 y = make_float4(swiglu_value(gw.x, uw.x), swiglu_value(gw.y, uw.y),
                                     swiglu_value(gw.z, uw.z), swiglu_value(gw.w, uw.w));
        if (out) *reinterpret_cast<float4 *>(out + i) = y;
        *reinterpret_cast<uint2 *>(out_half + i) = half_bits4<F>(y.x, y.y, y.z, y.w);
    }
};

template <kernels_half_format F>
struct swiglu_bwd_half_op {
    uint16_t *dgate_half, *dup_half;
    const float *dout;
    const uint16_t *gate_half, *up_half;
    __device__ void one(size_t i) const {
        float dg, du;
        swiglu_grads(half_widen<F>(gate_half[i]), half_widen<F>(up_half[i]), dout[i], &dg, &du);
        dgate_half[i] = half_bits<F>(dg);
        dup_half[i] = half_bits<F>(du);
    }
    __device__ void four(size_t i) const {
        const float4 g = half_widen4<F>(*reinterpret_cast<const uint2 *>(gate_half + i));
        const float4 u = half_widen4<F>(*reinterpret_cast<const uint2 *>(up_half + i));
        const float4 dy = *reinterpret_cast<const float4 *>(dout + i);
        float4 dg, du;
        swiglu_grads(g.x, u.x, dy.x, &dg.x, &du.x);
        swiglu_grads(g.y, u.y, dy.y, &dg.y, &du.y);
        swiglu_grads(g.z, u.z, dy.z, &dg.z, &du.z);
        swiglu_grads(g.w, u.w, dy.w, &dg.w, &du.w);
        *reinterpret_cast<uint2 *>(dgate_half + i) = half_bits4<F>(dg.x, dg.y, dg.z, dg.w);
        *reinterpret_cast<uint2 *>(dup_half + i) = half_bits4<F>(du.x, du.y, du.z, du.w);
    }
};

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

extern "C" void cuda_swiglu_fwd_half(kernels_half_format fmt, uint16_t *out_half, float *out,
                                     uint16_t *gate_half, uint16_t *up_half, const float *gate,
                                     const float *up, size_t n) {
    if (!cuda_known_half_format(fmt, "swiglu_fwd_half", __FILE__, __LINE__) || !n) return;
    const cuda_vec4_plan plan =
        cuda_vec4_plan_for(n, {out, gate, up}, {out_half, gate_half, up_half});
    if (fmt == KERNELS_BF16)
        cuda_vec4_launch(
            swiglu_fwd_half_op<KERNELS_BF16>{out_half, out, gate_half, up_half, gate, up}, plan);
    else
        cuda_vec4_launch(
            swiglu_fwd_half_op<KERNELS_FP16>{out_half, out, gate_half, up_half, gate, up}, plan);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_swiglu_bwd_half(kernels_half_format fmt, uint16_t *dgate_half,
                                     uint16_t *dup_half, const float *dout,
                                     const uint16_t *gate_half, const uint16_t *up_half, size_t n) {
    if (!cuda_known_half_format(fmt, "swiglu_bwd_half", __FILE__, __LINE__) || !n) return;
    const cuda_vec4_plan plan =
        cuda_vec4_plan_for(n, {dout}, {dgate_half, dup_half, gate_half, up_half});
    if (fmt == KERNELS_BF16)
        cuda_vec4_launch(
            swiglu_bwd_half_op<KERNELS_BF16>{dgate_half, dup_half, dout, gate_half, up_half}, plan);
    else
        cuda_vec4_launch(
            swiglu_bwd_half_op<KERNELS_FP16>{dgate_half, dup_half, dout, gate_half, up_half}, plan);
    CUDA_CHECK_LAUNCH();
}
