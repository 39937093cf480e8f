/* SwiGLU: out = silu(g) * u, silu(g) = g * sigmoid(g), sigmoid(g) = 1 / (1 + exp(-g)).
 * Backward: dup = dout * silu(g);
 *           dgate = dout * u * sigmoid(g) * (1 + g * (1 - sigmoid(g))).
 * Each element is read before it is written, so dgate may alias gate and dup may alias up.
 * The *_half variants run the same per-element arithmetic (one function each, so the bits
 * cannot drift apart) on 16-bit inputs or outputs; their 16-bit outputs have rows ld_half
 * apart, so dgate_half / dup_half may alias gate_half / up_half only when ld_half == cols.
 * swiglu_fwd_half with gate and up NULL reads gate_half and up_half as its (rounded) inputs. */
#include <math.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/half_round.h"

static inline float swiglu_value(float g, float u) { return g / (1.0f + expf(-g)) * u; }

static inline void swiglu_grads(float g, float u, float dy, float *dg, float *du) {
    float sig = 1.0f / (1.0f + expf(-g));
    float silu = g * sig;
    *dg = dy * u * sig * (1.0f + g * (1.0f - sig));
    *du = dy * silu;
}

void cpu_swiglu_fwd(float *out, const float *gate, const float *up, size_t n) {
#pragma omp parallel for if (n >= CPU_PARALLEL_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = swiglu_value(gate[i], up[i]);
}

void cpu_swiglu_bwd(float *dgate, float *dup, const float *dout, const float *gate,
                    const float *up, size_t n) {
#pragma omp parallel for if (n >= CPU_PARALLEL_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) {
        float dg, du;
        swiglu_grads(gate[i], up[i], dout[i], &dg, &du);
        dgate[i] = dg;
        dup[i] = du;
    }
}

/* Over [rows, cols]: element (r, c) is flat index r * cols + c of the contiguous tensors;
 * the 16-bit outputs (out_half; dgate_half, dup_half) put it at r * ld_half + c and never
 * touch the columns between cols and ld_half. */
void cpu_swiglu_fwd_half(kernels_half_format fmt, uint16_t *out_half, int ld_half, float *out,
                         uint16_t *gate_half, uint16_t *up_half, const float *gate, const float *up,
                         int rows, int cols) {
    if (rows <= 0 || cols <= 0) return;
#pragma omp parallel for if ((size_t)rows * cols >= CPU_PARALLEL_MIN) schedule(static)
    for (int r = 0; r < rows; r++) {
        const size_t row = (size_t)r * cols;
        uint16_t *hr = out_half + (size_t)r * ld_half;
        for (int c = 0; c < cols; c++) {
            const size_t i = row + c;
            uint16_t hg, hu;
            if (gate) { /* else gate_half and up_half are the inputs (kernels.h) */
                hg = gate_half[i] = cpu_half_from_float(gate[i], fmt);
                hu = up_half[i] = cpu_half_from_float(up[i], fmt);
            } else {
                hg = gate_half[i], hu = up_half[i];
            }
            float y = swiglu_value(cpu_float_from_half(hg, fmt), cpu_float_from_half(hu, fmt));
            if (out) out[i] = y;
            hr[c] = cpu_half_from_float(y, fmt);
        }
    }
}

void cpu_swiglu_bwd_half(kernels_half_format fmt, uint16_t *dgate_half, uint16_t *dup_half, int ld_half,
                         const float *dout, const uint16_t *gate_half, const uint16_t *up_half, int rows,
                         int cols) {
    if (rows <= 0 || cols <= 0) return;
#pragma omp parallel for if ((size_t)rows * cols >= CPU_PARALLEL_MIN) schedule(static)
    for (int r = 0; r < rows; r++) {
        const size_t row = (size_t)r * cols;
        uint16_t *dgr = dgate_half + (size_t)r * ld_half, *dur = dup_half + (size_t)r * ld_half;
        for (int c = 0; c < cols; c++) {
            const size_t i = row + c;
            float dg, du;
            swiglu_grads(cpu_float_from_half(gate_half[i], fmt), cpu_float_from_half(up_half[i], fmt),
                         dout[i], &dg, &du);
            dgr[c] = cpu_half_from_float(dg, fmt);
            dur[c] = cpu_half_from_float(du, fmt);
        }
    }
}
