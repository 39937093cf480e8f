/* SwiGLU: out = silu(g) * u, silu(g) = g * sigmoid(g), sigmoid(g) = 1 / (1 + exp(-g)).
 * Backward: dup = dout * silu(g);
 *           dgate = dout * u * sigmoid(g) * (1 + g * (1 - sigmoid(g))).
 * Each element is read before it is written, so dgate may alias gate and dup may alias up. */
#include <math.h>

#include "kernels/cpu/cpu_ops.h"

void cpu_swiglu_fwd(float *out, const float *gate, const float *up, size_t n) {
#pragma omp parallel for if (n >= CPU_PARALLEL_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void cpu_swiglu_bwd(float *dgate, float *dup, const float *dout, const float *gate,
                    const float *up, size_t n) {
#pragma omp parallel for if (n >= CPU_PARALLEL_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i], u = up[i], dy = dout[i];
        float sig = 1.0f / (1.0f + expf(-g));
        float silu = g * sig;
        dgate[i] = dy * u * sig * (1.0f + g * (1.0f - sig));
        dup[i] = dy * silu;
    }
}
