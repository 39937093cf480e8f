// AdamW, step for step as kernels/cpu/adamw.c (torch.optim.AdamW, single-tensor path):
//   p *= 1 - lr*wd;  m += (1 - b1)(g - m);  v = b2 v + ((1 - b2) g) g;
//   p -= ((lr / bias1) m) / (sqrt(v) / sqrt(bias2) + eps).
// The scalar factors are formed on the host in double and rounded once to fp32, exactly
// as the CPU backend does. On the device every product and sum is rounded on its own
// (__fmul_rn / __fadd_rn stop nvcc contracting them into FMAs; the CPU build has no FMA),
// and sqrtf and '/' are IEEE (no fast math), so the result is the CPU's bit for bit.
#include <math.h>

#include "kernels/cuda/cuda_common.cuh"

struct adamw_factors {
    float decay, one_minus_b1, one_minus_b2, beta2, eps, step_size, bias2_sqrt;
};

__global__ void adamw_kernel(float *param, const float *grad, float *m, float *v, size_t n,
                             adamw_factors f) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float g = grad[i];
        float p = __fmul_rn(param[i], f.decay);
        float mi = __fadd_rn(m[i], __fmul_rn(f.one_minus_b1, __fadd_rn(g, -m[i])));
        float vi = __fadd_rn(__fmul_rn(v[i], f.beta2), __fmul_rn(__fmul_rn(f.one_minus_b2, g), g));
        float denom = __fadd_rn(sqrtf(vi) / f.bias2_sqrt, f.eps);
        param[i] = __fadd_rn(p, -(__fmul_rn(f.step_size, mi) / denom));
        m[i] = mi;
        v[i] = vi;
    }
}

extern "C" void cuda_adamw(float *param, const float *grad, float *m, float *v, size_t n,
                           double lr, double beta1, double beta2, double eps,
                           double weight_decay, double bias1, double bias2) {
    if (!n) return;
    adamw_factors f;
    f.decay = (float)(1.0 - lr * weight_decay);
    f.one_minus_b1 = (float)(1.0 - beta1);
    f.one_minus_b2 = (float)(1.0 - beta2);
    f.beta2 = (float)beta2;
    f.eps = (float)eps;
    f.step_size = (float)(lr / bias1);
    f.bias2_sqrt = (float)sqrt(bias2);
    adamw_kernel<<<cuda_grid_for(n), CUDA_THREADS>>>(param, grad, m, v, n, f);
    CUDA_CHECK_LAUNCH();
}
