/* AdamW, step for step as torch.optim.AdamW (single-tensor path):
 *   p *= 1 - lr*wd                       (decoupled decay, applied first)
 *   m += (1 - b1) (g - m)                (torch's lerp, = b1 m + (1-b1) g)
 *   v  = b2 v + ((1 - b2) g) g
 *   p -= ((lr / bias1) m) / (sqrt(v) / sqrt(bias2) + eps)
 * bias1 = 1 - b1^step and bias2 = 1 - b2^step come from the caller.
 *
 * torch forms the scalar factors (1 - b2, lr / bias1, ...) in double from the Python
 * floats the user wrote, then rounds each once to fp32; the table passes doubles so we can
 * do the same. */
#include <math.h>

#include "kernels/cpu/cpu_ops.h"

void cpu_adamw(float *param, const float *grad, float *m, float *v, size_t n, double lr,
               double beta1, double beta2, double eps, double weight_decay, double bias1,
               double bias2) {
    const float decay = (float)(1.0 - lr * weight_decay);
    const float one_minus_b1 = (float)(1.0 - beta1);
    const float one_minus_b2 = (float)(1.0 - beta2);
    const float beta2_f = (float)beta2, eps_f = (float)eps;
    const float step_size = (float)(lr / bias1);
    const float bias2_sqrt = (float)sqrt(bias2);
#pragma omp parallel for if (n >= CPU_PARALLEL_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = grad[i];
        float p = param[i] * decay;
        float mi = m[i] + one_minus_b1 * (g - m[i]);
        float vi = v[i] * beta2_f + one_minus_b2 * g * g; /* addcmul: (value * t1) * t2 */
        float denom = sqrtf(vi) / bias2_sqrt + eps_f;
        param[i] = p - step_size * mi / denom; /* torch addcdiv: (value * t1) / t2 */
        m[i] = mi;
        v[i] = vi;
    }
}
