/* test_model: the Llama-family model against transformers/peft references (fixtures made by
 * scripts/gen_model_fixtures.py), finite differences, config.json parsing and writing,
 * parameter lists, initialisation and determinism. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "peft/lora.h"
#include "tests/check.h"
#include "train/model.h"
#include "train/safetensors.h"

static const kernels *K;

/* ---------------------------------------------------------------- helpers */

static double rel_error(const float *a, const float *b, size_t n) {
    double diff = 0.0, ref = 0.0;
    for (size_t i = 0; i < n; i++) {
        diff += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        ref += (double)b[i] * b[i];
    }
    return ref > 0 ? sqrt(diff / ref) : sqrt(diff);
}

static float *read_tensor(const st_file *f, const char *name, size_t *numel) {
    const st_tensor *t = st_find(f, name);
    if (!t) return NULL;
    float *out = malloc(t->numel * sizeof(float) + 1);
    ct_error err;
    if (st_read_f32(t, out, &err)) {
        fprintf(stderr, "%s: %s\n", name, err.msg);
        free(out);
        return NULL;
    }
    if (numel) *numel = t->numel;
    return out;
}

static int32_t *read_i32(const st_file *f, const char *name, size_t *numel) {
    const st_tensor *t = st_find(f, name);
    if (!t || t->dtype != ST_I32) return NULL;
    int32_t *out = malloc(t->numel * sizeof(int32_t));
    memcpy(out, t->data, t->numel * sizeof(int32_t));
    *numel = t->numel;
    return out;
}

static float *param_grad_host(model *m, const model_param *p) {
    float *host = malloc(p->numel * sizeof(float));
    m->k->download(host, p->grad, p->numel * sizeof(float));
    return host;
}

static void upload_random(model *m, model_param *p, uint64_t *state, float scale) {
    float *host = malloc(p->numel * sizeof(float));
    for (size_t i = 0; i < p->numel; i++) {
        *state = *state * 6364136223846793005ull + 1442695040888963407ull;
        host[i] = scale * ((float)(*state >> 40) / 16777216.0f * 2.0f - 1.0f);
    }
    m->k->upload(p->data, host, p->numel * sizeof(float));
    free(host);
}

static float get_value(model *m, const model_param *p, size_t i) {
    float v;
    m->k->download(&v, p->data + i, sizeof v);
    return v;
}

static void set_value(model *m, model_param *p, size_t i, float v) { m->k->upload(p->data + i, &v, sizeof v); }

/* ---------------------------------------------------------------- transformers references */

typedef struct reference {
    st_file file;
    int32_t *ids, *targets;
    size_t n_tokens;
    float *logits, *loss;
    size_t n_logits;
} reference;

static int reference_open(reference *r, const char *path) {
    ct_error err;
    memset(r, 0, sizeof *r);
    if (st_open(&r->file, path, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    size_t n_targets = 0;
    r->ids = read_i32(&r->file, "input_ids", &r->n_tokens);
    r->targets = read_i32(&r->file, "targets", &n_targets);
    r->logits = read_tensor(&r->file, "logits", &r->n_logits);
    r->loss = read_tensor(&r->file, "loss", NULL);
    return r->ids && r->targets && r->logits && r->loss && n_targets == r->n_tokens ? 0 : -1;
}

static void reference_close(reference *r) {
    free(r->ids);
    free(r->targets);
    free(r->logits);
    free(r->loss);
    st_close(&r->file);
}

/* Loss and every trainable gradient of one step (adapter dropout from seed) against the
 * reference file. */
static void compare_step(model *m, reference *r, const char *label, uint64_t seed) {
    const int batch = 2, seq = (int)r->n_tokens / 2;
    model_batch b = {.input_ids = r->ids, .targets = r->targets, .batch = batch, .seq = seq};
    ct_error err;
    double loss = 0;
    long count = 0;
    model_zero_grads(m);
    CHECK_MSG(model_step(m, &b, true, 1.0f, seed, &loss, &count, &err) == 0, "%s: %s", label, err.msg);
    long expected_count = 0;
    for (size_t t = 0; t < r->n_tokens; t++) expected_count += r->targets[t] >= 0;
    CHECK(count == expected_count);
    CHECK_MSG(fabs(loss - r->loss[0]) / fabs(r->loss[0]) < 1e-5, "%s: loss %.8f vs %.8f", label, loss,
              (double)r->loss[0]);
    int compared = 0;
    for (int i = 0; i < m->n_params; i++) {
        model_param *p = &m->params[i];
        if (!p->trainable) {
            CHECK(p->grad == NULL);
            continue;
        }
        char name[256];
        snprintf(name, sizeof name, "grad.%s", p->name);
        size_t n = 0;
        float *want = read_tensor(&r->file, name, &n);
        CHECK_MSG(want && n == p->numel, "%s: reference has no %s", label, name);
        if (!want || n != p->numel) {
            free(want);
            continue;
        }
        float *got = param_grad_host(m, p);
        double e = rel_error(got, want, n);
        CHECK_MSG(e < 1e-4, "%s: %s relative error %.3g", label, p->name, e);
        compared++;
        free(got);
        free(want);
    }
    /* Every gradient in the file belongs to one of our parameters. */
    int in_file = 0;
    for (int i = 0; i < r->file.n_tensors; i++) in_file += strncmp(r->file.tensors[i].name, "grad.", 5) == 0;
    CHECK_MSG(compared == in_file, "%s: compared %d gradients, file has %d", label, compared, in_file);

    /* Forward only: same loss (without dropout, which acts only in training), gradients
     * untouched. */
    float probe_before = 0, probe_after = 0;
    model_param *first = NULL;
    for (int i = 0; i < m->n_params && !first; i++)
        if (m->params[i].trainable) first = &m->params[i];
    m->k->download(&probe_before, first->grad, sizeof(float));
    double loss_eval = 0;
    CHECK(model_step(m, &b, false, 1.0f, 0, &loss_eval, &count, &err) == 0);
    m->k->download(&probe_after, first->grad, sizeof(float));
    CHECK(probe_before == probe_after);
    CHECK_MSG(fabs(loss_eval - loss) <= 1e-6 * fabs(loss) || (m->has_lora && m->lora.dropout > 0.0f),
              "%s: eval loss %.8f vs %.8f", label, loss_eval, loss);
}

/* Logits at every position through model_last_logits on each prefix. */
static void compare_logits(model *m, reference *r, const char *label) {
    const int seq = (int)r->n_tokens / 2, V = m->cfg.vocab_size;
    CHECK((size_t)2 * seq * V == r->n_logits);
    float *logits = malloc((size_t)V * sizeof(float));
    double worst = 0;
    ct_error err;
    for (int b = 0; b < 2; b++) {
        for (int n = 1; n <= seq; n++) {
            CHECK_MSG(model_last_logits(m, r->ids + (size_t)b * seq, n, logits, &err) == 0, "%s", err.msg);
            double e = rel_error(logits, r->logits + ((size_t)b * seq + n - 1) * V, (size_t)V);
            if (e > worst) worst = e;
        }
    }
    CHECK_MSG(worst < 1e-4, "%s: logits relative error %.3g", label, worst);
    /* Every position in one forward pass, and from a later first position. */
    float *all = malloc((size_t)seq * V * sizeof(float));
    for (int b = 0; b < 2; b++) {
        const int first = b ? seq / 2 : 0;
        CHECK_MSG(model_logits(m, r->ids + (size_t)b * seq, seq, first, all, &err) == 0, "%s", err.msg);
        double e = rel_error(all, r->logits + ((size_t)b * seq + first) * V, (size_t)(seq - first) * V);
        CHECK_MSG(e < 1e-4, "%s: model_logits row %d on: relative error %.3g", label, first, e);
    }
    CHECK(model_logits(m, r->ids, seq, seq, all, &err) == -1);
    CHECK_CONTAINS(err.msg, "first position");
    free(all);
    free(logits);
}

/* The same logits through the KV cache: a prompt of `prompt` tokens, then one token at a
 * time. The prompt's forward is model_last_logits' (the same bits); the later tokens read
 * the cache and must match transformers as closely as the full forward does. */
static void compare_cached_logits(model *m, reference *r, const char *label) {
    const int seq = (int)r->n_tokens / 2, V = m->cfg.vocab_size;
    float *logits = malloc((size_t)V * sizeof(float)), *full = malloc((size_t)V * sizeof(float));
    ct_error err;
    double worst = 0;
    CHECK_MSG(model_cache_reserve(m, seq, &err) == 0, "%s", err.msg);
    for (int b = 0; b < 2; b++) {
        const int32_t *ids = r->ids + (size_t)b * seq;
        const int prompt = b ? seq / 3 : 1;
        model_cache_reset(m);
        CHECK_MSG(model_cache_append(m, ids, prompt, logits, &err) == 0, "%s", err.msg);
        CHECK(model_last_logits(m, ids, prompt, full, &err) == 0);
        CHECK_MSG(memcmp(logits, full, (size_t)V * sizeof(float)) == 0, "%s: cached prompt of %d differs", label,
                  prompt);
        for (int n = prompt + 1; n <= seq; n++) {
            CHECK_MSG(model_cache_append(m, ids + n - 1, 1, logits, &err) == 0, "%s", err.msg);
            double e = rel_error(logits, r->logits + ((size_t)b * seq + n - 1) * V, (size_t)V);
            if (e > worst) worst = e;
        }
        /* full: nothing more fits */
        CHECK(model_cache_append(m, ids, 1, logits, &err) == -1);
        CHECK_CONTAINS(err.msg, "do not fit the KV cache");
    }
    CHECK_MSG(worst < 1e-4, "%s: cached logits relative error %.3g", label, worst);
    model_cache_release(m);
    free(full);
    free(logits);
}

/* Parameter order = transformers' named_parameters order (recorded by the generator). */
static void compare_order(model *m, reference *r, const char *label) {
    const char *order = st_metadata(&r->file, "param_order");
    CHECK_MSG(order != NULL, "%s: no param_order metadata", label);
    if (!order) return;
    char *list = strdup(order), *save = NULL;
    int i = 0;
    bool same = true;
    for (char *name = strtok_r(list, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
        if (i >= m->n_params || strcmp(m->params[i].name, name) != 0) {
            fprintf(stderr, "%s: parameter %d is %s, transformers has %s\n", label, i,
                    i < m->n_params ? m->params[i].name : "(none)", name);
            same = false;
            break;
        }
        i++;
    }
    CHECK_MSG(same && i == m->n_params, "%s: parameter order differs from transformers", label);
    free(list);
}

static void test_fixture(const char *name) {
    char dir[1024], path[1200];
    check_source_path("tests/fixtures/model", dir, sizeof dir);
    strncat(dir, "/", sizeof dir - strlen(dir) - 1);
    strncat(dir, name, sizeof dir - strlen(dir) - 1);
    snprintf(path, sizeof path, "%s/config.json", dir);
    model_config cfg;
    ct_error err;
    CHECK_MSG(model_config_load(&cfg, path, &err) == 0, "%s", err.msg);
    model m;
    CHECK_MSG(model_create(&m, &cfg, NULL, K, &err) == 0, "%s", err.msg);
    CHECK_MSG(model_load_weights(&m, dir, &err) == 0, "%s", err.msg);
    CHECK_MSG(model_reserve(&m, 2, 12, &err) == 0, "%s", err.msg);
    reference r;
    snprintf(path, sizeof path, "%s/reference.safetensors", dir);
    CHECK_MSG(reference_open(&r, path) == 0, "cannot read %s", path);
    compare_order(&m, &r, name);
    compare_step(&m, &r, name, 0);
    compare_logits(&m, &r, name);
    compare_cached_logits(&m, &r, name);
    reference_close(&r);
    model_free(&m);
    model_config_free(&cfg);
}

/* The peft adapter of llama_gqa (r 4, alpha 8, all linears, dropout 0, B non-zero). */
static void test_lora_fixture(void) {
    char dir[1024], path[1200];
    check_source_path("tests/fixtures/model/llama_gqa", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    model_config cfg;
    ct_error err;
    CHECK(model_config_load(&cfg, path, &err) == 0);
    lora_settings lora = {.r = 4, .alpha = 8.0f, .dropout = 0.0f};
    const char *all[] = {"all-linear"};
    CHECK(lora_parse_targets(&lora, all, 1, &err) == 0);
    model m;
    CHECK_MSG(model_create(&m, &cfg, &lora, K, &err) == 0, "%s", err.msg);
    CHECK(model_load_weights(&m, dir, &err) == 0);
    CHECK(model_reserve(&m, 2, 12, &err) == 0);

    st_file adapter;
    snprintf(path, sizeof path, "%s/lora/adapter_model.safetensors", dir);
    CHECK_MSG(st_open(&adapter, path, &err) == 0, "%s", err.msg);
    int loaded = 0;
    for (int i = 0; i < m.n_params; i++) {
        model_param *p = &m.params[i];
        if (!p->is_lora) continue;
        char key[256];
        snprintf(key, sizeof key, "base_model.model.%s", p->name);
        size_t n = 0;
        float *host = read_tensor(&adapter, key, &n);
        CHECK_MSG(host && n == p->numel, "adapter has no %s", key);
        if (host && n == p->numel) {
            K->upload(p->data, host, n * sizeof(float));
            loaded++;
        }
        free(host);
    }
    CHECK(loaded == adapter.n_tensors && loaded == 2 * 7 * cfg.num_hidden_layers);
    st_close(&adapter);

    reference r;
    snprintf(path, sizeof path, "%s/lora/reference.safetensors", dir);
    CHECK_MSG(reference_open(&r, path) == 0, "cannot read %s", path);
    compare_order(&m, &r, "llama_gqa/lora");
    compare_step(&m, &r, "llama_gqa/lora", 0);
    compare_logits(&m, &r, "llama_gqa/lora");
    compare_cached_logits(&m, &r, "llama_gqa/lora");
    reference_close(&r);
    CHECK(model_count_params(&m, true) == (size_t)cfg.num_hidden_layers *
          (4 * (32 + 32) + 4 * (32 + 16) * 2 + 4 * (32 + 32) + 4 * (32 + 48) * 3));
    model_free(&m);
    model_config_free(&cfg);
}

/* peft's DoRA adapter of llama_gqa (use_dora, r 4, alpha 8, all linears, B non-zero, each
 * magnitude away from its row's norm), read with lora_read_config and lora_load_adapter: one
 * step without dropout (loss, every adapter gradient, logits) and one in training with
 * dropout 0.25 under ctune's masks (seed 7), as peft computes them (gen_model_fixtures.py). */
static void test_dora_fixture(void) {
    char dir[1024], adapter[1100], path[1200];
    check_source_path("tests/fixtures/model/llama_gqa", dir, sizeof dir);
    snprintf(adapter, sizeof adapter, "%s/dora", dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    model_config cfg;
    ct_error err;
    CHECK(model_config_load(&cfg, path, &err) == 0);
    lora_settings lora;
    CHECK_MSG(lora_read_config(adapter, &lora, &err) == 0, "%s", err.msg);
    CHECK(lora.use_dora && lora.r == 4 && lora.alpha == 8.0f && lora.dropout == 0.25f);
    for (int dropout = 0; dropout < 2; dropout++) {
        lora_settings ls = lora;
        if (!dropout) ls.dropout = 0.0f;
        model m;
        CHECK_MSG(model_create(&m, &cfg, &ls, K, &err) == 0, "%s", err.msg);
        CHECK(model_load_weights(&m, dir, &err) == 0);
        CHECK_MSG(lora_load_adapter(&m, adapter, &err) == 0, "%s", err.msg);
        CHECK(model_reserve(&m, 2, 12, &err) == 0);
        CHECK(model_count_params(&m, true) ==
              (size_t)cfg.num_hidden_layers * (4 * (32 + 32) + 4 * (32 + 16) * 2 + 4 * (32 + 32) +
                                               4 * (32 + 48) * 3 + 32 + 16 + 16 + 32 + 48 + 48 + 32));
        reference r;
        snprintf(path, sizeof path, "%s/%s", adapter, dropout ? "reference_dropout.safetensors" : "reference.safetensors");
        CHECK_MSG(reference_open(&r, path) == 0, "cannot read %s", path);
        const char *label = dropout ? "llama_gqa/dora+dropout" : "llama_gqa/dora";
        compare_order(&m, &r, label);
        compare_step(&m, &r, label, dropout ? 7 : 0);
        if (!dropout) compare_logits(&m, &r, label);
        if (!dropout) compare_cached_logits(&m, &r, label);
        reference_close(&r);
        model_free(&m);
    }
    model_config_free(&cfg);
}

/* ---------------------------------------------------------------- finite differences */

/* Every optional path on: biases everywhere, qk norms, llama3 RoPE, GQA, head_dim != H/nh. */
static void small_config(model_config *c) {
    model_config_preset(c, "tiny", NULL);
    c->vocab_size = 29;
    c->hidden_size = 16;
    c->intermediate_size = 24;
    c->num_hidden_layers = 2;
    c->num_attention_heads = 4;
    c->num_key_value_heads = 2;
    c->head_dim = 6;
    c->attention_bias = c->o_proj_bias = c->mlp_bias = c->qk_norm = true;
    c->tie_word_embeddings = false;
    c->rope_scaling = ROPE_SCALING_LLAMA3;
    c->rope_factor = 4.0;
    c->rope_low_freq_factor = 1.0;
    c->rope_high_freq_factor = 4.0;
    c->rope_original_max_position_embeddings = 16;
    c->pad_token_id = c->bos_token_id = -1;
    c->n_eos = 0;
}

static void randomize_model(model *m, uint64_t seed) {
    uint64_t state = seed;
    for (int i = 0; i < m->n_params; i++) {
        model_param *p = &m->params[i];
        bool norm = p->ndim == 1 && strstr(p->name, "norm");
        upload_random(m, p, &state, norm ? 0.3f : 0.5f);
        if (norm) { /* around 1 */
            float *host = malloc(p->numel * sizeof(float));
            K->download(host, p->data, p->numel * sizeof(float));
            for (size_t j = 0; j < p->numel; j++) host[j] += 1.0f;
            K->upload(p->data, host, p->numel * sizeof(float));
            free(host);
        }
    }
}

/* Two packed documents in row 0, one in row 1; some targets masked. */
static const int32_t fd_ids[14] = {3, 17, 8, 1, 28, 5, 12, 9, 0, 22, 14, 6, 19, 2};
static const int32_t fd_targets[14] = {17, 8, -1, 28, 5, 12, 7, -1, 22, 14, 6, 19, 2, 11};
static const int32_t fd_positions[14] = {0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6};
static const int32_t fd_docs[14] = {0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0};

static double loss_of(model *m, const model_batch *b, uint64_t seed) {
    double loss = 0;
    long count = 0;
    ct_error err;
    /* backward with a zero scale: the training forward (LoRA dropout on), no gradient. */
    if (model_step(m, b, true, 0.0f, seed, &loss, &count, &err)) fprintf(stderr, "%s\n", err.msg);
    return loss;
}

static void finite_differences(model *m, const model_batch *b, uint64_t seed, const char *label) {
    ct_error err;
    double loss = 0;
    long count = 0;
    model_zero_grads(m);
    CHECK_MSG(model_step(m, b, true, 1.0f, seed, &loss, &count, &err) == 0, "%s", err.msg);
    const float h = 4e-3f;
    int checked = 0, bad = 0;
    uint64_t pick = 99;
    for (int i = 0; i < m->n_params; i++) {
        model_param *p = &m->params[i];
        if (!p->trainable) continue;
        float *g = param_grad_host(m, p);
        size_t idx[2] = {0, 0};
        for (size_t j = 1; j < p->numel; j++)
            if (fabsf(g[j]) > fabsf(g[idx[0]])) idx[0] = j;
        pick = pick * 6364136223846793005ull + 1442695040888963407ull;
        idx[1] = (size_t)(pick >> 33) % p->numel;
        for (int s = 0; s < 2; s++) {
            float orig = get_value(m, p, idx[s]);
            set_value(m, p, idx[s], orig + h);
            double plus = loss_of(m, b, seed);
            set_value(m, p, idx[s], orig - h);
            double minus = loss_of(m, b, seed);
            set_value(m, p, idx[s], orig);
            double fd = (plus - minus) / (2.0 * h), an = g[idx[s]];
            checked++;
            if (fabs(fd - an) > 2e-3 + 2e-2 * fabs(an)) {
                bad++;
                fprintf(stderr, "%s: %s[%zu]: analytic %.6g, finite difference %.6g\n", label, p->name,
                        idx[s], an, fd);
            }
        }
        free(g);
    }
    CHECK_MSG(bad == 0, "%s: %d of %d gradient entries disagree with finite differences", label, bad, checked);
    CHECK(checked > 20);
}

static void test_finite_differences(void) {
    model_config c;
    small_config(&c);
    ct_error err;
    model_batch b = {.input_ids = fd_ids, .targets = fd_targets, .positions = fd_positions,
                     .doc_ids = fd_docs, .batch = 2, .seq = 7};

    model full;
    CHECK_MSG(model_create(&full, &c, NULL, K, &err) == 0, "%s", err.msg);
    CHECK(model_reserve(&full, 2, 7, &err) == 0);
    randomize_model(&full, 5);
    finite_differences(&full, &b, 0, "full");
    model_free(&full);

    lora_settings lora = {.r = 2, .alpha = 3.0f, .dropout = 0.25f, .use_rslora = true};
    const char *all[] = {"all-linear"};
    lora_parse_targets(&lora, all, 1, &err);
    model lm;
    CHECK_MSG(model_create(&lm, &c, &lora, K, &err) == 0, "%s", err.msg);
    CHECK(model_reserve(&lm, 2, 7, &err) == 0);
    randomize_model(&lm, 6);
    finite_differences(&lm, &b, 1234, "lora+dropout");

    /* Dropout acts in the training forward only, and follows its seed. */
    double eval = 0;
    long count = 0;
    CHECK(model_step(&lm, &b, false, 1.0f, 1234, &eval, &count, &err) == 0);
    double train_a = loss_of(&lm, &b, 1234), train_b = loss_of(&lm, &b, 1234), train_c = loss_of(&lm, &b, 77);
    CHECK(train_a == train_b);
    CHECK(train_a != eval);
    CHECK(train_a != train_c);
    model_free(&lm);
}

/* ---------------------------------------------------------------- determinism, accumulation */

/* LoRA with dropout on three of the seven projections: the adapters of the accumulation
 * tests. */
static lora_settings dropout_lora(void) {
    ct_error err;
    lora_settings lora = {.r = 3, .alpha = 6.0f, .dropout = 0.1f};
    const char *targets[] = {"q_proj", "v_proj", "down_proj"};
    CHECK(lora_parse_targets(&lora, targets, 3, &err) == 0);
    return lora;
}

static void test_determinism(void) {
    model_config c;
    small_config(&c);
    ct_error err;
    lora_settings lora = dropout_lora();
    model_batch b = {.input_ids = fd_ids, .targets = fd_targets, .batch = 2, .seq = 7};
    for (int variant = 0; variant < 2; variant++) {
        model m;
        CHECK(model_create(&m, &c, variant ? &lora : NULL, K, &err) == 0);
        CHECK(model_reserve(&m, 4, 7, &err) == 0);
        randomize_model(&m, 11);
        float *first = malloc(m.grad_numel * sizeof(float)), *again = malloc(m.grad_numel * sizeof(float));
        double loss1 = 0, loss2 = 0;
        long n1 = 0, n2 = 0;
        model_zero_grads(&m);
        CHECK(model_step(&m, &b, true, 1.0f, 9, &loss1, &n1, &err) == 0);
        K->download(first, m.grad_arena, m.grad_numel * sizeof(float));
        model_zero_grads(&m);
        CHECK(model_step(&m, &b, true, 1.0f, 9, &loss2, &n2, &err) == 0);
        K->download(again, m.grad_arena, m.grad_numel * sizeof(float));
        CHECK(loss1 == loss2 && n1 == n2 && n1 == 12);
        CHECK(memcmp(first, again, m.grad_numel * sizeof(float)) == 0);

        /* A second step accumulates; grad_scale scales. */
        CHECK(model_step(&m, &b, true, 1.0f, 9, &loss2, &n2, &err) == 0);
        K->download(again, m.grad_arena, m.grad_numel * sizeof(float));
        for (size_t i = 0; i < m.grad_numel; i++) first[i] *= 2.0f;
        CHECK(rel_error(again, first, m.grad_numel) < 1e-6);
        model_zero_grads(&m);
        CHECK(model_step(&m, &b, true, 0.25f, 9, &loss2, &n2, &err) == 0);
        K->download(again, m.grad_arena, m.grad_numel * sizeof(float));
        for (size_t i = 0; i < m.grad_numel; i++) first[i] *= 0.125f;
        CHECK(rel_error(again, first, m.grad_numel) < 1e-6);
        CHECK(loss1 == loss2); /* the loss is unscaled */
        free(first);
        free(again);
        model_free(&m);
    }
}

/* Micro-batches whose losses stay on the backend until the step's end (the trainer's way:
 * one download a step): the same loss sums, token counts and gradients, bit for bit, as
 * model_step's, for slots of different sizes; bad slots and oversized batches are refused. */
static void test_queued_losses(void) {
    model_config c;
    small_config(&c);
    ct_error err;
    lora_settings lora = dropout_lora();
    model_batch b[2] = {{.input_ids = fd_ids, .targets = fd_targets, .batch = 2, .seq = 7},
                        {.input_ids = fd_ids + 7, .targets = fd_targets + 7, .batch = 1, .seq = 7}};
    model m;
    CHECK(model_create(&m, &c, &lora, K, &err) == 0);
    CHECK(model_reserve(&m, 4, 7, &err) == 0);
    randomize_model(&m, 23);
    float *want = malloc(m.grad_numel * sizeof(float)), *got = malloc(m.grad_numel * sizeof(float));
    double loss[2] = {0, 0}, queued[2] = {-1, -1};
    long count[2] = {0, 0}, queued_count[2] = {0, 0};
    model_zero_grads(&m);
    for (int a = 0; a < 2; a++) CHECK(model_step(&m, &b[a], true, 0.5f, 40 + a, &loss[a], &count[a], &err) == 0);
    model_settle_grads(&m);
    K->download(want, m.grad_arena, m.grad_numel * sizeof(float));
    CHECK(model_step_queued(&m, &b[0], 0.5f, 40, 0, NULL, &err) == -1); /* no slots yet */
    CHECK(model_reserve_loss_slots(&m, 2, 14, &err) == 0);
    CHECK(model_reserve(&m, 4, 7, &err) == 0); /* redoing the reservation keeps the slots */
    model_zero_grads(&m);
    for (int a = 0; a < 2; a++)
        CHECK_MSG(model_step_queued(&m, &b[a], 0.5f, 40 + a, a, &queued_count[a], &err) == 0, "%s", err.msg);
    /* The double beside the slots (the optimizer's norm) comes back with them, untouched by
     * the slots and touching none. */
    const double mark = -1234.5678;
    double scalar = 0.0;
    K->upload(model_loss_slots_scalar(&m), &mark, sizeof mark);
    model_collect_losses(&m, 2, queued, &scalar);
    CHECK_MSG(scalar == mark, "model_loss_slots_scalar came back as %.17g", scalar);
    model_settle_grads(&m);
    K->download(got, m.grad_arena, m.grad_numel * sizeof(float));
    for (int a = 0; a < 2; a++)
        CHECK_MSG(queued[a] == loss[a] && queued_count[a] == count[a], "slot %d: loss %.17g (%ld tokens), model_step %.17g (%ld)",
                  a, queued[a], queued_count[a], loss[a], count[a]);
    CHECK(loss[0] != loss[1]);
    CHECK(memcmp(want, got, m.grad_numel * sizeof(float)) == 0);
    CHECK(model_step_queued(&m, &b[0], 0.5f, 40, 2, NULL, &err) == -1 && strstr(err.msg, "slot 2"));
    CHECK(model_reserve_loss_slots(&m, 1, 7, &err) == 0);
    CHECK(model_step_queued(&m, &b[0], 0.5f, 40, 0, NULL, &err) == -1 && strstr(err.msg, "exceeds"));
    CHECK(model_reserve_loss_slots(&m, 0, 7, &err) == -1);
    free(want);
    free(got);
    model_free(&m);
}

/* ---------------------------------------------------------------- parameter lists, init */

static void test_param_lists(void) {
    model_config c;
    ct_error err;
    CHECK(model_config_preset(&c, "tiny", &err) == 0);
    CHECK(c.vocab_size == 259 && c.bos_token_id == 256 && c.n_eos == 1 && c.eos_token_ids[0] == 257 &&
          c.pad_token_id == 258 && c.tie_word_embeddings && c.head_dim == 32);
    model m;
    CHECK(model_create(&m, &c, NULL, K, &err) == 0);
    CHECK(m.n_params == 1 + 4 * 9 + 1);
    CHECK(model_find_param(&m, "lm_head.weight") == NULL);
    const size_t H = 128, I = 384, kv = 64, V = 259;
    size_t per_layer = H * H * 2 + kv * H * 2 + I * H * 3 + 2 * H;
    CHECK(model_count_params(&m, false) == V * H + 4 * per_layer + H);
    CHECK(model_count_params(&m, true) == model_count_params(&m, false));
    model_param *embed = model_find_param(&m, "model.embed_tokens.weight");
    model_param *norm = model_find_param(&m, "model.layers.2.input_layernorm.weight");
    model_param *down = model_find_param(&m, "model.layers.3.mlp.down_proj.weight");
    CHECK(embed && embed->decay && embed->trainable && !norm->decay && down->decay);
    CHECK(down->shape[0] == 128 && down->shape[1] == 384);

    /* Initialisation: N(0, initializer_range) weights with a zero padding row, unit norms,
     * determinism. */
    model_init_weights(&m, 42);
    float *e = malloc(embed->numel * sizeof(float));
    K->download(e, embed->data, embed->numel * sizeof(float));
    double sum = 0, sq = 0;
    bool pad_zero = true;
    for (size_t i = 0; i < embed->numel; i++) {
        sum += e[i];
        sq += (double)e[i] * e[i];
        if (i / H == 258 && e[i] != 0.0f) pad_zero = false;
    }
    double mean = sum / embed->numel, sd = sqrt(sq / embed->numel - mean * mean);
    CHECK(pad_zero);
    const double init_std = m.cfg.initializer_range;
    CHECK(init_std > 0.0);
    CHECK_MSG(fabs(mean) < 0.05 * init_std && fabs(sd - init_std * sqrt(258.0 / 259.0)) < 0.03 * init_std,
              "mean %g sd %g for initializer_range %g", mean, sd, init_std);
    CHECK(get_value(&m, norm, 7) == 1.0f);
    float first = get_value(&m, down, 5);
    model_init_weights(&m, 42);
    CHECK(get_value(&m, down, 5) == first);
    model_init_weights(&m, 43);
    CHECK(get_value(&m, down, 5) != first);
    free(e);

    /* LoRA: adapters after their module, only they train, arena prefix = trainable. */
    lora_settings lora = {.r = 8, .alpha = 16.0f};
    const char *targets[] = {"q_proj", "v_proj"};
    CHECK(lora_parse_targets(&lora, targets, 2, &err) == 0);
    model lm;
    CHECK(model_create(&lm, &c, &lora, K, &err) == 0);
    CHECK(lm.n_params == m.n_params + 4 * 4);
    CHECK(strcmp(lm.params[2].name, "model.layers.0.self_attn.q_proj.lora_A.weight") == 0);
    CHECK(strcmp(lm.params[3].name, "model.layers.0.self_attn.q_proj.lora_B.weight") == 0);
    CHECK(lm.params[2].shape[0] == 8 && lm.params[2].shape[1] == 128 && lm.params[3].shape[0] == 128);
    CHECK(model_count_params(&lm, true) == 4 * (8 * 128 + 128 * 8 + 8 * 128 + 64 * 8));
    CHECK(lm.grad_numel == model_count_params(&lm, true));
    bool layout_ok = true;
    for (int i = 0; i < lm.n_params; i++) {
        model_param *p = &lm.params[i];
        if (p->trainable != p->is_lora || (p->grad != NULL) != p->trainable) layout_ok = false;
        if (p->trainable && p->data - lm.weight_arena != p->grad - lm.grad_arena) layout_ok = false;
        /* flat: the gradient's offset in the arena; layer: the number in the name, or -1 */
        if (p->trainable && p->flat != (size_t)(p->grad - lm.grad_arena)) layout_ok = false;
        int layer = -1;
        if (sscanf(p->name, "model.layers.%d.", &layer) != 1) layer = -1;
        if (p->layer != layer) layout_ok = false;
    }
    CHECK(layout_ok);
    model_init_weights(&lm, 42); /* base weights do not depend on the adapters beside them */
    model_param *lm_down = model_find_param(&lm, down->name);
    CHECK(get_value(&lm, lm_down, 5) == first);
    model_param *a = &lm.params[2], *bp = &lm.params[3];
    float *ha = malloc(a->numel * sizeof(float)), *hb = malloc(bp->numel * sizeof(float));
    K->download(ha, a->data, a->numel * sizeof(float));
    K->download(hb, bp->data, bp->numel * sizeof(float));
    float bound = 1.0f / sqrtf(128.0f), amax = 0;
    bool b_zero = true;
    for (size_t i = 0; i < a->numel; i++) amax = fmaxf(amax, fabsf(ha[i]));
    for (size_t i = 0; i < bp->numel; i++) b_zero = b_zero && hb[i] == 0.0f;
    CHECK(amax <= bound && amax > 0.9f * bound && b_zero);
    model_init_lora(&lm, 7);
    CHECK(get_value(&lm, a, 0) != ha[0]);
    CHECK(get_value(&lm, lm_down, 5) == first);
    free(ha);
    free(hb);
    model_free(&lm);
    model_free(&m);

    CHECK(model_config_preset(&c, "bench-20m", &err) == 0);
    CHECK(model_create(&m, &c, NULL, K, &err) == 0);
    CHECK(model_find_param(&m, "lm_head.weight") == NULL); /* tied */
    /* 32000*384 embedding + 6 layers of (2*384*384 + 2*128*384 + 3*384*1024 + 2*384) + 384 */
    CHECK(model_count_params(&m, false) == 32000u * 384 + 6u * (2 * 384 * 384 + 2 * 128 * 384 + 3 * 384 * 1024 + 2 * 384) + 384);
    CHECK(model_activation_bytes(&c, NULL, 2, 64, false, MODEL_FP32) > model_activation_bytes(&c, NULL, 1, 64, false, MODEL_FP32));
    printf("bench-20m: %zu parameters\n", model_count_params(&m, false));
    model_free(&m);
    CHECK(model_config_preset(&c, "huge", &err) == -1);
    CHECK_CONTAINS(err.msg, "huge");
}

/* ---------------------------------------------------------------- errors */

static void test_errors(void) {
    char dir[1024], other[1024], path[1200];
    ct_error err = {{0}};
    check_source_path("tests/fixtures/model/llama_gqa", dir, sizeof dir);
    check_source_path("tests/fixtures/model/llama_tied", other, sizeof other);
    snprintf(path, sizeof path, "%s/config.json", dir);
    model_config c;
    const bool loaded = model_config_load(&c, path, &err) == 0;
    CHECK_MSG(loaded, "%s", err.msg);
    if (!loaded) return; /* the rest needs the fixture */
    model m;
    const bool created = model_create(&m, &c, NULL, K, &err) == 0;
    CHECK_MSG(created, "%s", err.msg);
    if (!created) return;
    CHECK(model_load_weights(&m, other, &err) == -1);
    CHECK_CONTAINS(err.msg, "model.embed_tokens.weight");
    CHECK_CONTAINS(err.msg, "shape");
    CHECK(model_load_weights(&m, "/nonexistent-ctune", &err) == -1);
    CHECK(model_load_weights(&m, dir, &err) == 0);

    /* Generation needs no explicit reservation. */
    float *logits = malloc((size_t)c.vocab_size * sizeof(float));
    int32_t ids[5] = {1, 2, 3, 4, 5};
    CHECK_MSG(model_last_logits(&m, ids, 5, logits, &err) == 0, "%s", err.msg);
    ids[2] = c.vocab_size;
    CHECK(model_last_logits(&m, ids, 5, logits, &err) == -1);
    CHECK_CONTAINS(err.msg, "input_ids[2]");
    /* The KV cache: none before model_cache_reserve; a refused token leaves it as it was. */
    CHECK(model_cache_append(&m, ids, 1, logits, &err) == -1);
    CHECK_CONTAINS(err.msg, "model_cache_reserve first");
    CHECK(model_cache_reserve(&m, 0, &err) == -1);
    CHECK_MSG(model_cache_reserve(&m, 4, &err) == 0, "%s", err.msg);
    CHECK(model_cache_append(&m, ids, 0, logits, &err) == -1);
    CHECK_MSG(model_cache_append(&m, ids, 2, logits, &err) == 0, "%s", err.msg);
    CHECK(model_cache_append(&m, ids + 2, 1, logits, &err) == -1); /* outside the vocabulary */
    CHECK_CONTAINS(err.msg, "input_ids[0]");
    CHECK(model_cache_append(&m, ids + 3, 3, logits, &err) == -1); /* 2 + 3 > 4 */
    CHECK_CONTAINS(err.msg, "2 of 4 held");
    ids[2] = 3;
    float *full = malloc((size_t)c.vocab_size * sizeof(float));
    CHECK_MSG(model_cache_append(&m, ids + 2, 2, logits, &err) == 0, "%s", err.msg);
    CHECK(model_last_logits(&m, ids, 4, full, &err) == 0);
    CHECK_MSG(rel_error(logits, full, (size_t)c.vocab_size) < 1e-5, "cache after refusals: relative error %.3g",
              rel_error(logits, full, (size_t)c.vocab_size));
    free(full);
    free(logits);

    CHECK(model_reserve(&m, 2, 7, &err) == 0);
    int32_t targets[21] = {0};
    model_batch big = {.input_ids = fd_ids, .targets = targets, .batch = 3, .seq = 7};
    int32_t many[21] = {0};
    big.input_ids = many;
    CHECK(model_step(&m, &big, true, 1.0f, 0, NULL, NULL, &err) == -1);
    CHECK_CONTAINS(err.msg, "exceeds");
    model_batch bad = {.input_ids = many, .targets = targets, .batch = 2, .seq = 7};
    targets[4] = 9999;
    CHECK(model_step(&m, &bad, true, 1.0f, 0, NULL, NULL, &err) == -1);
    CHECK_CONTAINS(err.msg, "targets[4]");
    model_free(&m);

    c.attention_bias = true; /* the file has no q_proj.bias */
    CHECK(model_create(&m, &c, NULL, K, &err) == 0);
    CHECK(model_load_weights(&m, dir, &err) == -1);
    CHECK_CONTAINS(err.msg, "model.layers.0.self_attn.q_proj.bias");
    CHECK_CONTAINS(err.msg, "missing");
    model_free(&m);

    lora_settings lora = {.r = 0, .alpha = 1.0f};
    lora.targets[LINEAR_Q] = true;
    CHECK(model_create(&m, &c, &lora, K, &err) == -1);
    CHECK_CONTAINS(err.msg, "r must be");
    model_config_free(&c);

    const char *unknown[] = {"q_proj", "qkv_proj"};
    CHECK(lora_parse_targets(&lora, unknown, 2, &err) == -1);
    CHECK_CONTAINS(err.msg, "qkv_proj");
    lora_settings s = {.r = 8, .alpha = 16.0f};
    CHECK(lora_scaling(&s) == 2.0f);
    s.r = 4;
    s.use_rslora = true;
    CHECK(lora_scaling(&s) == 8.0f);
    CHECK(strcmp(linear_kind_name(LINEAR_GATE), "gate_proj") == 0 && strcmp(linear_kind_block(LINEAR_O), "self_attn") == 0 &&
          strcmp(linear_kind_block(LINEAR_DOWN), "mlp") == 0);
}

/* ---------------------------------------------------------------- activation checkpointing */

/* Recomputing each layer in the backward gives the same loss and the same gradient bits as
 * keeping every layer's activations, for full fine-tuning and for LoRA with dropout (the
 * recomputed forward must redraw the same masks), and DoRA with dropout, on packed rows; and needs
 * less memory. */
static void test_activation_checkpointing(void) {
    model_config c;
    small_config(&c);
    c.num_hidden_layers = 3;
    ct_error err;
    lora_settings lora = {.r = 2, .alpha = 4.0f, .dropout = 0.3f};
    const char *all[] = {"all-linear"};
    CHECK(lora_parse_targets(&lora, all, 1, &err) == 0);
    model_batch b = {.input_ids = fd_ids, .targets = fd_targets, .positions = fd_positions,
                     .doc_ids = fd_docs, .batch = 2, .seq = 7};
    lora_settings dora = lora;
    dora.use_dora = true;
    for (int variant = 0; variant < 3; variant++) { /* full, LoRA, DoRA; with dropout */
        const lora_settings *ls = variant == 2 ? &dora : variant ? &lora : NULL;
        float *grads[2] = {NULL, NULL};
        double loss[2] = {0, 0};
        size_t numel = 0;
        for (int ckpt = 0; ckpt < 2; ckpt++) {
            model m;
            CHECK_MSG(model_create(&m, &c, ls, K, &err) == 0, "%s", err.msg);
            m.activation_checkpointing = ckpt;
            CHECK_MSG(model_reserve(&m, 2, 7, &err) == 0, "%s", err.msg);
            randomize_model(&m, 21);
            model_zero_grads(&m);
            long count = 0;
            /* Two micro-batches: the second recomputes over buffers the first left behind. */
            CHECK(model_step(&m, &b, true, 0.5f, 99, &loss[ckpt], &count, &err) == 0);
            CHECK(model_step(&m, &b, true, 0.5f, 100, &loss[ckpt], &count, &err) == 0);
            numel = m.grad_numel;
            grads[ckpt] = malloc(numel * sizeof(float));
            K->download(grads[ckpt], m.grad_arena, numel * sizeof(float));
            model_free(&m);
        }
        CHECK_MSG(loss[0] == loss[1], "%s: loss %.17g vs %.17g", variant == 2 ? "dora" : variant ? "lora" : "full", loss[0], loss[1]);
        CHECK_MSG(memcmp(grads[0], grads[1], numel * sizeof(float)) == 0,
                  "%s: checkpointed gradients differ (rel %.3g)", variant == 2 ? "dora" : variant ? "lora" : "full",
                  rel_error(grads[1], grads[0], numel));
        double norm = 0;
        for (size_t i = 0; i < numel; i++) norm += (double)grads[0][i] * grads[0][i];
        CHECK(norm > 0);
        free(grads[0]);
        free(grads[1]);
        size_t kept = model_activation_bytes(&c, ls, 8, 64, false, MODEL_FP32);
        size_t recomputed = model_activation_bytes(&c, ls, 8, 64, true, MODEL_FP32);
        CHECK_MSG(recomputed < kept * 2 / 3, "%zu vs %zu bytes", recomputed, kept);
    }
}

int main(void) {
    K = kernels_cpu();
    test_param_lists();
    test_errors();
    test_fixture("llama_gqa");
    test_fixture("llama_tied");
    test_fixture("qwen2");
    test_fixture("qwen3");
    test_lora_fixture();
    test_dora_fixture();
    test_finite_differences();
    test_determinism();
    test_queued_losses();
    test_activation_checkpointing();

    /* The same references on the CUDA backend, where there is one (CI has none). */
    ct_error err;
    const kernels *cuda = NULL;
    if (kernels_cuda(&cuda, &err) == 0) {
        K = cuda;
        test_fixture("llama_gqa");
        test_fixture("llama_tied");
        test_fixture("qwen2");
        test_fixture("qwen3");
        test_lora_fixture();
        test_dora_fixture();
        test_finite_differences();
        test_queued_losses();
        test_activation_checkpointing();
    } else {
        printf("CUDA pass skipped: %s\n", err.msg);
    }
    return check_summary("test_model");
}
