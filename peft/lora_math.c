/* lora_math: LoRA settings helpers (peft/lora.h, the non-I/O part) and the adapter math of
 * one targeted Linear (peft/lora_math.h). See those headers for the formulas. */
#include "peft/lora_math.h"

#include <math.h>
#include <string.h>

#include "peft/lora.h"

static const char *const kind_names[LINEAR_KIND_COUNT] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
};

const char *linear_kind_name(linear_kind kind) {
    return kind >= 0 && kind < LINEAR_KIND_COUNT ? kind_names[kind] : "?";
}

const char *linear_kind_block(linear_kind kind) {
    return kind <= LINEAR_O ? "self_attn" : "mlp";
}

/* peft computes the scaling in Python double precision; the product with an fp32 tensor
 * then uses its float32 rounding, which is what we return. */
float lora_scaling(const lora_settings *s) {
    double r = s->r > 0 ? (double)s->r : 1.0;
    return (float)((double)s->alpha / (s->use_rslora ? sqrt(r) : r));
}

int lora_parse_targets(lora_settings *s, const char *const *names, int n_names, ct_error *err) {
    if (n_names <= 0) return ct_fail(err, "lora target_modules: empty list (name at least one module)");
    bool targets[LINEAR_KIND_COUNT] = {false};
    for (int i = 0; i < n_names; i++) {
        const char *name = names[i] ? names[i] : "";
        if (strcmp(name, "all-linear") == 0) {
            for (int k = 0; k < LINEAR_KIND_COUNT; k++) targets[k] = true;
            continue;
        }
        int found = -1;
        for (int k = 0; k < LINEAR_KIND_COUNT; k++)
            if (strcmp(name, kind_names[k]) == 0) found = k;
        if (found < 0)
            return ct_fail(err,
                           "lora target_modules: unknown module '%s' (expected q_proj, k_proj, "
                           "v_proj, o_proj, gate_proj, up_proj, down_proj or all-linear)",
                           name);
        targets[found] = true;
    }
    memcpy(s->targets, targets, sizeof targets);
    return 0;
}

void lora_forward(const lora_apply *l, float *y, float *u, const float *x, int n_tokens,
                  bool train, float *x_scratch) {
    const kernels *k = l->k;
    const float *xd = x;
    if (train && l->dropout > 0.0f) {
        k->dropout(x_scratch, x, l->dropout, l->seed, l->offset, (size_t)n_tokens * l->in);
        xd = x_scratch;
    }
    k->gemm(false, true, n_tokens, l->r, l->in, 1.0f, xd, l->in, l->a, l->in, 0.0f, u, l->r);
    k->gemm(false, true, n_tokens, l->out, l->r, l->scaling, u, l->r, l->b, l->r, 1.0f, y, l->out);
}

void lora_backward(const lora_apply *l, float *dx, const float *dy, const float *x,
                   const float *u, int n_tokens, bool train, float *du, float *scratch1,
                   float *scratch2) {
    const kernels *k = l->k;
    const int T = n_tokens;
    const bool drop = train && l->dropout > 0.0f;
    if (l->db)
        k->gemm(true, false, l->out, l->r, T, l->scaling, dy, l->out, u, l->r, 1.0f, l->db, l->r);
    if (!l->da && !dx) return;
    k->gemm(false, false, T, l->r, l->out, l->scaling, dy, l->out, l->b, l->r, 0.0f, du, l->r);
    if (l->da) {
        const float *xd = x;
        if (drop) {
            k->dropout(scratch1, x, l->dropout, l->seed, l->offset, (size_t)T * l->in);
            xd = scratch1;
        }
        k->gemm(true, false, l->r, l->in, T, 1.0f, du, l->r, xd, l->in, 1.0f, l->da, l->in);
    }
    if (dx) {
        if (drop) {
            /* The mask's backward is the same mask (with the same 1/(1-p)) on the gradient. */
            k->gemm(false, false, T, l->in, l->r, 1.0f, du, l->r, l->a, l->in, 0.0f, scratch1, l->in);
            k->dropout(scratch2, scratch1, l->dropout, l->seed, l->offset, (size_t)T * l->in);
            k->axpy(dx, 1.0f, scratch2, (size_t)T * l->in);
        } else {
            k->gemm(false, false, T, l->in, l->r, 1.0f, du, l->r, l->a, l->in, 1.0f, dx, l->in);
        }
    }
}
