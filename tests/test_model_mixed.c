/* test_model_mixed: the model in bf16-mixed and fp16-mixed precision (model_set_precision).
 *
 * What must hold: losses and every gradient stay within 16-bit tolerance of the fp32 model
 * with the same weights, yet differ from it (the rounding really happens); the 16-bit weight
 * copies follow the fp32 weights exactly when model_weights_changed says so (trainable only, or
 * all); activation checkpointing gives the same bits in mixed precision too; going back to
 * fp32 gives the fp32 bits again; the reservation grows by the 16-bit scratch. Where a GPU
 * exists, the CUDA backend's mixed precision agrees with the CPU's to 16-bit tolerance. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/check.h"
#include "train/model.h"

static double rel_error(const float *a, const float *b, size_t n) {
    double diff = 0.0, ref = 0.0;
    for (size_t i = 0; i < n; i++) {
        diff += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        ref += (double)b[i] * b[i];
    }
    return ref > 0 ? sqrt(diff / ref) : sqrt(diff);
}

/* Two layers, GQA, Qwen2-style biases, qk norms; tied embeddings or an lm_head; head_dim 8,
 * or 64 to put the CUDA backend's attention on its mma.sync path (attention_mma.cu). */
/* q/k norms and q/k/v biases on, or both off (Llama: the 16-bit RoPE producers and q, k, v's
 * input gradient, and in full fine-tuning their weight gradients, each in one GEMM:
 * model_graph.c); main runs the comparisons both ways. */
static bool with_qk_norm = true;

static void mixed_config(model_config *c, bool tied, int head_dim) {
    model_config_preset(c, "tiny", NULL);
    c->vocab_size = 37;
    c->hidden_size = 32;
    c->intermediate_size = 48;
    c->num_hidden_layers = 2;
    c->num_attention_heads = 4;
    c->num_key_value_heads = 2;
    c->head_dim = head_dim;
    c->attention_bias = c->qk_norm = with_qk_norm;
    c->tie_word_embeddings = tied;
    c->pad_token_id = c->bos_token_id = -1;
    c->n_eos = 0;
}

/* Deterministic weights: norms around 1, everything else uniform in +-scale. */
static void fill_weights(model *m, uint64_t seed) {
    uint64_t state = seed;
    for (int i = 0; i < m->n_params; i++) {
        model_param *p = &m->params[i];
        /* norm weights and DoRA magnitudes around 1 */
        bool norm = p->ndim == 1 && (strstr(p->name, "norm") || strstr(p->name, "magnitude"));
        float *host = malloc(p->numel * sizeof(float));
        for (size_t j = 0; j < p->numel; j++) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            float u = (float)(state >> 40) / 16777216.0f * 2.0f - 1.0f;
            host[j] = norm ? 1.0f + 0.3f * u : (p->is_lora ? 0.2f : 0.4f) * u;
        }
        model_param_upload(m, p, host);
        free(host);
    }
    model_weights_changed(m, false);
}

static const int32_t ids[16] = {3, 17, 8, 1, 28, 5, 12, 9, 0, 22, 14, 6, 19, 2, 33, 30};
static const int32_t targets[16] = {17, 8, -1, 28, 5, 12, 7, -1, 22, 14, 6, 19, 2, 11, 30, 4};
static const int32_t positions[16] = {0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, 7};
static const int32_t docs[16] = {0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0};
static const model_batch batch = {.input_ids = ids, .targets = targets, .positions = positions,
                                  .doc_ids = docs, .batch = 2, .seq = 8};
/* The same tokens with nothing to score: a step that runs no backward. */
static const int32_t no_targets[16] = {-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1};
static const model_batch unscored = {.input_ids = ids, .targets = no_targets, .positions = positions,
                                     .doc_ids = docs, .batch = 2, .seq = 8};

typedef struct result {
    double loss;
    float *grads;
    size_t numel;
} result;

/* How a run's adapters are set up: none (full fine-tuning); with dropout (mixed precision:
 * inside the base GEMMs in the forward, their own products in the backward); without (inside
 * both, train/model_internal.h); or either kept separate (model.lora_unfused). */
typedef enum { FULL, LORA_DROPOUT, LORA_FUSED, LORA_UNFUSED, LORA_DROPOUT_UNFUSED, DORA, DORA_DROPOUT } run_mode;
static const char *const mode_names[] = {"full", "lora dropout", "lora fused", "lora unfused",
                                         "lora dropout unfused", "dora", "dora dropout"};
/* The modes compared with fp32 and with the CPU: full, both LoRA paths, DoRA (never fused)
 * with and without dropout. */
static const run_mode checked_modes[] = {FULL, LORA_DROPOUT, LORA_FUSED, DORA, DORA_DROPOUT};
enum { N_CHECKED_MODES = sizeof checked_modes / sizeof checked_modes[0] };

/* A model of the given precision and weights: the loss and gradients of two micro-batches
 * (different dropout seeds) accumulated. */
static result run(const kernels *k, run_mode mode, bool tied, model_precision precision, bool checkpointing,
                  uint64_t weight_seed, int head_dim) {
    model_config c;
    mixed_config(&c, tied, head_dim);
    const bool lora = mode != FULL;
    const bool dropout = mode == LORA_DROPOUT || mode == LORA_DROPOUT_UNFUSED || mode == DORA_DROPOUT;
    lora_settings ls = {.r = 4, .alpha = 8.0f, .dropout = dropout ? 0.2f : 0.0f, .use_dora = mode >= DORA};
    const char *all[] = {"all-linear"};
    ct_error err = {{0}};
    CHECK(lora_parse_targets(&ls, all, 1, &err) == 0);
    model m;
    result r = {0, NULL, 0};
    CHECK_MSG(model_create(&m, &c, lora ? &ls : NULL, k, &err) == 0, "%s", err.msg);
    m.lora_unfused = mode == LORA_UNFUSED || mode == LORA_DROPOUT_UNFUSED;
    CHECK_MSG(model_set_precision(&m, precision, &err) == 0, "%s", err.msg);
    m.activation_checkpointing = checkpointing;
    CHECK_MSG(model_reserve(&m, 2, 8, &err) == 0, "%s", err.msg);
    fill_weights(&m, weight_seed);
    model_zero_grads(&m);
    double a = 0, b = 0;
    long n = 0;
    CHECK_MSG(model_step(&m, &batch, true, 0.5f, 7, &a, &n, &err) == 0, "%s", err.msg);
    CHECK_MSG(model_step(&m, &batch, true, 0.5f, 8, &b, &n, &err) == 0, "%s", err.msg);
    r.loss = a + b;
    r.numel = m.grad_numel;
    r.grads = malloc(r.numel * sizeof(float));
    k->download(r.grads, m.grad_arena, r.numel * sizeof(float));
    model_free(&m);
    return r;
}

static const char *precision_name(model_precision p) {
    return p == MODEL_BF16_MIXED ? "bf16-mixed" : p == MODEL_FP16_MIXED ? "fp16-mixed" : "fp32";
}

/* 16-bit tolerance against fp32, and not equal to it. bf16 keeps 8 significant bits (relative
 * rounding 2^-9), fp16 11. On this random model (loss ~125 over 28 tokens: large logits, so
 * sensitive gradients) the measured relative errors are: loss 2e-4..1.3e-3 (bf16), 4e-5..1.4e-4
 * (fp16); gradients 1.3e-2..1.8e-2 (bf16), 1.5e-3..2.2e-3 (fp16), i.e. ~8x = 2^3 apart, the
 * three mantissa bits between the formats. Bounds: ~3x the worst measured; and bf16 must be
 * at least 3x further from fp32 than fp16 (the format, not some other error, dominates). */
static void test_against_fp32(void) {
    const model_precision precisions[] = {MODEL_BF16_MIXED, MODEL_FP16_MIXED};
    for (int mode_index = 0; mode_index < N_CHECKED_MODES; mode_index++)
        for (int tied = 0; tied <= 1; tied++) {
            const run_mode mode = checked_modes[mode_index];
            const char *what = mode_names[mode];
            result ref = run(kernels_cpu(), mode, tied, MODEL_FP32, false, 5, 8);
            double grad_rels[2] = {0, 0};
            for (int i = 0; i < 2; i++) {
                model_precision p = precisions[i];
                const double loss_tol = p == MODEL_BF16_MIXED ? 3e-3 : 6e-4;
                const double grad_tol = p == MODEL_BF16_MIXED ? 5e-2 : 7e-3;
                result got = run(kernels_cpu(), mode, tied, p, false, 5, 8);
                double loss_rel = fabs(got.loss - ref.loss) / fabs(ref.loss);
                double grad_rel = rel_error(got.grads, ref.grads, ref.numel);
                grad_rels[i] = grad_rel;
                printf("%s %s%s: loss %.9g vs fp32 %.9g (rel %.2e), gradients rel %.2e\n", precision_name(p),
                       what, tied ? " tied" : "", got.loss, ref.loss, loss_rel, grad_rel);
                CHECK_MSG(loss_rel < loss_tol && loss_rel > 0, "%s %s: loss rel %.3g", precision_name(p), what,
                          loss_rel);
                CHECK_MSG(grad_rel < grad_tol && grad_rel > 1e-7, "%s %s: gradient rel %.3g", precision_name(p),
                          what, grad_rel);
                /* Checkpointing recomputes through the same 16-bit scratch: same bits. */
                result ckpt = run(kernels_cpu(), mode, tied, p, true, 5, 8);
                CHECK(ckpt.loss == got.loss);
                CHECK_MSG(memcmp(ckpt.grads, got.grads, got.numel * sizeof(float)) == 0,
                          "%s %s: activation checkpointing changed the gradients", precision_name(p), what);
                free(ckpt.grads);
                free(got.grads);
            }
            CHECK_MSG(grad_rels[0] > 3 * grad_rels[1], "bf16 %.3g vs fp16 %.3g", grad_rels[0], grad_rels[1]);
            free(ref.grads);
        }
}

/* Fused LoRA (train/model_internal.h) against the same adapters run separately: the same
 * 16-bit operands (scaling 2: round(2 B) = 2 round(B)) but one fp32 sum for the base and the
 * adapter instead of two, so only the fp32 roundings of y and dx differ, and what the later
 * 16-bit roundings make of them: far closer than either is to fp32. */
static void test_fused_vs_unfused(void) {
    const model_precision precisions[] = {MODEL_BF16_MIXED, MODEL_FP16_MIXED};
    for (int case_index = 0; case_index < 8; case_index++) {
        const model_precision p = precisions[case_index % 2];
        const bool tied = case_index / 2 % 2, dropout = case_index / 4;
        const run_mode fused_mode = dropout ? LORA_DROPOUT : LORA_FUSED;
        const run_mode sep_mode = dropout ? LORA_DROPOUT_UNFUSED : LORA_UNFUSED;
        result ref = run(kernels_cpu(), fused_mode, tied, MODEL_FP32, false, 5, 8);
        result fused = run(kernels_cpu(), fused_mode, tied, p, false, 5, 8);
        result sep = run(kernels_cpu(), sep_mode, tied, p, false, 5, 8);
        const double loss_rel = fabs(fused.loss - sep.loss) / fabs(sep.loss);
        const double grad_rel = rel_error(fused.grads, sep.grads, sep.numel);
        const double sep_rel = rel_error(sep.grads, ref.grads, ref.numel);
        printf("%s %s%s fused vs unfused: loss rel %.2e, gradients rel %.2e (unfused vs fp32 %.2e)\n",
               precision_name(p), mode_names[fused_mode], tied ? " tied" : "", loss_rel, grad_rel, sep_rel);
        /* bf16 products have 16 significant bits: at this width their fp32 sums are often
         * exact in any grouping, and here they all are (the same bits); fp16's are not, and
         * a flipped fp16 rounding shows in the loss or the gradients (both differing proves
         * the two paths ran different arithmetic). Measured (fp16): gradients 0..1.1e-4
         * without dropout (0 in the tied case, whose losses differ by 6.7e-8: the flipped
         * roundings of the forward vanish in the 16-bit gradients), 3.8e-4..4.5e-4 with (vs
         * 1.6e-3..2e-3 from fp32; the forward losses of one micro-batch agree to 0..4.5e-5).
         * Without q/k norms the tied fp16 case gives the same bits too (no rounding flips at
         * this size): there test_fused_gemm_count shows the two paths differ. */
        const bool must_differ = p == MODEL_FP16_MIXED && with_qk_norm;
        CHECK_MSG(grad_rel < sep_rel / 3 && loss_rel < 1e-4 && (!must_differ || grad_rel > 0 || loss_rel > 0),
                  "%s fused vs unfused: gradients %.3g, loss %.3g", precision_name(p), grad_rel, loss_rel);
        free(ref.grads);
        free(fused.grads);
        free(sep.grads);
    }
}

/* The CPU table with its products counted: which GEMMs the fused layout removes. */
static long gemm_calls;
static void counted_gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float *a, int lda, const float *b,
                         int ldb, float beta, float *c, int ldc) {
    gemm_calls++;
    kernels_cpu()->gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
static void counted_gemm_half(kernels_half_format fmt, bool ta, bool tb, int m, int n, int k, float alpha,
                              const uint16_t *a, int lda, const uint16_t *b, int ldb, float beta, float *c, int ldc) {
    gemm_calls++;
    kernels_cpu()->gemm_half(fmt, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
static void counted_gemm_half_add(kernels_half_format fmt, bool ta, bool tb, int m, int n, int k, const uint16_t *a,
                                  int lda, const uint16_t *b, int ldb, const float *r, float *c, int ldc) {
    gemm_calls++;
    kernels_cpu()->gemm_half_add(fmt, ta, tb, m, n, k, a, lda, b, ldb, r, c, ldc);
}

static void counted_gemm_half_to_half(kernels_half_format fmt, bool ta, bool tb, int m, int n, int k,
                                      const uint16_t *a, int lda, const uint16_t *b, int ldb, uint16_t *c, int ldc) {
    gemm_calls++;
    kernels_cpu()->gemm_half_to_half(fmt, ta, tb, m, n, k, a, lda, b, ldb, c, ldc);
}

/* Every adapted Linear loses its adapter's output product y += s u B^T (all seven: the
 * SwiGLU forward writes down's input with room for u) and, without dropout, its input-gradient
 * product dx += du A (gate and up too: SwiGLU's backward writes their dy with room for du)
 * where dx is wanted: everywhere but layer 0's q, k, v (frozen embedding: nothing below). */
static void test_fused_gemm_count(void) {
    kernels counted = *kernels_cpu();
    counted.gemm = counted_gemm;
    counted.gemm_half = counted_gemm_half;
    counted.gemm_half_add = counted_gemm_half_add;
    counted.gemm_half_to_half = counted_gemm_half_to_half;
    const int L = 2, steps = 2; /* mixed_config, run() */
    for (int dropout = 0; dropout <= 1; dropout++) {
        long calls[2];
        for (int unfused = 0; unfused <= 1; unfused++) {
            const run_mode mode = dropout ? (unfused ? LORA_DROPOUT_UNFUSED : LORA_DROPOUT)
                                          : (unfused ? LORA_UNFUSED : LORA_FUSED);
            gemm_calls = 0;
            result r = run(&counted, mode, false, MODEL_BF16_MIXED, false, 5, 8);
            calls[unfused] = gemm_calls;
            free(r.grads);
        }
        /* without q/k norms, also the base products of k's and v's input gradient (q, k and v
         * in one GEMM where the adapters run inside: every layer but 0, which needs none) */
        const long removed = steps * (7L * L + (dropout ? 0 : 7L * L - 3 + (with_qk_norm ? 0 : 2L * (L - 1))));
        printf("GEMMs for two steps, %s: fused %ld, unfused %ld\n", dropout ? "dropout" : "no dropout", calls[0],
               calls[1]);
        CHECK_MSG(calls[1] - calls[0] == removed, "%s: the fused layout removed %ld GEMMs, expected %ld",
                  dropout ? "dropout" : "no dropout", calls[1] - calls[0], removed);
    }
}

static double forward_loss(model *m) {
    double loss = 0;
    long n = 0;
    ct_error err = {{0}};
    CHECK_MSG(model_step(m, &batch, false, 1.0f, 0, &loss, &n, &err) == 0, "%s", err.msg);
    return loss;
}

static void nudge(model *m, model_param *p) {
    float *host = malloc(p->numel * sizeof(float));
    model_param_download(m, p, host);
    for (size_t i = 0; i < p->numel; i++) host[i] = host[i] * 1.5f + 0.01f;
    model_param_upload(m, p, host);
    free(host);
}

/* The copies follow the fp32 weights when, and only as far as, model_weights_changed says. */
/* LoRA keeps the frozen embedding table only in 16 bits, tied (the lm_head's copy) or untied
 * (a copy of its own): no fp32 value, the lookup widens its rows (embedding_fwd_half). The
 * reference is full fine-tuning of the same model in the same precision, whose trainable
 * table stays fp32 and is looked up in fp32: with the table's 16-bit values, the same
 * base weights and the adapters' B at zero (their products add exact zeros), the same
 * loss, bit for bit. */
static void test_table_half_only(const lora_settings *ls, bool tied) {
    ct_error err = {{0}};
    model_config c;
    mixed_config(&c, tied, 8);
    model lora, full;
    CHECK(model_create(&lora, &c, ls, kernels_cpu(), &err) == 0);
    CHECK(model_create(&full, &c, NULL, kernels_cpu(), &err) == 0);
    const size_t fp32_numel = lora.weight_numel;
    CHECK(model_set_precision(&lora, MODEL_BF16_MIXED, &err) == 0);
    CHECK(model_set_precision(&full, MODEL_BF16_MIXED, &err) == 0);
    CHECK(model_reserve(&lora, 2, 8, &err) == 0 && model_reserve(&full, 2, 8, &err) == 0);
    model_param *table = model_find_param(&lora, "model.embed_tokens.weight");
    CHECK_MSG(table->data == NULL && table->half != NULL, "%s frozen table: fp32 %s, 16-bit %s",
              tied ? "tied" : "untied", table->data ? "kept" : "dropped", table->half ? "present" : "missing");
    CHECK(model_find_param(&full, "model.embed_tokens.weight")->data != NULL);
    size_t frozen_2d = 0, half_want = 0;
    for (int i = 0; i < lora.n_params; i++) {
        const model_param *p = &lora.params[i];
        if (!p->is_lora && p->ndim == 2) frozen_2d += p->numel;
        if (p->half && !p->is_lora) half_want += (size_t)p->half_rows * (size_t)p->half_ld;
    }
    CHECK_MSG(lora.weight_numel == fp32_numel - frozen_2d, "%s: fp32 arena %zu values, want %zu",
              tied ? "tied" : "untied", lora.weight_numel, fp32_numel - frozen_2d);
    /* the table's copy is counted once, tied or not */
    CHECK_MSG(lora.half_numel == half_want, "%s: 16-bit arena %zu values, want %zu", tied ? "tied" : "untied",
              lora.half_numel, half_want);
    fill_weights(&lora, 17);
    for (int i = 0; i < lora.n_params; i++) {
        model_param *p = &lora.params[i];
        float *host = calloc(p->numel, sizeof(float));
        if (strstr(p->name, "lora_B")) {
            model_param_upload(&lora, p, host);
        } else {
            model_param_download(&lora, p, host); /* frozen: their 16-bit values, widened */
            if (!p->is_lora) model_param_upload(&full, model_find_param(&full, p->name), host);
        }
        free(host);
    }
    model_weights_changed(&lora, true);  /* the adapters' copies */
    model_weights_changed(&full, false); /* every copy */
    const double want = forward_loss(&full), got = forward_loss(&lora);
    CHECK_MSG(got == want, "%s 16-bit table: loss %.17g, fp32 table of the same values %.17g",
              tied ? "tied" : "untied", got, want);
    model_free(&lora);
    model_free(&full);
}

/* model_create_in: the same model as model_create + model_set_precision (arenas, copies, which
 * weights keep fp32, then the same loss and gradient bits), built without a transient: the
 * backend's peak after it is what the model holds, not more. (And model_set_precision leaves a
 * full fine-tune's fp32 arena in place.) Run first in the process, LoRA
 * (smaller) before full fine-tuning, so that an earlier peak cannot hide a transient. */
static void test_create_in(void) {
    const kernels *k = kernels_cpu();
    const run_mode modes[] = {LORA_FUSED, FULL, DORA_DROPOUT, LORA_DROPOUT};
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
        for (int tied = 0; tied <= 1; tied++) {
            const run_mode mode = modes[i];
            model_config c;
            mixed_config(&c, tied, 8);
            lora_settings ls = {.r = 4, .alpha = 8.0f, .dropout = mode == FULL || mode == LORA_FUSED ? 0.0f : 0.2f,
                                .use_dora = mode == DORA_DROPOUT};
            const char *all[] = {"all-linear"};
            ct_error err = {{0}};
            CHECK(lora_parse_targets(&ls, all, 1, &err) == 0);
            const lora_settings *lora = mode == FULL ? NULL : &ls;
            size_t now0, peak0, now1, peak1;
            k->memory_held(&now0, &peak0);
            model direct, switched;
            CHECK_MSG(model_create_in(&direct, &c, lora, k, MODEL_BF16_MIXED, NULL, &err) == 0, "%s", err.msg);
            k->memory_held(&now1, &peak1);
            if (i < 2 && !tied) /* the first two: nothing held before them hides a transient */
                CHECK_MSG(peak1 <= (now1 > peak0 ? now1 : peak0), "%s: creating in bf16-mixed peaked at %zu bytes, "
                          "holds %zu", mode_names[mode], peak1 - now0, now1 - now0);
            CHECK_MSG(model_create(&switched, &c, lora, k, &err) == 0, "%s", err.msg);
            const float *fp32_arena = switched.weight_arena;
            CHECK_MSG(model_set_precision(&switched, MODEL_BF16_MIXED, &err) == 0, "%s", err.msg);
            /* full fine-tuning keeps every fp32 value where it is: no copy of the arena */
            if (mode == FULL) CHECK(switched.weight_arena == fp32_arena);
            bool same = direct.weight_numel == switched.weight_numel && direct.half_numel == switched.half_numel &&
                        direct.n_adapter_casts == switched.n_adapter_casts;
            for (int j = 0; j < direct.n_params; j++) {
                const model_param *a = &direct.params[j], *b = &switched.params[j];
                same = same && !a->data == !b->data && !a->half == !b->half && a->half_ld == b->half_ld &&
                       a->half_rows == b->half_rows &&
                       (!a->data || a->data - direct.weight_arena == b->data - switched.weight_arena);
            }
            CHECK_MSG(same, "%s %s: created in bf16-mixed, the arenas differ from create + set_precision",
                      mode_names[mode], tied ? "tied" : "untied");
            double loss[2];
            float *grads[2];
            model *both[2] = {&direct, &switched};
            for (int w = 0; w < 2; w++) {
                CHECK_MSG(model_reserve(both[w], 2, 8, &err) == 0, "%s", err.msg);
                fill_weights(both[w], 23);
                model_zero_grads(both[w]);
                long n = 0;
                loss[w] = 0;
                CHECK_MSG(model_step(both[w], &batch, true, 1.0f, 5, &loss[w], &n, &err) == 0, "%s", err.msg);
                grads[w] = malloc(both[w]->grad_numel * sizeof(float));
                k->download(grads[w], both[w]->grad_arena, both[w]->grad_numel * sizeof(float));
            }
            CHECK_MSG(loss[0] == loss[1] && direct.grad_numel == switched.grad_numel &&
                          memcmp(grads[0], grads[1], direct.grad_numel * sizeof(float)) == 0,
                      "%s %s: created in bf16-mixed, loss %.17g and gradients differ from create + set_precision's %.17g",
                      mode_names[mode], tied ? "tied" : "untied", loss[0], loss[1]);
            free(grads[0]);
            free(grads[1]);
            model_free(&direct);
            model_free(&switched);
        }
}

static void test_weight_copies(void) {
    model_config c;
    mixed_config(&c, false, 8);
    ct_error err = {{0}};
    model m, fresh;
    CHECK(model_create(&m, &c, NULL, kernels_cpu(), &err) == 0);
    CHECK(model_create(&fresh, &c, NULL, kernels_cpu(), &err) == 0);
    CHECK(model_set_precision(&m, MODEL_BF16_MIXED, &err) == 0);
    CHECK(model_set_precision(&fresh, MODEL_BF16_MIXED, &err) == 0);
    CHECK(model_reserve(&m, 2, 8, &err) == 0 && model_reserve(&fresh, 2, 8, &err) == 0);
    /* Every Linear weight and the lm_head have a copy; embeddings (untied), norms, biases not. */
    size_t expected = 0;
    for (int i = 0; i < m.n_params; i++) {
        const model_param *p = &m.params[i];
        bool gemm = p->ndim == 2 && strcmp(p->name, "model.embed_tokens.weight") != 0;
        CHECK_MSG((p->half != NULL) == gemm, "%s: 16-bit copy %s", p->name, p->half ? "present" : "missing");
        if (gemm) expected += p->numel;
    }
    CHECK(m.half_numel == expected);
    fill_weights(&m, 9);
    double before = forward_loss(&m);
    model_param *q = model_find_param(&m, "model.layers.1.self_attn.q_proj.weight");
    nudge(&m, q);
    CHECK_MSG(forward_loss(&m) == before, "a changed weight reached the GEMMs without model_weights_changed");
    model_weights_changed(&m, true); /* full fine-tuning: every weight trains */
    double after = forward_loss(&m);
    CHECK(after != before);
    fill_weights(&fresh, 9);
    nudge(&fresh, model_find_param(&fresh, "model.layers.1.self_attn.q_proj.weight"));
    model_weights_changed(&fresh, false);
    CHECK_MSG(forward_loss(&fresh) == after, "refreshed copies differ from a fresh model's");
    /* Back to fp32: the fp32 bits, the copies gone. */
    CHECK(model_set_precision(&m, MODEL_FP32, &err) == 0);
    CHECK(m.half_arena == NULL && m.half_numel == 0 && q->half == NULL);
    CHECK(model_reserve(&m, 2, 8, &err) == 0);
    model plain;
    CHECK(model_create(&plain, &c, NULL, kernels_cpu(), &err) == 0);
    CHECK(model_reserve(&plain, 2, 8, &err) == 0);
    fill_weights(&plain, 9);
    nudge(&plain, model_find_param(&plain, "model.layers.1.self_attn.q_proj.weight"));
    CHECK(forward_loss(&plain) == forward_loss(&m));
    model_free(&plain);
    model_free(&fresh);
    model_free(&m);

    /* LoRA: the frozen base, the untied embedding table included, lives only in 16 bits (no
     * fp32 copy): setting it writes the rounded values, effective at once; reading it back
     * widens them. The adapters train: fp32 masters, whose 16-bit copies (fused LoRA, no
     * dropout) live inside their base weight's padded copy [W 0 sB; A 0 0]
     * (train/model_internal.h), so q_proj's copy is wider and taller than the weight;
     * k_proj's and v_proj's (not adapted, the same input) share its row stride (zero columns:
     * the three stack into one matrix), up_proj's is plain. */
    lora_settings ls = {.r = 2, .alpha = 3.0f};
    const char *targets[] = {"q_proj"};
    CHECK(lora_parse_targets(&ls, targets, 1, &err) == 0);
    CHECK(model_create(&m, &c, &ls, kernels_cpu(), &err) == 0);
    const size_t fp32_numel = m.weight_numel;
    CHECK(model_set_precision(&m, MODEL_FP16_MIXED, &err) == 0);
    CHECK(model_reserve(&m, 2, 8, &err) == 0);
    fill_weights(&m, 3);
    size_t only16 = 0, padding = 0;
    for (int i = 0; i < m.n_params; i++) {
        const model_param *p = &m.params[i];
        CHECK_MSG(!p->is_lora || (p->half == NULL && p->data != NULL), "%s: fp32 master, no copy of its own", p->name);
        bool base_gemm = !p->is_lora && p->ndim == 2;
        CHECK_MSG(base_gemm == (p->data == NULL), "%s: fp32 data %s", p->name, p->data ? "kept" : "dropped");
        const bool adapted = strstr(p->name, "q_proj.weight") && !p->is_lora;
        const bool q_group = !p->is_lora && (strstr(p->name, "q_proj.weight") || strstr(p->name, "k_proj.weight") ||
                                             strstr(p->name, "v_proj.weight"));
        CHECK_MSG(!p->half || p->half_ld == p->shape[1] + (q_group ? ls.r : 0), "%s: copy's row stride %d",
                  p->name, p->half_ld);
        CHECK(!p->half || p->half_rows == p->shape[0] + (adapted ? ls.r : 0));
        if (base_gemm) only16 += p->numel;
        if (p->half) padding += (size_t)p->half_rows * (size_t)p->half_ld - p->numel;
    }
    CHECK(only16 > 0 && m.weight_numel == fp32_numel - only16);
    CHECK(m.half_numel == only16 + padding && padding > 0);
    /* The adapter's copies in the padding: A below W, round(scaling * B) beside it, zeros
     * elsewhere; rewritten after model_weights_changed (an optimizer step). */
    model_param *qw = model_find_param(&m, "model.layers.0.self_attn.q_proj.weight");
    model_param *qa = model_find_param(&m, "model.layers.0.self_attn.q_proj.lora_A.weight");
    model_param *qb = model_find_param(&m, "model.layers.0.self_attn.q_proj.lora_B.weight");
    forward_loss(&m);
    for (int round = 0; round < 2; round++) {
        const int ld = qw->half_ld, in = (int)qw->shape[1], out = (int)qw->shape[0], r = ls.r;
        const float scaling = ls.alpha / (float)ls.r;
        int wrong = 0;
        for (int row = 0; row < out + r; row++)
            for (int col = in; col < ld; col++) {
                float v = row < out ? scaling * qb->data[row * r + col - in] : 0.0f;
                uint16_t want_bits;
                kernels_cpu()->to_half(&want_bits, &v, 1, KERNELS_FP16);
                wrong += qw->half[(size_t)row * ld + col] != want_bits;
            }
        for (int row = out; row < out + r; row++)
            for (int col = 0; col < in; col++) {
                uint16_t want_bits;
                kernels_cpu()->to_half(&want_bits, &qa->data[(row - out) * in + col], 1, KERNELS_FP16);
                wrong += qw->half[(size_t)row * ld + col] != want_bits;
            }
        CHECK_MSG(wrong == 0, "round %d: %d elements of the adapter's padded copy are wrong", round, wrong);
        nudge(&m, qa);
        nudge(&m, qb);
        model_weights_changed(&m, true);
        forward_loss(&m);
    }
    const char *names[] = {"model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight"};
    for (int which = 0; which < 2; which++) {
        model_param *w = model_find_param(&m, names[which]);
        float *want = malloc(w->numel * sizeof(float)), *got = malloc(w->numel * sizeof(float));
        model_param_download(&m, w, want);
        for (size_t i = 0; i < w->numel; i++) want[i] = want[i] * 1.5f + 0.01f;
        before = forward_loss(&m);
        model_param_upload(&m, w, want);
        CHECK(forward_loss(&m) != before);
        model_param_download(&m, w, got);
        uint16_t bits;
        int exact = 0;
        for (size_t i = 0; i < w->numel; i++) {
            float rounded;
            kernels_cpu()->to_half(&bits, &want[i], 1, KERNELS_FP16);
            kernels_cpu()->from_half(&rounded, &bits, 1, KERNELS_FP16);
            exact += got[i] == rounded;
        }
        CHECK_MSG(exact == (int)w->numel, "%s: %d of %zu values read back as their fp16 rounding", w->name, exact,
                  w->numel);
        free(want);
        free(got);
    }
    /* Back to fp32: the widened 16-bit values become the fp32 weights. */
    float *expect[2];
    for (int which = 0; which < 2; which++) {
        model_param *w = model_find_param(&m, names[which]);
        expect[which] = malloc(w->numel * sizeof(float));
        model_param_download(&m, w, expect[which]);
    }
    CHECK(model_set_precision(&m, MODEL_FP32, &err) == 0);
    CHECK(m.weight_numel == fp32_numel);
    for (int which = 0; which < 2; which++) {
        model_param *w = model_find_param(&m, names[which]);
        CHECK(w->data != NULL && w->half == NULL);
        float *widened = malloc(w->numel * sizeof(float));
        m.k->download(widened, w->data, w->numel * sizeof(float));
        CHECK_MSG(memcmp(widened, expect[which], w->numel * sizeof(float)) == 0, "%s: widened to fp32", w->name);
        free(widened);
        free(expect[which]);
    }
    model_free(&m);
    test_table_half_only(&ls, true);
    test_table_half_only(&ls, false);

    /* The GEMM-only activations are kept in 16 bits, except under LoRA dropout, which needs
     * their fp32. Exactly: per layer the two norm outputs [T,H], gate, up and act [T,I], and
     * attention's q [T,nh*d], k, v [T,nkv*d] and output [T,nh*d] take 2 bytes a value
     * instead of 4 (the fp32 gate, up, q, k, v borrow backward scratch), less the 16-bit
     * scratch: a GEMM input [T, wide], an output gradient or logits chunk, ones [T]. */
    model_config big = c;
    big.hidden_size = 256, big.intermediate_size = 1024, big.num_hidden_layers = 8;
    {
        const size_t T = 128, H = 256, I = 1024, V = (size_t)big.vocab_size;
        size_t wide = (size_t)(big.num_attention_heads * big.head_dim);
        wide = wide > I ? wide : I;
        const size_t qdim = (size_t)(big.num_attention_heads * big.head_dim);
        const size_t kvdim = (size_t)(big.num_key_value_heads * big.head_dim);
        const size_t saved = (size_t)big.num_hidden_layers * (2 * T * H + 3 * T * I + T * (2 * qdim + 2 * kvdim)) * 2;
        const size_t scratch = (T * wide + (T * wide > T * V ? T * wide : T * V) + T) * 2;
        size_t b32 = model_activation_bytes(&big, NULL, 2, 64, false, MODEL_FP32);
        size_t b16 = model_activation_bytes(&big, NULL, 2, 64, false, MODEL_BF16_MIXED);
        CHECK_MSG(b32 - b16 == saved - scratch, "fp32 %zu - mixed %zu bytes = %zu, expected %zu - %zu", b32, b16,
                  b32 - b16, saved, scratch);
    }
    lora_settings no_drop = ls, drop = ls;
    no_drop.dropout = 0.0f, drop.dropout = 0.1f;
    size_t kept16 = model_activation_bytes(&big, &no_drop, 2, 64, false, MODEL_BF16_MIXED);
    size_t kept32 = model_activation_bytes(&big, &drop, 2, 64, false, MODEL_BF16_MIXED);
    CHECK_MSG(kept16 < kept32, "16-bit saved inputs: %zu bytes, fp32: %zu", kept16, kept32);
    CHECK(model_activation_bytes(&big, NULL, 2, 64, false, MODEL_BF16_MIXED) <
          model_activation_bytes(&big, NULL, 2, 64, false, MODEL_FP32));
    model_config_free(&c);
}

/* An optimizer that wrote some 16-bit copies itself (AdamW does, model_weights_changed_except):
 * the next refresh re-rounds only the rest; two updates before a refresh re-round everything. */
static void test_partial_refresh(void) {
    model_config c;
    mixed_config(&c, false, 8);
    ct_error err = {{0}};
    model m;
    CHECK(model_create(&m, &c, NULL, kernels_cpu(), &err) == 0);
    CHECK(model_set_precision(&m, MODEL_BF16_MIXED, &err) == 0);
    CHECK(model_reserve(&m, 2, 8, &err) == 0);
    fill_weights(&m, 4);
    forward_loss(&m);
    model_param *q = model_find_param(&m, "model.layers.1.self_attn.q_proj.weight");
    const size_t n = q->numel, first = (size_t)(q->grad - m.grad_arena), cut = n / 3;
    uint16_t *old = malloc(n * sizeof *old), *want = malloc(n * sizeof *want);
    memcpy(old, q->half, n * sizeof *old); /* the CPU backend's memory is the host's */
    nudge(&m, q);
    model_weights_changed_except(&m, first + cut, first + n + 100); /* past q's end: clamped */
    forward_loss(&m);
    kernels_cpu()->to_half(want, q->data, n, KERNELS_BF16);
    CHECK_MSG(memcmp(q->half, want, cut * sizeof *want) == 0, "the values outside the fresh range were not re-rounded");
    CHECK_MSG(memcmp(q->half + cut, old + cut, (n - cut) * sizeof *old) == 0,
              "the values the optimizer wrote were rounded again");
    CHECK(memcmp(want + cut, old + cut, (n - cut) * sizeof *old) != 0); /* the nudge changed them */
    nudge(&m, q);
    model_weights_changed_except(&m, first, first + n);
    model_weights_changed_except(&m, first, first + n);
    forward_loss(&m);
    kernels_cpu()->to_half(want, q->data, n, KERNELS_BF16);
    CHECK_MSG(memcmp(q->half, want, n * sizeof *want) == 0, "two updates before a refresh left copies stale");
    free(old);
    free(want);
    model_free(&m);
    model_config_free(&c);
}

/* The CUDA backend's mixed precision against the CPU's (same roundings of every GEMM operand;
 * sums in another order, attention possibly on tensor cores): 16-bit tolerance. */
/* model_zero_grads is lazy (model.h): each gradient's first writer in the step overwrites it.
 * Stale values (NaN here) must never leak, and the result must be the bits of adding onto
 * zeros, for every kind of writer: weight GEMMs (the vocabulary weight's chunks, tied or
 * not), biases, adapters (fused, separate, under dropout), q/k/v's stacked weight gradient,
 * RMSNorm weights (q/k norms too) and the embedding's scatter. A step without a backward
 * (grad_scale 0, or no target at all) leaves zeros. */
static void test_lazy_zeroing(const kernels *k) {
    const model_precision precisions[] = {MODEL_FP32, MODEL_BF16_MIXED};
    const run_mode modes[] = {FULL, LORA_DROPOUT, LORA_FUSED, LORA_UNFUSED};
    for (int p = 0; p < 2; p++)
        for (int mi = 0; mi < 4; mi++)
            for (int tied = 0; tied < 2; tied++) {
                model_config c;
                mixed_config(&c, tied, 8);
                const run_mode mode = modes[mi];
                lora_settings ls = {.r = 4, .alpha = 8.0f, .dropout = mode == LORA_DROPOUT ? 0.2f : 0.0f};
                const char *all[] = {"all-linear"};
                ct_error err = {{0}};
                CHECK(lora_parse_targets(&ls, all, 1, &err) == 0);
                model m;
                CHECK_MSG(model_create(&m, &c, mode == FULL ? NULL : &ls, k, &err) == 0, "%s", err.msg);
                m.lora_unfused = mode == LORA_UNFUSED;
                CHECK_MSG(model_set_precision(&m, precisions[p], &err) == 0, "%s", err.msg);
                m.activation_checkpointing = tied; /* the recomputed forward writes no gradient */
                CHECK_MSG(model_reserve(&m, 2, 8, &err) == 0, "%s", err.msg);
                fill_weights(&m, 21);
                const size_t n = m.grad_numel;
                float *poison = malloc(n * sizeof(float)), *lazy = malloc(n * sizeof(float)),
                      *eager = malloc(n * sizeof(float));
                for (size_t i = 0; i < n; i++) poison[i] = NAN;
                double loss = 0;
                long count = 0;
                k->upload(m.grad_arena, poison, n * sizeof(float));
                model_zero_grads(&m);
                CHECK(model_step(&m, &batch, true, 0.5f, 7, &loss, &count, &err) == 0);
                k->download(lazy, m.grad_arena, n * sizeof(float));
                k->zero(m.grad_arena, n * sizeof(float)); /* eager: the step adds onto zeros */
                CHECK(model_step(&m, &batch, true, 0.5f, 7, &loss, &count, &err) == 0);
                k->download(eager, m.grad_arena, n * sizeof(float));
                size_t differ = 0, nonzero = 0;
                for (size_t i = 0; i < n; i++) {
                    differ += !(lazy[i] == eager[i]); /* NaN differs; +0 equals -0 */
                    nonzero += eager[i] != 0.0f;
                }
                CHECK_MSG(differ == 0 && nonzero > n / 2, "%s %s %s: %zu of %zu gradients differ (%zu nonzero)",
                          precision_name(precisions[p]), mode_names[mode], tied ? "tied" : "untied", differ, n,
                          nonzero);
                for (int way = 0; way < 2; way++) { /* grad_scale 0; no target to score */
                    k->upload(m.grad_arena, poison, n * sizeof(float));
                    model_zero_grads(&m);
                    CHECK(model_step(&m, way ? &unscored : &batch, true, way ? 0.5f : 0.0f, 7, &loss, &count,
                                     &err) == 0);
                    k->download(lazy, m.grad_arena, n * sizeof(float));
                    size_t not_zero = 0;
                    for (size_t i = 0; i < n; i++) not_zero += !(lazy[i] == 0.0f);
                    CHECK_MSG(not_zero == 0, "%s %s: %zu gradients not zeroed without a backward",
                              precision_name(precisions[p]), mode_names[mode], not_zero);
                }
                free(poison);
                free(lazy);
                free(eager);
                model_free(&m);
            }
}

/* What grads_ready collects from a bucketed model: every layer's gradients at their flat
 * index, the order of the calls, and an optional failure. */
typedef struct bucket_log {
    const kernels *k;
    float *flat;     /* [grad_numel] host */
    int order[8], n_calls;
    size_t next_hi;  /* the calls' ranges must tile the layers' flat span downwards */
    int fail_at;     /* this layer's call fails (-1: none) */
} bucket_log;

static int collect_layer(void *ctx, model *m, int layer, size_t lo, size_t hi, const float *grads, ct_error *err) {
    bucket_log *log = ctx;
    if (log->n_calls < 8) log->order[log->n_calls] = layer;
    log->n_calls++;
    CHECK_MSG(log->next_hi == 0 || hi == log->next_hi, "layer %d ends at %zu, the layer above began at %zu", layer, hi,
              log->next_hi);
    log->next_hi = lo;
    if (layer == log->fail_at) return ct_fail(err, "simulated failure taking layer %d", layer);
    if (hi > lo) log->k->download(log->flat + lo, grads, (hi - lo) * sizeof(float));
    (void)m;
    return 0;
}

/* model_layout.grad_buckets: the gradients every layer hands over (and those outside the
 * layers, left in grad_held) are the bits of the whole-arena model's, for full fine-tuning,
 * LoRA (fused and with dropout) and DoRA, in fp32 and bf16 (mixed_only: bf16), tied and untied, with
 * checkpointing; with a shard too. Layers come top down, once each, also when the step has
 * no backward to run (a zero scale, no target): zeros then, over buckets poisoned with NaN.
 * The backward holds the outside gradients and two buckets; a failing callback stops the
 * step there; without a callback the step refuses to run. */
static void test_grad_buckets(const kernels *k, bool mixed_only) {
    const model_precision precisions[] = {MODEL_BF16_MIXED, MODEL_FP32};
    const run_mode modes[] = {FULL, LORA_DROPOUT, LORA_FUSED, DORA};
    for (int pi = 0; pi < (mixed_only ? 1 : 2); pi++)
        for (int mi = 0; mi < 4; mi++)
            for (int tied = 0; tied < 2; tied++) {
                const run_mode mode = modes[mi];
                const model_precision precision = precisions[pi];
                model_config c;
                mixed_config(&c, tied, 8);
                c.num_hidden_layers = 3; /* two buckets hold less than three layers */
                lora_settings ls = {.r = 4, .alpha = 8.0f, .dropout = mode == LORA_DROPOUT ? 0.2f : 0.0f,
                                    .use_dora = mode == DORA};
                const char *all[] = {"all-linear"};
                ct_error err = {{0}};
                CHECK(lora_parse_targets(&ls, all, 1, &err) == 0);
                const lora_settings *lora = mode == FULL ? NULL : &ls;
                /* a shard cutting through the middle layer (mixed precision only) */
                const size_t trainable = model_trainable_numel(&c, lora, &err);
                const model_shard shard = {trainable / 3, trainable / 2};
                const bool sharded = precision != MODEL_FP32 && mode == FULL && tied;
                const model_layout whole = {.precision = precision, .shard = sharded ? &shard : NULL};
                const model_layout bucketed = {.precision = precision, .shard = sharded ? &shard : NULL,
                                               .grad_buckets = true};
                model ref, m;
                CHECK_MSG(model_create_as(&ref, &c, lora, k, &whole, &err) == 0, "%s", err.msg);
                CHECK_MSG(model_create_as(&m, &c, lora, k, &bucketed, &err) == 0, "%s", err.msg);
                const char *name = mode_names[mode];
                CHECK(m.grad_buckets && !m.grad_arena && m.grad_held && !ref.grad_buckets && ref.grad_arena);
                /* what the backward holds: outside gradients + 2 of the (equal) layers */
                CHECK_MSG(m.grad_bucket_numel * 3 + (m.grad_held_numel - 2 * m.grad_bucket_numel) == m.grad_numel &&
                              m.grad_held_numel < m.grad_numel,
                          "%s: %zu gradient values held for %zu trainable, buckets of %zu", name, m.grad_held_numel,
                          m.grad_numel, m.grad_bucket_numel);
                model *both[2] = {&ref, &m};
                for (int w = 0; w < 2; w++) {
                    both[w]->activation_checkpointing = tied;
                    CHECK_MSG(model_reserve(both[w], 2, 8, &err) == 0, "%s", err.msg);
                    fill_weights(both[w], 31);
                }
                const size_t n = m.grad_numel;
                float *want = malloc(n * sizeof(float)), *poison = malloc(m.grad_held_numel * sizeof(float));
                for (size_t i = 0; i < m.grad_held_numel; i++) poison[i] = NAN;
                bucket_log log = {k, malloc(n * sizeof(float)), {0}, 0, 0, -1};
                double loss[2];
                long count = 0;
                /* no callback: the layers' gradients would be lost */
                model_zero_grads(&m);
                CHECK(model_step(&m, &batch, true, 0.5f, 7, &loss[1], &count, &err) != 0 &&
                      strstr(err.msg, "grads_ready"));
                m.grads_ready = collect_layer;
                m.grads_ready_ctx = &log;
                for (int way = 0; way < 3; way++) { /* a backward; grad_scale 0; no target to score */
                    const model_batch *b = way == 2 ? &unscored : &batch;
                    const float scale = way == 1 ? 0.0f : 0.5f;
                    model_zero_grads(&ref);
                    CHECK(model_step(&ref, b, true, scale, 7, &loss[0], &count, &err) == 0);
                    k->download(want, ref.grad_arena, n * sizeof(float));
                    k->upload(m.grad_held, poison, m.grad_held_numel * sizeof(float));
                    for (size_t i = 0; i < n; i++) log.flat[i] = NAN;
                    log.n_calls = 0;
                    log.next_hi = 0;
                    model_zero_grads(&m);
                    CHECK_MSG(model_step(&m, b, true, scale, 7, &loss[1], &count, &err) == 0, "%s", err.msg);
                    for (int i = 0; i < m.n_params; i++) { /* the rest stay where they are */
                        const model_param *p = &m.params[i];
                        if (p->trainable && p->layer < 0) k->download(log.flat + p->flat, p->grad, p->numel * sizeof(float));
                    }
                    size_t differ = 0, nonzero = 0;
                    for (size_t i = 0; i < n; i++) {
                        differ += memcmp(&want[i], &log.flat[i], sizeof(float)) != 0;
                        nonzero += want[i] != 0.0f;
                    }
                    CHECK_MSG(loss[0] == loss[1] && differ == 0 && (way == 0 ? nonzero > n / 2 : nonzero == 0),
                              "%s %s %s%s, way %d: %zu of %zu gradients differ from the whole arena's (%zu nonzero)",
                              name, precision_name(precision), tied ? "tied" : "untied", sharded ? " sharded" : "", way,
                              differ, n, nonzero);
                    CHECK_MSG(log.n_calls == 3 && log.order[0] == 2 && log.order[1] == 1 && log.order[2] == 0 &&
                                  log.next_hi == m.params[0].flat + (m.params[0].trainable ? m.params[0].numel : 0),
                              "%s way %d: %d calls, layers %d %d %d", name, way, log.n_calls, log.order[0], log.order[1],
                              log.order[2]);
                }
                /* a failing callback stops the backward: no call for the layers below */
                log.fail_at = 1;
                log.n_calls = 0;
                log.next_hi = 0;
                model_zero_grads(&m);
                CHECK(model_step(&m, &batch, true, 0.5f, 7, &loss[1], &count, &err) != 0 &&
                      strstr(err.msg, "simulated failure taking layer 1") && log.n_calls == 2);
                free(want);
                free(poison);
                free(log.flat);
                model_free(&ref);
                model_free(&m);
            }
}

static void test_cuda_against_cpu(const kernels *cuda) {
    const model_precision precisions[] = {MODEL_BF16_MIXED, MODEL_FP16_MIXED};
    const int head_dims[] = {8, 64}; /* WMMA and mma.sync attention */
    for (int case_index = 0; case_index < 4 * N_CHECKED_MODES; case_index++) {
        const int head_dim = head_dims[case_index / (2 * N_CHECKED_MODES)];
        const run_mode lora = checked_modes[case_index / 2 % N_CHECKED_MODES];
        const model_precision precision = precisions[case_index % 2];
        result cpu = run(kernels_cpu(), lora, true, precision, false, 13, head_dim);
        result gpu = run(cuda, lora, true, precision, false, 13, head_dim);
        double loss_rel = fabs(gpu.loss - cpu.loss) / fabs(cpu.loss);
        double grad_rel = rel_error(gpu.grads, cpu.grads, cpu.numel);
        printf("cuda %s %s head_dim %d: loss rel %.2e, gradients rel %.2e\n", precision_name(precision),
               mode_names[lora], head_dim, loss_rel, grad_rel);
        CHECK(loss_rel < 3e-3);
        CHECK(grad_rel < 5e-2); /* at most the distance between bf16-mixed and fp32 */
        free(cpu.grads);
        free(gpu.grads);
    }
}

/* QLoRA (model_layout.nf4_base): a model whose layers' Linear weights are uploaded as fp32 and
 * held in NF4 gives, bit for bit, the losses and gradients of the plain LoRA model holding
 * those weights' read-back (model_param_download of the NF4 model), for the fused adapters,
 * adapter dropout (unfused backward) and DoRA, with and without checkpointing, in both
 * formats, and again after the adapters change (the layer buffers' adapter casts follow).
 * Refused: no adapters, fp32, with ZeRO 3's gathering; changing precision afterwards. */
static void test_nf4_base(void) {
    const model_precision precisions[] = {MODEL_BF16_MIXED, MODEL_FP16_MIXED};
    const run_mode modes[] = {LORA_FUSED, LORA_DROPOUT, DORA};
    for (int ci = 0; ci < 12; ci++) {
        const model_precision p = precisions[ci % 2];
        const run_mode mode = modes[ci / 2 % 3];
        const bool checkpointing = ci / 6;
        model_config c;
        mixed_config(&c, false, 8);
        lora_settings ls = {.r = 4, .alpha = 8.0f, .dropout = mode == LORA_DROPOUT ? 0.2f : 0.0f,
                            .use_dora = mode == DORA};
        const char *all[] = {"all-linear"};
        ct_error err = {{0}};
        CHECK(lora_parse_targets(&ls, all, 1, &err) == 0);
        const model_layout nf4 = {.precision = p, .nf4_base = true}, plain = {.precision = p};
        model q, r;
        if (model_create_as(&q, &c, &ls, kernels_cpu(), &nf4, &err) ||
            model_create_as(&r, &c, &ls, kernels_cpu(), &plain, &err)) {
            CHECK_MSG(false, "%s", err.msg);
            return;
        }
        q.activation_checkpointing = r.activation_checkpointing = checkpointing;
        CHECK(model_reserve(&q, 2, 8, &err) == 0 && model_reserve(&r, 2, 8, &err) == 0);
        fill_weights(&q, 11);
        fill_weights(&r, 11);
        size_t quantized = 0;
        int differs = 0;
        for (int i = 0; i < q.n_params; i++) {
            model_param *pq = &q.params[i], *pr = &r.params[i];
            if (!pq->quantized) continue;
            quantized += pq->numel;
            float *back = malloc(pq->numel * sizeof(float)), *orig = malloc(pq->numel * sizeof(float));
            model_param_download(&q, pq, back);
            model_param_download(&r, pr, orig);
            differs += memcmp(back, orig, pq->numel * sizeof(float)) != 0;
            model_param_upload(&r, pr, back);
            free(back), free(orig);
        }
        model_weights_changed(&r, false);
        /* every Linear of both layers (7680 values each); 4 bits and an fp32 absmax per 64 */
        CHECK_MSG(quantized == 2 * 7680 && differs == 14 && q.nf4_bytes == quantized * 9 / 16,
                  "%zu values quantized, %d weights changed by it, %zu bytes", quantized, differs, q.nf4_bytes);
        CHECK(q.half_numel == r.half_numel); /* two layers: the two buffers hold what r's copies do */
        for (int round = 0; round < 2; round++) {
            if (round == 1) { /* the adapters change, as after an optimizer step */
                for (int i = 0; i < q.n_params; i++) {
                    if (!q.params[i].is_lora) continue;
                    float *host = malloc(q.params[i].numel * sizeof(float));
                    for (size_t j = 0; j < q.params[i].numel; j++) host[j] = 0.01f * (float)((j * 7 + i) % 13) - 0.06f;
                    model_param_upload(&q, &q.params[i], host);
                    model_param_upload(&r, &r.params[i], host);
                    free(host);
                }
                model_weights_changed(&q, true);
                model_weights_changed(&r, true);
            }
            double loss[2][2];
            long n = 0;
            model *both[2] = {&q, &r};
            for (int w = 0; w < 2; w++) {
                model_zero_grads(both[w]);
                CHECK(model_step(both[w], &batch, true, 0.5f, 7, &loss[w][0], &n, &err) == 0);
                CHECK(model_step(both[w], &batch, true, 0.5f, 8, &loss[w][1], &n, &err) == 0);
            }
            float *gq = malloc(q.grad_numel * sizeof(float)), *gr = malloc(r.grad_numel * sizeof(float));
            q.k->download(gq, q.grad_arena, q.grad_numel * sizeof(float));
            r.k->download(gr, r.grad_arena, r.grad_numel * sizeof(float));
            CHECK_MSG(q.grad_numel == r.grad_numel && !memcmp(gq, gr, q.grad_numel * sizeof(float)) &&
                          !memcmp(loss[0], loss[1], sizeof loss[0]),
                      "nf4 %s %s%s round %d: losses %.9g %.9g vs %.9g %.9g, gradients %s", precision_name(p),
                      mode_names[mode], checkpointing ? " checkpointed" : "", round, loss[0][0], loss[0][1],
                      loss[1][0], loss[1][1],
                      q.grad_numel == r.grad_numel && !memcmp(gq, gr, q.grad_numel * sizeof(float)) ? "equal" : "differ");
            free(gq), free(gr);
        }
        CHECK(model_set_precision(&q, MODEL_FP32, &err) == -1 && strstr(err.msg, "4-bit"));
        model_free(&q);
        model_free(&r);
    }
    model_config c;
    mixed_config(&c, false, 8);
    lora_settings ls = {.r = 4, .alpha = 8.0f};
    const char *all[] = {"all-linear"};
    ct_error err = {{0}};
    CHECK(lora_parse_targets(&ls, all, 1, &err) == 0);
    const model_shard shard = {0, 10};
    const model_layout no_mixed = {.precision = MODEL_FP32, .nf4_base = true},
                       gathered = {.precision = MODEL_BF16_MIXED, .shard = &shard, .gather_layers = true, .nf4_base = true},
                       fine = {.precision = MODEL_BF16_MIXED, .nf4_base = true};
    model m;
    CHECK(model_create_as(&m, &c, &ls, kernels_cpu(), &no_mixed, &err) == -1 && strstr(err.msg, "4-bit"));
    CHECK(model_create_as(&m, &c, NULL, kernels_cpu(), &fine, &err) == -1 && strstr(err.msg, "4-bit"));
    CHECK(model_create_as(&m, &c, &ls, kernels_cpu(), &gathered, &err) == -1 && strstr(err.msg, "4-bit"));
}

/* Generation through the KV cache (model_cache_append: a prompt, then one token at a time)
 * on backend k against the CPU's model_last_logits on each prefix, in every precision, for
 * full fine-tuning, fused LoRA and DoRA. The prompt's logits are the same bits as k's own
 * model_last_logits; later tokens read the cache (16-bit keys and values in mixed precision,
 * what attention reads without it) and differ only by rounding: one token's GEMMs instead of
 * the sequence's, another order of the softmax sums. (The CPU is the reference because a GPU's
 * full forward rounds attention's P to 16 bits and the cache's attention does not: 1-2% apart
 * in logits on this model with large logits.) Measured: on the CPU fp32 <= 1.4e-6, bf16-mixed
 * 0 (the same bits here), fp16-mixed <= 7e-4, where a GEMM input rounds to the neighbouring
 * 16-bit value; on the emulated CUDA backend (its own GEMM orders and the prompt's rounded P
 * in the cached keys and values) fp32 <= 8.3e-7, bf16 <= 7.8e-3, fp16 <= 9.2e-4. Bounds: 1e-5,
 * 2e-2 and 5e-3 (bf16 has 3 bits fewer than fp16). */
static void test_cached_generation(const kernels *k) {
    const model_precision precisions[] = {MODEL_FP32, MODEL_BF16_MIXED, MODEL_FP16_MIXED};
    const run_mode modes[] = {FULL, LORA_FUSED, DORA};
    const int seq = 16, prompt = 5;
    for (int pi = 0; pi < 3; pi++)
        for (int mi = 0; mi < 3; mi++) {
            model_config c;
            mixed_config(&c, false, 8);
            lora_settings ls = {.r = 4, .alpha = 8.0f, .use_dora = modes[mi] == DORA};
            const char *all[] = {"all-linear"};
            ct_error err = {{0}};
            CHECK(lora_parse_targets(&ls, all, 1, &err) == 0);
            model m, ref;
            CHECK_MSG(model_create(&m, &c, modes[mi] == FULL ? NULL : &ls, k, &err) == 0, "%s", err.msg);
            CHECK_MSG(model_create(&ref, &c, modes[mi] == FULL ? NULL : &ls, kernels_cpu(), &err) == 0, "%s", err.msg);
            CHECK_MSG(model_set_precision(&m, precisions[pi], &err) == 0, "%s", err.msg);
            CHECK_MSG(model_set_precision(&ref, precisions[pi], &err) == 0, "%s", err.msg);
            fill_weights(&m, 11 + (uint64_t)mi);
            fill_weights(&ref, 11 + (uint64_t)mi);
            CHECK_MSG(model_cache_reserve(&m, seq, &err) == 0, "%s", err.msg);
            float cached[37], full[37];
            CHECK_MSG(model_cache_append(&m, ids, prompt, cached, &err) == 0, "%s", err.msg);
            CHECK_MSG(model_last_logits(&m, ids, prompt, full, &err) == 0, "%s", err.msg);
            CHECK_MSG(memcmp(cached, full, sizeof cached) == 0, "%s %s (%s): cached prompt differs",
                      precision_name(precisions[pi]), mode_names[modes[mi]], k->name);
            double worst = 0;
            for (int n = prompt + 1; n <= seq; n++) {
                CHECK_MSG(model_cache_append(&m, ids + n - 1, 1, cached, &err) == 0, "%s", err.msg);
                CHECK_MSG(model_last_logits(&ref, ids, n, full, &err) == 0, "%s", err.msg);
                const double e = rel_error(cached, full, 37);
                if (e > worst) worst = e;
            }
            const double bound = precisions[pi] == MODEL_FP32 ? 1e-5 : precisions[pi] == MODEL_BF16_MIXED ? 2e-2 : 5e-3;
            printf("cached generation %s %s (%s): worst relative error %.3g\n", precision_name(precisions[pi]),
                   mode_names[modes[mi]], k->name, worst);
            CHECK_MSG(worst < bound, "%s %s (%s): cached logits relative error %.3g", precision_name(precisions[pi]),
                      mode_names[modes[mi]], k->name, worst);
            /* Truncated to a prefix, the cache continues from there: the last 8 tokens again,
             * fed in one append of several rows after the kept ones. */
            model_cache_truncate(&m, seq + 5); /* more than it holds: nothing changes */
            model_cache_truncate(&m, seq - 8);
            CHECK_MSG(model_cache_append(&m, ids + seq - 8, 8, cached, &err) == 0, "%s", err.msg);
            CHECK_MSG(model_last_logits(&ref, ids, seq, full, &err) == 0, "%s", err.msg);
            CHECK_MSG(rel_error(cached, full, 37) < bound, "%s %s (%s): after truncation, relative error %.3g",
                      precision_name(precisions[pi]), mode_names[modes[mi]], k->name, rel_error(cached, full, 37));
            /* New weights after model_cache_reset: the next sequence follows them (DoRA's
             * column scales, kept through a sequence, are recomputed at its first append). */
            fill_weights(&m, 29 + (uint64_t)mi);
            fill_weights(&ref, 29 + (uint64_t)mi);
            model_cache_reset(&m);
            CHECK_MSG(model_cache_append(&m, ids, prompt, cached, &err) == 0, "%s", err.msg);
            worst = 0;
            for (int n = prompt + 1; n <= seq; n++) {
                CHECK_MSG(model_cache_append(&m, ids + n - 1, 1, cached, &err) == 0, "%s", err.msg);
                CHECK_MSG(model_last_logits(&ref, ids, n, full, &err) == 0, "%s", err.msg);
                const double e = rel_error(cached, full, 37);
                if (e > worst) worst = e;
            }
            CHECK_MSG(worst < bound, "%s %s (%s): after new weights and a reset, cached logits relative error %.3g",
                      precision_name(precisions[pi]), mode_names[modes[mi]], k->name, worst);
            model_free(&m);
            model_free(&ref);
        }
}

int main(void) {
    test_create_in(); /* first: it reads the process's memory peak */
    for (int qk = 1; qk >= 0; qk--) {
        with_qk_norm = qk;
        printf("-- q/k norms %s\n", qk ? "on" : "off");
        test_against_fp32();
        test_fused_vs_unfused();
        test_fused_gemm_count();
        test_lazy_zeroing(kernels_cpu());
        test_grad_buckets(kernels_cpu(), false);
    }
    test_weight_copies();
    test_partial_refresh();
    test_nf4_base();
    test_cached_generation(kernels_cpu());
    ct_error err;
    const kernels *cuda = NULL;
    if (kernels_cuda(&cuda, &err) == 0) {
        test_cuda_against_cpu(cuda);
        test_cached_generation(cuda);
        for (int qk = 1; qk >= 0; qk--) {
            with_qk_norm = qk;
            test_lazy_zeroing(cuda);
        }
        test_grad_buckets(cuda, true); /* the layers' hand-over is the backend's copies: bf16, q/k norms off */
    }
    else printf("CUDA pass skipped: %s\n", err.msg);
    return check_summary("test_model_mixed");
}
