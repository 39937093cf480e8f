// AdamW, step for step as kernels/cpu/adamw.c (torch.optim.AdamW, single-tensor path), on
// g = grad * grad_scale (or the factor at grad_scale_at; a NaN skips the step), optionally
// writing the updated values' 16-bit copy:
//   p *= 1 - lr*wd;  m += (1 - b1)(g - m);  v = b2 v + ((1 - b2) g) g;
//   p -= ((lr / bias1) m) / (sqrt(v) / sqrt(bias2) + eps).
// The scalar factors are formed on the host in double and rounded once to fp32, exactly
// as the CPU backend does. On the device every product and sum is rounded on its own
// (__fmul_rn / __fadd_rn stop nvcc contracting them into FMAs; the CPU build has no FMA),
// and sqrtf and '/' are IEEE (no fast math), so the result is the CPU's bit for bit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#include "kernels/cuda/cuda_common.cuh"

struct adamw_factors {
    float decay, one_minus_b1, one_minus_b2, beta2, eps, step_size, bias2_sqrt, grad_scale;
};

// half: NULL, or the 16-bit copy to round the updated values into (bf16 when bf16, else
// fp16), with the same conversions as half.cu's to_half.
// scale_at: NULL, or where clip_factor left the factor (f.grad_scale otherwise); NaN skips.
__global__ void adamw_kernel(float *param, const float *grad, float *m, float *v, size_t n,
                             adamw_factors f, const float *scale_at, uint16_t *half, bool bf16) {
    const float scale = scale_at ? *scale_at : f.grad_scale;
    if (isnan(scale)) return;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float g = scale == 1.0f ? grad[i] : __fmul_rn(grad[i], scale);
        float p = __fmul_rn(param[i], f.decay);
        float mi = __fadd_rn(m[i], __fmul_rn(f.one_minus_b1, __fadd_rn(g, -m[i])));
        float vi = __fadd_rn(__fmul_rn(v[i], f.beta2), __fmul_rn(__fmul_rn(f.one_minus_b2, g), g));
        float denom = __fadd_rn(sqrtf(vi) / f.bias2_sqrt, f.eps);
        float updated = __fadd_rn(p, -(__fmul_rn(f.step_size, mi) / denom));
        param[i] = updated;
        m[i] = mi;
        v[i] = vi;
        if (half) half[i] = bf16 ? __bfloat16_as_ushort(__float2bfloat16_rn(updated))
                                 : __half_as_ushort(__float2half_rn(updated));
    }
}

extern "C" void cuda_adamw(float *param, const float *grad, float *m, float *v, size_t n,
                           const kernels_adamw_step *st) {
    if (!n) return;
    adamw_factors f;
    f.decay = (float)(1.0 - st->lr * st->weight_decay);
    f.one_minus_b1 = (float)(1.0 - st->beta1);
    f.one_minus_b2 = (float)(1.0 - st->beta2);
    f.beta2 = (float)st->beta2;
    f.eps = (float)st->eps;
    f.step_size = (float)(st->lr / st->bias1);
    f.bias2_sqrt = (float)sqrt(st->bias2);
    f.grad_scale = st->grad_scale;
    CUDA_LAUNCH(cuda_grid_for(n), CUDA_THREADS, 0, adamw_kernel)(param, grad, m, v, n, f, st->grad_scale_at, st->half,
                                                                st->half_format == KERNELS_BF16);
    CUDA_CHECK_LAUNCH();
}
