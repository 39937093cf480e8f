/* lora: LoRA adapter settings, the adapter math that model.c calls inside each targeted
 * Linear, and the PEFT on-disk format (adapter_model.safetensors + adapter_config.json).
 *
 * y = x W^T (+ b) + scaling * (dropout(x) A^T) B^T, A [r, in], B [out, r],
 * scaling = alpha / r, or alpha / sqrt(r) with use_rslora (peft's definition).
 * On disk the keys are "base_model.model." + the module's transformers name +
 * ".lora_A.weight" / ".lora_B.weight", exactly as peft saves them.
 * Does not own: the model's parameter arenas (model.h). */
#ifndef CTUNE_LORA_H
#define CTUNE_LORA_H

#include <stdbool.h>

#include "train/error.h"

typedef enum {
    LINEAR_Q, LINEAR_K, LINEAR_V, LINEAR_O, LINEAR_GATE, LINEAR_UP, LINEAR_DOWN,
    LINEAR_KIND_COUNT
} linear_kind;

/* "q_proj", "k_proj", ..., "down_proj" */
const char *linear_kind_name(linear_kind kind);
/* "self_attn" for q/k/v/o, "mlp" for gate/up/down */
const char *linear_kind_block(linear_kind kind);

typedef struct lora_settings {
    int r;
    float alpha;
    float dropout;
    bool use_rslora;
    /* DoRA (peft's use_dora): y = (m / ||W + scaling B A||_row) (x W^T + scaling x A^T B^T)
     * (+ b), the magnitude m [out] a trainable vector per adapted Linear, saved as peft's
     * "<module>.lora_magnitude_vector"; the norm is a constant to the gradient (peft detaches
     * it). Under dropout peft's form: x W^T + (m/n - 1) dropout(x) W^T + (m/n) scaling
     * dropout(x) A^T B^T (+ b). */
    bool use_dora;
    bool targets[LINEAR_KIND_COUNT];
} lora_settings;

float lora_scaling(const lora_settings *s);

/* Fills targets from names ("q_proj", ..., or "all-linear"); unknown names are an error. */
int lora_parse_targets(lora_settings *s, const char *const *names, int n_names, ct_error *err);

struct model;

/* Writes dir/adapter_model.safetensors (fp32, peft key names, metadata format pt) and
 * dir/adapter_config.json (peft's keys, sorted, indent 2). base_model_name_or_path is
 * recorded as given. */
int lora_write_adapter(const char *dir, struct model *m, const char *base_model_name_or_path,
                       ct_error *err);

/* Loads an adapter folder into a model created with matching lora settings (read the
 * settings first with lora_read_config). Missing or unexpected keys are errors. */
int lora_read_config(const char *dir, lora_settings *s, ct_error *err);
int lora_load_adapter(struct model *m, const char *dir, ct_error *err);

/* W += scaling * B A in place: weight [out, in], lora_a [r, in], lora_b [out, r], all fp32;
 * each element is computed in double and rounded to fp32 once (for merging an adapter into
 * its base, as peft's merge_and_unload). */
void lora_merge_weight(float *weight, const float *lora_a, const float *lora_b, int out, int in,
                       int r, float scaling);
/* DoRA's merge, W' = (m / n) (W + scaling * B A) row by row in place, magnitude m [out] fp32,
 * n[o] = ||W[o, :] + scaling * (B A)[o, :]||_2 (peft's DoraLinearVariant.merge_safe): each
 * element and each row's norm computed in double, each element rounded to fp32 once. */
void dora_merge_weight(float *weight, const float *lora_a, const float *lora_b,
                       const float *magnitude, int out, int in, int r, float scaling);

#endif
