// SwiGLU: out = silu(g) u, silu(g) = g / (1 + exp(-g)), mirroring kernels/cpu/swiglu.c.
// Backward: dup = dout silu(g); dgate = dout u sig (1 + g (1 - sig)).
// Each element is read before it is written, so dgate may alias gate and dup may alias up.
// expf is CUDA's full-precision expf (2 ulp), never __expf: no --use_fast_math here.
#include "kernels/cuda/cuda_common.cuh"

__global__ void swiglu_fwd_kernel(float *out, const float *gate, const float *up, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

__global__ void swiglu_bwd_kernel(float *dgate, float *dup, const float *dout, const float *gate,
                                  const float *up, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float g = gate[i], u = up[i], dy = dout[i];
        float sig = 1.0f / (1.0f + expf(-g));
        float silu = g * sig;
        dgate[i] = dy * u * sig * (1.0f + g * (1.0f - sig));
        dup[i] = dy * silu;
    }
}

extern "C" void cuda_swiglu_fwd(float *out, const float *gate, const float *up, size_t n) {
    if (!n) return;
    swiglu_fwd_kernel<<<cuda_grid_for(n), CUDA_THREADS>>>(out, gate, up, n);
    CUDA_CHECK_LAUNCH();
}

extern "C" void cuda_swiglu_bwd(float *dgate, float *dup, const float *dout, const float *gate,
                                const float *up, size_t n) {
    if (!n) return;
    swiglu_bwd_kernel<<<cuda_grid_for(n), CUDA_THREADS>>>(dgate, dup, dout, gate, up, n);
    CUDA_CHECK_LAUNCH();
}
