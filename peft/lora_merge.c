/* lora_merge: folding a LoRA adapter into its base weight, W' = W + scaling * B A. */
#include "peft/lora.h"

void lora_merge_weight(float *weight, const float *lora_a, const float *lora_b, int out, int in,
                       int r, float scaling) {
    /* Accumulated in double and rounded once, so the merged weight is the exact sum rounded
     * to fp32 (what a bf16/fp16 output is then rounded from); a float accumulation would add
     * r roundings per element. */
    for (int o = 0; o < out; o++) {
        const float *b_row = lora_b + (size_t)o * (size_t)r;
        float *w_row = weight + (size_t)o * (size_t)in;
        for (int i = 0; i < in; i++) {
            double delta = 0.0;
            for (int k = 0; k < r; k++)
                delta += (double)b_row[k] * (double)lora_a[(size_t)k * (size_t)in + (size_t)i];
            w_row[i] = (float)((double)w_row[i] + (double)scaling * delta);
        }
    }
}
