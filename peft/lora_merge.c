/* lora_merge: folding a LoRA adapter into its base weight, W' = W + scaling * B A, and a DoRA
 * adapter, W' = (m / ||W + scaling * B A||_row) (W + scaling * B A). */
#include <math.h>
#include <stddef.h>

#include "peft/lora.h"

/* W[o, i] + scaling * (B A)[o, i] in double: the products and their sum in double. */
static double merged_element(const float *w_row, const float *lora_a, const float *b_row, int in,
                             int r, double scaling, int i) {
    double delta = 0.0;
    for (int k = 0; k < r; k++)
        delta += (double)b_row[k] * (double)lora_a[(size_t)k * (size_t)in + (size_t)i];
    return (double)w_row[i] + scaling * delta;
}

void lora_merge_weight(float *weight, const float *lora_a, const float *lora_b, int out, int in,
                       int r, float scaling) {
    /* Accumulated in double and rounded once, so the merged weight is the exact sum rounded
     * to fp32 (what a bf16/fp16 output is then rounded from); a float accumulation would add
     * r roundings per element. */
    for (int o = 0; o < out; o++) {
        const float *b_row = lora_b + (size_t)o * (size_t)r;
        float *w_row = weight + (size_t)o * (size_t)in;
        for (int i = 0; i < in; i++)
            w_row[i] = (float)merged_element(w_row, lora_a, b_row, in, r, (double)scaling, i);
    }
}

void dora_merge_weight(float *weight, const float *lora_a, const float *lora_b,
                       const float *magnitude, int out, int in, int r, float scaling) {
    /* Row o: v = W[o, :] + scaling * (B A)[o, :] in double, n = sqrt(sum v^2) in double, and
     * W'[o, i] = (float)((m[o] / n) * v[i]): one rounding per element, where peft (fp32)
     * rounds v, n, m / n and the product. v is computed twice, once for the norm and once for
     * the output, so no row buffer is needed: 2 r multiply-adds per element instead of r,
     * small beside reading and writing the weight. A row whose v is zero gives NaN (0 * m/0),
     * as peft's division does; a trained adapter never has one. */
    for (int o = 0; o < out; o++) {
        const float *b_row = lora_b + (size_t)o * (size_t)r;
        float *w_row = weight + (size_t)o * (size_t)in;
        double sum_squares = 0.0;
        for (int i = 0; i < in; i++) {
            double v = merged_element(w_row, lora_a, b_row, in, r, (double)scaling, i);
            sum_squares += v * v;
        }
        double factor = (double)magnitude[o] / sqrt(sum_squares);
        for (int i = 0; i < in; i++)
            w_row[i] = (float)(factor * merged_element(w_row, lora_a, b_row, in, r,
                                                       (double)scaling, i));
    }
}
