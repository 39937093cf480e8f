/* AdamW, step for step as torch.optim.AdamW (single-tensor path), on g = grad * grad_scale:
 *   p *= 1 - lr*wd                       (decoupled decay, applied first)
 *   m += (1 - b1) (g - m)                (torch's lerp, = b1 m + (1-b1) g)
 *   v  = b2 v + ((1 - b2) g) g
 *   p -= ((lr / bias1) m) / (sqrt(v) / sqrt(bias2) + eps)
 * bias1 = 1 - b1^step and bias2 = 1 - b2^step come from the caller.
 *
 * torch forms the scalar factors (1 - b2, lr / bias1, ...) in double from the Python
 * floats the user wrote, then rounds each once to fp32; the table passes doubles so we can
 * do the same. With st->half the updated values are rounded to their 16-bit copy after.
 * With st->grad_scale_at the factor is read there (a NaN: the step is skipped). */
#include <math.h>

#include "kernels/cpu/cpu_ops.h"

void cpu_adamw(float *param, const float *grad, float *m, float *v, size_t n, const kernels_adamw_step *st) {
    const float decay = (float)(1.0 - st->lr * st->weight_decay);
    const float one_minus_b1 = (float)(1.0 - st->beta1);
    const float one_minus_b2 = (float)(1.0 - st->beta2);
    const float beta2_f = (float)st->beta2, eps_f = (float)st->eps;
    const float step_size = (float)(st->lr / st->bias1);
    const float bias2_sqrt = (float)sqrt(st->bias2);
    const float grad_scale = st->grad_scale_at ? *st->grad_scale_at : st->grad_scale;
    if (isnan(grad_scale)) return; /* the norm said to skip the step */
#pragma omp parallel for if (n >= CPU_PARALLEL_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = grad_scale == 1.0f ? grad[i] : grad[i] * grad_scale;
        float p = param[i] * decay;
        float mi = m[i] + one_minus_b1 * (g - m[i]);
        float vi = v[i] * beta2_f + one_minus_b2 * g * g; /* addcmul: (value * t1) * t2 */
        float denom = sqrtf(vi) / bias2_sqrt + eps_f;
        param[i] = p - step_size * mi / denom; /* torch addcdiv: (value * t1) / t2 */
        m[i] = mi;
        v[i] = vi;
    }
    if (st->half) cpu_to_half(st->half, param, n, st->half_format);
}
