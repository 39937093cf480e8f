/* test_checkpoint: hub folders (LoRA adapter and full model), the PEFT adapter format, the
 * model card, atomic replacement, and metrics.jsonl.
 *
 * Set CTUNE_KEEP_TEST_DIR=1 to keep the folders (the path is printed) for a manual check
 * with scripts/check_hub_folder.py; ctune's last-token logits for ids 1,2,3,4 are then in
 * <dir>/ctune_logits_{full,lora}.txt to compare with the script's output. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "kernels/kernels.h"
#include "peft/lora.h"
#include "tests/check.h"
#include "train/checkpoint.h"
#include "train/fsutil.h"
#include "train/metrics.h"
#include "train/model.h"
#include "train/safetensors.h"

static char root[512];

static const char *at(char *buf, const char *name) {
    snprintf(buf, 1400, "%s/%s", root, name);
    return buf;
}

static bool is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* A tiny Llama with tied embeddings and grouped KV heads (2 query heads, 1 KV head). */
static const char *TINY_CONFIG =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 64,"
    " \"hidden_size\": 16, \"intermediate_size\": 32, \"num_hidden_layers\": 2,"
    " \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"max_position_embeddings\": 64,"
    " \"rms_norm_eps\": 1e-6, \"rope_theta\": 10000.0, \"tie_word_embeddings\": true,"
    " \"hidden_act\": \"silu\", \"bos_token_id\": 1, \"eos_token_id\": 2, %s"
    " \"torch_dtype\": \"bfloat16\"}";

static void make_base(const char *dir, const char *extra) {
    ct_error err;
    make_dirs(dir, &err);
    char path[1500], text[2048];
    snprintf(text, sizeof text, TINY_CONFIG, extra);
    snprintf(path, sizeof path, "%s/config.json", dir);
    check_write_text(path, text);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    check_write_text(path, "{\"version\": \"1.0\", \"model\": {\"type\": \"BPE\"}}\n");
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    check_write_text(path, "{\"bos_token\": \"<s>\"}\n");
}

static void recipe_for(recipe *r, recipe_method method) {
    recipe_defaults(r);
    snprintf(r->name, sizeof r->name, "tiny-%s", method == METHOD_LORA ? "lora" : "full");
    r->method = method;
    snprintf(r->model.path, sizeof r->model.path, "%s/tiny-base", root);
    snprintf(r->data.train, sizeof r->data.train, "data/addition-train.h5");
    if (method == METHOD_LORA) snprintf(r->data.eval, sizeof r->data.eval, "data/addition-eval.h5");
}

static uint64_t lcg(uint64_t *s) {
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 33;
}

/* peft starts B at zero; give it values so that a load that drops it is visible. */
static void randomize_lora_b(model *m, uint64_t seed) {
    for (int i = 0; i < m->n_params; i++) {
        model_param *p = &m->params[i];
        if (!p->is_lora || !strstr(p->name, "lora_B")) continue;
        for (size_t j = 0; j < p->numel; j++) p->data[j] = ((float)(lcg(&seed) % 2001) - 1000.0f) * 1e-4f;
    }
}

static void front_matter(const char *readme, char *out, size_t size) {
    out[0] = '\0';
    if (!readme || strncmp(readme, "---\n", 4) != 0) return;
    const char *end = strstr(readme + 4, "\n---\n");
    if (!end) return;
    size_t n = (size_t)(end - readme - 4) + 1;
    if (n >= size) n = size - 1;
    memcpy(out, readme + 4, n);
    out[n] = '\0';
}

static void save_logits(model *m, const char *name) {
    ct_error err;
    if (model_reserve(m, 1, 8, &err) != 0) return;
    int32_t ids[4] = {1, 2, 3, 4};
    float *logits = malloc((size_t)m->cfg.vocab_size * sizeof(float));
    if (logits && model_last_logits(m, ids, 4, logits, &err) == 0) {
        char path[1500];
        FILE *f = fopen(at(path, name), "w");
        for (int i = 0; f && i < m->cfg.vocab_size; i++) fprintf(f, "%.9g\n", (double)logits[i]);
        if (f) fclose(f);
    }
    free(logits);
}

/* ---- full fine-tune folder ---- */

static void test_full(const kernels *k, bool keep) {
    char base[1500], dir[1500], path[2000];
    make_base(at(base, "tiny-base"), "");
    model_config cfg;
    ct_error err = {{0}};
    snprintf(path, sizeof path, "%s/config.json", base);
    CHECK(model_config_load(&cfg, path, &err) == 0);
    model m;
    CHECK(model_create(&m, &cfg, NULL, k, &err) == 0);
    model_init_weights(&m, 7);
    recipe r;
    recipe_for(&r, METHOD_FULL);
    run_summary s = {.steps = 10, .train_loss = 1.5, .eval_loss = 1.25, .eval_accuracy = NAN,
                     .tokens_seen = 1000, .tokens_per_second = 123.4, .wall_seconds = 8.1,
                     .world_size = 2};
    /* The base folder doubles as the base of the LoRA test below (it has no weights). */
    CHECK_MSG(checkpoint_write_hub(at(dir, "tiny-full"), &m, &r, base, &s, &err) == 0, "%s", err.msg);

    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    st_file file;
    CHECK_MSG(st_open(&file, path, &err) == 0, "%s", err.msg);
    if (file.map) {
        CHECK(file.n_tensors == m.n_params);
        CHECK(st_find(&file, "lm_head.weight") == NULL); /* tied */
        CHECK(st_metadata(&file, "format") && strcmp(st_metadata(&file, "format"), "pt") == 0);
        int same = 0;
        for (int i = 0; i < m.n_params; i++) {
            const st_tensor *t = st_find(&file, m.params[i].name);
            if (t && t->dtype == ST_F32 && t->numel == m.params[i].numel && t->ndim == m.params[i].ndim &&
                memcmp(t->data, m.params[i].data, t->nbytes) == 0)
                same++;
        }
        CHECK_MSG(same == m.n_params, "%d of %d tensors written as they are in the model", same, m.n_params);
        st_close(&file);
    }
    model_config back;
    snprintf(path, sizeof path, "%s/config.json", dir);
    CHECK_MSG(model_config_load(&back, path, &err) == 0, "%s", err.msg);
    CHECK(strcmp(back.torch_dtype, "float32") == 0); /* the base said bfloat16 */
    CHECK(back.tie_word_embeddings && back.num_key_value_heads == 1);
    model_config_free(&back);

    char *copied = check_slurp(strcat(strcpy(path, dir), "/tokenizer.json"), NULL);
    char *original = check_slurp(strcat(strcpy(path, base), "/tokenizer.json"), NULL);
    CHECK(copied && original && strcmp(copied, original) == 0);
    free(copied);
    free(original);
    CHECK(is_file(strcat(strcpy(path, dir), "/tokenizer_config.json")));
    CHECK(!is_file(strcat(strcpy(path, dir), "/generation_config.json"))); /* base has none */
    CHECK(!is_file(strcat(strcpy(path, dir), "/adapter_config.json")));

    char *readme = check_slurp(strcat(strcpy(path, dir), "/README.md"), NULL);
    char fm[8192];
    front_matter(readme, fm, sizeof fm);
    CHECK_CONTAINS(fm, "base_model: \"tiny-base\"\n");
    CHECK_CONTAINS(fm, "library_name: transformers\n");
    CHECK_CONTAINS(fm, "- full-fine-tune\n");
    CHECK_CONTAINS(fm, "type: loss\n");
    CHECK(strstr(fm, "accuracy") == NULL); /* not measured: left out */
    CHECK(readme && strstr(readme, "| world size (ranks) | 2 |"));
    free(readme);

    /* Loading the written folder as a base gives back the same weights. */
    model again;
    CHECK(model_create(&again, &cfg, NULL, k, &err) == 0);
    CHECK_MSG(model_load_weights(&again, dir, &err) == 0, "%s", err.msg);
    CHECK(memcmp(again.weight_arena, m.weight_arena, m.weight_numel * sizeof(float)) == 0);
    model_free(&again);
    if (keep) save_logits(&m, "ctune_logits_full.txt");
    model_free(&m);
    model_config_free(&cfg);
}

/* Sharded fp32 weights (optim/zero.h): without a gather, a full folder is refused (never the
 * 16-bit copies written as fp32) and nothing is left; with one, the folder is the unsharded
 * model's, byte for byte. The "gather" here reads an unsharded twin with the same values. */
typedef struct twin_fetch {
    const model *twin;
    int calls;
} twin_fetch;

static int fetch_from_twin(void *ctx, int index, float *host, ct_error *err) {
    (void)err;
    twin_fetch *t = ctx;
    t->calls++;
    model_param_download(t->twin, &t->twin->params[index], host);
    return 0;
}

static void test_full_sharded(const kernels *k) {
    char base[1500], dir[1500], path[2000], want[2000];
    model_config cfg;
    ct_error err = {{0}};
    snprintf(path, sizeof path, "%s/config.json", at(base, "tiny-base"));
    CHECK(model_config_load(&cfg, path, &err) == 0);
    model plain, sharded;
    const model_shard shard = {5000, 9000}; /* this "rank" keeps a slice of a few weights */
    CHECK(model_create_in(&plain, &cfg, NULL, k, MODEL_BF16_MIXED, NULL, &err) == 0);
    CHECK_MSG(model_create_in(&sharded, &cfg, NULL, k, MODEL_BF16_MIXED, &shard, &err) == 0, "%s", err.msg);
    model_init_weights(&plain, 7);
    int n_sharded = 0;
    for (int i = 0; i < plain.n_params; i++) {
        float *host = malloc(plain.params[i].numel * sizeof *host);
        model_param_download(&plain, &plain.params[i], host);
        model_param_upload(&sharded, &sharded.params[i], host);
        n_sharded += sharded.params[i].sharded;
        free(host);
    }
    CHECK(n_sharded > 0);
    recipe r;
    recipe_for(&r, METHOD_FULL);
    run_summary s = {.steps = 10, .train_loss = 1.5, .eval_loss = NAN, .eval_accuracy = NAN, .world_size = 2};
    CHECK(checkpoint_write_hub(at(dir, "tiny-sharded"), &sharded, &r, base, &s, &err) == -1);
    CHECK_CONTAINS(err.msg, "sharded over the ranks");
    CHECK(!path_exists(dir));
    CHECK_MSG(checkpoint_write_hub(at(want, "tiny-plain"), &plain, &r, base, &s, &err) == 0, "%s", err.msg);
    twin_fetch t = {&plain, 0};
    const checkpoint_values values = {fetch_from_twin, &t};
    CHECK_MSG(checkpoint_write_hub_from(dir, &sharded, &r, base, &s, &values, &err) == 0, "%s", err.msg);
    CHECK_MSG(t.calls == n_sharded, "%d fetches for %d sharded weights", t.calls, n_sharded);
    size_t n1 = 0, n2 = 0;
    char *a = check_slurp(strcat(strcpy(path, want), "/model.safetensors"), &n1);
    char *b = check_slurp(strcat(strcpy(path, dir), "/model.safetensors"), &n2);
    CHECK(a && b && n1 == n2 && memcmp(a, b, n1) == 0);
    free(a), free(b);
    model_free(&plain);
    model_free(&sharded);
    model_config_free(&cfg);
}

/* ---- LoRA adapter folder ---- */

static int make_lora_model(model *m, const model_config *cfg, int r, const kernels *k, ct_error *err) {
    lora_settings lora = {.r = r, .alpha = 8.0f, .dropout = 0.05f, .use_rslora = false};
    const char *targets[] = {"v_proj", "q_proj"};
    if (lora_parse_targets(&lora, targets, 2, err) != 0) return -1;
    return model_create(m, cfg, &lora, k, err);
}

static int lora_count(const model *m) {
    int n = 0;
    for (int i = 0; i < m->n_params; i++) n += m->params[i].is_lora;
    return n;
}

static bool lora_equal(const model *a, const model *b) {
    int n = 0;
    for (int i = 0; i < a->n_params; i++) {
        if (!a->params[i].is_lora) continue;
        if (strcmp(a->params[i].name, b->params[i].name) != 0 ||
            memcmp(a->params[i].data, b->params[i].data, a->params[i].numel * sizeof(float)) != 0)
            return false;
        n++;
    }
    return n > 0;
}

/* Rewrites dir's adapter file without `drop` and, when add is set, with an extra tensor. */
static void rewrite_adapter(const char *dir, const char *out_dir, const char *drop, const char *add) {
    char path[1500];
    ct_error err;
    make_dirs(out_dir, &err);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    char *config = check_slurp(path, NULL);
    snprintf(path, sizeof path, "%s/adapter_config.json", out_dir);
    if (config) check_write_text(path, config);
    free(config);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    st_file file;
    if (st_open(&file, path, &err) != 0) return;
    st_write_tensor tensors[32];
    static const float extra[4] = {1, 2, 3, 4};
    int n = 0;
    for (int i = 0; i < file.n_tensors && n < 31; i++) {
        const st_tensor *t = &file.tensors[i];
        if (drop && strcmp(t->name, drop) == 0) continue;
        tensors[n] = (st_write_tensor){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
        memcpy(tensors[n].shape, t->shape, sizeof t->shape);
        n++;
    }
    if (add) tensors[n++] = (st_write_tensor){.name = add, .dtype = ST_F32, .ndim = 2, .shape = {2, 2}, .data = extra};
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", out_dir);
    st_write(path, tensors, n, NULL, NULL, 0, &err);
    st_close(&file);
}

static void test_lora(const kernels *k, bool keep) {
    char base[1500], dir[1500], path[2000], other[1500];
    at(base, "tiny-full"); /* written by test_full: a complete base model */
    model_config cfg;
    ct_error err = {{0}};
    snprintf(path, sizeof path, "%s/config.json", base);
    CHECK(model_config_load(&cfg, path, &err) == 0);
    model m;
    CHECK_MSG(make_lora_model(&m, &cfg, 4, k, &err) == 0, "%s", err.msg);
    model_init_weights(&m, 7);
    CHECK_MSG(model_load_weights(&m, base, &err) == 0, "%s", err.msg);
    randomize_lora_b(&m, 99);
    recipe r;
    recipe_for(&r, METHOD_LORA);
    run_summary s = {.steps = 20, .train_loss = 0.75, .eval_loss = 0.5, .eval_accuracy = 0.875,
                     .tokens_seen = 5000, .tokens_per_second = 1e4, .wall_seconds = 3.0,
                     .world_size = 1};
    CHECK_MSG(checkpoint_write_hub(at(dir, "tiny-lora"), &m, &r, base, &s, &err) == 0, "%s", err.msg);
    CHECK(!is_file(strcat(strcpy(path, dir), "/model.safetensors")));
    CHECK(!is_file(strcat(strcpy(path, dir), "/tokenizer.json")));

    /* adapter_model.safetensors: peft's keys and [r, in] / [out, r] shapes, fp32. */
    st_file file;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    CHECK_MSG(st_open(&file, path, &err) == 0, "%s", err.msg);
    if (file.map) {
        CHECK(file.n_tensors == 8 && lora_count(&m) == 8); /* 2 layers x {q, v} x {A, B} */
        const st_tensor *qa = st_find(&file, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
        const st_tensor *vb = st_find(&file, "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight");
        CHECK(qa && qa->dtype == ST_F32 && qa->ndim == 2 && qa->shape[0] == 4 && qa->shape[1] == 16);
        CHECK(vb && vb->dtype == ST_F32 && vb->ndim == 2 && vb->shape[0] == 8 && vb->shape[1] == 4);
        CHECK(st_metadata(&file, "format") && strcmp(st_metadata(&file, "format"), "pt") == 0);
        st_close(&file);
    }

    /* adapter_config.json: peft's fields, keys sorted, indent 2. */
    char *config_text = check_slurp(strcat(strcpy(path, dir), "/adapter_config.json"), NULL);
    CHECK(config_text && strncmp(config_text, "{\n  \"alpha_pattern\": {},\n", 25) == 0);
    cJSON *config = config_text ? cJSON_Parse(config_text) : NULL;
    CHECK(config != NULL);
    if (config) {
        const cJSON *item;
        const char *prev = "";
        bool sorted = true;
        cJSON_ArrayForEach(item, config) {
            sorted &= strcmp(prev, item->string) < 0;
            prev = item->string;
        }
        CHECK(sorted);
        CHECK(cJSON_GetObjectItem(config, "r")->valueint == 4);
        CHECK(cJSON_GetObjectItem(config, "lora_alpha")->valuedouble == 8.0);
        CHECK(strstr(config_text, "\"lora_dropout\": 0.05,\n")); /* as Python prints 0.05 */
        CHECK(strcmp(cJSON_GetObjectItem(config, "peft_type")->valuestring, "LORA") == 0);
        CHECK(strcmp(cJSON_GetObjectItem(config, "task_type")->valuestring, "CAUSAL_LM") == 0);
        CHECK(strcmp(cJSON_GetObjectItem(config, "bias")->valuestring, "none") == 0);
        CHECK(strcmp(cJSON_GetObjectItem(config, "base_model_name_or_path")->valuestring, base) == 0);
        CHECK(cJSON_IsFalse(cJSON_GetObjectItem(config, "use_rslora")));
        CHECK(cJSON_IsFalse(cJSON_GetObjectItem(config, "use_dora")));
        CHECK(cJSON_IsFalse(cJSON_GetObjectItem(config, "fan_in_fan_out")));
        CHECK(cJSON_IsTrue(cJSON_GetObjectItem(config, "inference_mode")));
        CHECK(cJSON_IsTrue(cJSON_GetObjectItem(config, "init_lora_weights")));
        CHECK(cJSON_IsNull(cJSON_GetObjectItem(config, "modules_to_save")));
        CHECK(cJSON_IsNull(cJSON_GetObjectItem(config, "revision")));
        const cJSON *targets = cJSON_GetObjectItem(config, "target_modules");
        CHECK(cJSON_GetArraySize(targets) == 2 &&
              strcmp(cJSON_GetArrayItem(targets, 0)->valuestring, "q_proj") == 0 &&
              strcmp(cJSON_GetArrayItem(targets, 1)->valuestring, "v_proj") == 0);
        CHECK(cJSON_GetArraySize(config) == 19);
        cJSON_Delete(config);
    }
    free(config_text);

    /* Round trip: settings, then tensors into a fresh model. */
    lora_settings read = {0};
    CHECK_MSG(lora_read_config(dir, &read, &err) == 0, "%s", err.msg);
    CHECK(read.r == 4 && read.alpha == 8.0f && read.dropout == 0.05f && !read.use_rslora);
    CHECK(read.targets[LINEAR_Q] && read.targets[LINEAR_V] && !read.targets[LINEAR_K] &&
          !read.targets[LINEAR_DOWN]);
    model fresh;
    CHECK(model_create(&fresh, &cfg, &read, k, &err) == 0);
    CHECK(!lora_equal(&fresh, &m));
    CHECK_MSG(lora_load_adapter(&fresh, dir, &err) == 0, "%s", err.msg);
    CHECK(lora_equal(&fresh, &m));

    /* A missing key is an error naming it, and the model is left as it was. */
    const char *dropped = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight";
    rewrite_adapter(dir, at(other, "missing-key"), dropped, NULL);
    model blank;
    CHECK(model_create(&blank, &cfg, &read, k, &err) == 0);
    CHECK(lora_load_adapter(&blank, other, &err) == -1);
    CHECK_CONTAINS(err.msg, dropped);
    CHECK_CONTAINS(err.msg, "missing");
    bool untouched = true;
    for (int i = 0; i < blank.n_params; i++)
        if (blank.params[i].is_lora)
            for (size_t j = 0; j < blank.params[i].numel; j++) untouched &= blank.params[i].data[j] == 0.0f;
    CHECK(untouched);

    /* An unexpected key (e.g. trained on more modules than the model has adapters for). */
    const char *extra = "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight";
    rewrite_adapter(dir, at(other, "extra-key"), NULL, extra);
    CHECK(lora_load_adapter(&blank, other, &err) == -1);
    CHECK_CONTAINS(err.msg, "unexpected");
    CHECK_CONTAINS(err.msg, extra);
    model_free(&blank);

    /* Another rank: the shape check names the key. */
    model r2;
    CHECK(make_lora_model(&r2, &cfg, 2, k, &err) == 0);
    CHECK(lora_load_adapter(&r2, dir, &err) == -1);
    CHECK_CONTAINS(err.msg, "lora_A.weight");
    CHECK_CONTAINS(err.msg, "shape");
    model_free(&r2);

    /* Config errors name the file and the key. */
    make_dirs(at(other, "bad-config"), &err);
    check_write_text(strcat(strcpy(path, other), "/adapter_config.json"),
               "{\"peft_type\": \"LORA\", \"r\": \"four\", \"lora_alpha\": 8, \"target_modules\": [\"q_proj\"]}");
    CHECK(lora_read_config(other, &read, &err) == -1);
    CHECK_CONTAINS(err.msg, "adapter_config.json");
    CHECK_CONTAINS(err.msg, "'r'");
    check_write_text(path, "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8}");
    CHECK(lora_read_config(other, &read, &err) == -1);
    CHECK_CONTAINS(err.msg, "target_modules");
    check_write_text(path, "{\"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"q_proj\"], \"use_dora\": true}");
    lora_settings dora = {0};
    CHECK_MSG(lora_read_config(other, &dora, &err) == 0 && dora.use_dora, "%s", err.msg);
    check_write_text(path, "{\"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"q_proj\"], \"use_dora\": 1}");
    CHECK(lora_read_config(other, &read, &err) == -1);
    CHECK_CONTAINS(err.msg, "'use_dora': expected true or false");
    check_write_text(path, "{\"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"qq_proj\"]}");
    CHECK(lora_read_config(other, &read, &err) == -1);
    CHECK_CONTAINS(err.msg, "qq_proj");
    check_write_text(path, "{\"r\": 4, \"lora_alpha\": 8,");
    CHECK(lora_read_config(other, &read, &err) == -1);
    CHECK_CONTAINS(err.msg, "invalid JSON");

    /* The card: front matter with the fields the Hub reads, then the recipe. */
    char *readme = check_slurp(strcat(strcpy(path, dir), "/README.md"), NULL);
    char fm[8192];
    front_matter(readme, fm, sizeof fm);
    CHECK(readme && strncmp(readme, "---\n", 4) == 0);
    CHECK_CONTAINS(fm, "base_model: \"tiny-full\"\n");
    CHECK_CONTAINS(fm, "library_name: peft\n");
    CHECK_CONTAINS(fm, "license: \"apache-2.0\"\n");
    CHECK_CONTAINS(fm, "- lora\n");
    CHECK_CONTAINS(fm, "- \"base_model:adapter:tiny-full\"\n");
    CHECK_CONTAINS(fm, "datasets:\n- \"addition-train\"\n");
    CHECK_CONTAINS(fm, "pipeline_tag: text-generation\n");
    CHECK_CONTAINS(fm, "model-index:\n- name: \"tiny-lora\"\n");
    CHECK_CONTAINS(fm, "      name: \"addition-eval\"\n"); /* the set the numbers come from */
    CHECK_CONTAINS(fm, "      value: 0.5\n");
    CHECK_CONTAINS(fm, "      value: 0.875\n");
    CHECK(readme && strstr(readme, "```yaml\n") && strstr(readme, "method: lora"));
    CHECK(readme && strstr(readme, "PeftModel.from_pretrained"));
    free(readme);

    /* Writing again replaces the folder as a whole; nothing is left beside it. */
    check_write_text(strcat(strcpy(path, dir), "/stale.txt"), "from an older checkpoint\n");
    randomize_lora_b(&m, 1234);
    CHECK_MSG(checkpoint_write_hub(dir, &m, &r, base, &s, &err) == 0, "%s", err.msg);
    CHECK(!is_file(path));
    model_free(&fresh);
    CHECK(model_create(&fresh, &cfg, &read, k, &err) == 0);
    CHECK(lora_read_config(dir, &read, &err) == 0);
    CHECK(lora_load_adapter(&fresh, dir, &err) == 0);
    CHECK(lora_equal(&fresh, &m));
    snprintf(path, sizeof path, "%s.tmp-%ld", dir, (long)getpid());
    CHECK(!path_exists(path));
    snprintf(path, sizeof path, "%s.old-%ld", dir, (long)getpid());
    CHECK(!path_exists(path));

    /* A write that fails leaves the previous folder as it was. */
    model_free(&fresh);
    CHECK(model_create(&fresh, &cfg, NULL, k, &err) == 0);
    fresh.has_lora = true; /* claims adapters it does not have: lora_write_adapter fails */
    CHECK(checkpoint_write_hub(dir, &fresh, &r, base, &s, &err) == -1);
    CHECK_CONTAINS(err.msg, "tiny-lora");
    fresh.has_lora = false;
    snprintf(path, sizeof path, "%s.tmp-%ld", dir, (long)getpid());
    CHECK(!path_exists(path));
    model_free(&fresh);
    CHECK(model_create(&fresh, &cfg, &read, k, &err) == 0);
    CHECK(lora_load_adapter(&fresh, dir, &err) == 0);
    CHECK(lora_equal(&fresh, &m));
    model_free(&fresh);
    if (keep) save_logits(&m, "ctune_logits_lora.txt");
    model_free(&m);
    model_config_free(&cfg);
}

/* ---- the card's base model: a Hub id from the config, else the folder's name ---- */

/* A DoRA adapter: peft's magnitude key per adapted Linear ([out], starting at the norms of W's
 * rows), use_dora in the config, a round trip into a fresh DoRA model; a DoRA file is refused
 * by a plain LoRA model and a wrong magnitude shape is named. */
static void test_dora(const kernels *k) {
    char base[1500], dir[1500], path[2000], other[1500];
    at(base, "tiny-full");
    model_config cfg;
    ct_error err = {{0}};
    snprintf(path, sizeof path, "%s/config.json", base);
    CHECK(model_config_load(&cfg, path, &err) == 0);
    lora_settings lora = {.r = 4, .alpha = 8.0f, .use_dora = true};
    const char *targets[] = {"q_proj", "down_proj"};
    CHECK(lora_parse_targets(&lora, targets, 2, &err) == 0);
    model m;
    CHECK_MSG(model_create(&m, &cfg, &lora, k, &err) == 0, "%s", err.msg);
    CHECK_MSG(model_load_weights(&m, base, &err) == 0, "%s", err.msg);
    model_init_lora(&m, 3);
    CHECK_MSG(model_init_dora(&m, &err) == 0, "%s", err.msg);
    int magnitudes = 0;
    for (int i = 0; i < m.n_params; i++) {
        const model_param *p = &m.params[i];
        if (!strstr(p->name, ".lora_magnitude_vector")) continue;
        char wname[256];
        snprintf(wname, sizeof wname, "%.*s.weight", (int)(strlen(p->name) - strlen(".lora_magnitude_vector")),
                 p->name);
        const model_param *w = model_find_param(&m, wname);
        CHECK_MSG(w && p->ndim == 1 && p->shape[0] == w->shape[0] && p->trainable && p->is_lora, "%s", p->name);
        if (!w) continue;
        double worst = 0;
        for (int64_t row = 0; row < w->shape[0]; row++) { /* B = 0: m = ||W's row|| */
            double sum = 0;
            for (int64_t col = 0; col < w->shape[1]; col++) {
                double v = w->data[row * w->shape[1] + col];
                sum += v * v;
            }
            worst = fmax(worst, fabs(p->data[row] - sqrt(sum)) / sqrt(sum));
        }
        CHECK_MSG(worst < 1e-6, "%s: relative error %.3g against the rows' norms", p->name, worst);
        magnitudes++;
    }
    CHECK(magnitudes == 2 * cfg.num_hidden_layers);
    randomize_lora_b(&m, 5);
    recipe r;
    recipe_for(&r, METHOD_LORA);
    r.lora.use_dora = true;
    run_summary s = {.steps = 2, .train_loss = 1.0, .world_size = 1};
    CHECK_MSG(checkpoint_write_hub(at(dir, "tiny-dora"), &m, &r, base, &s, &err) == 0, "%s", err.msg);
    st_file file;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    CHECK_MSG(st_open(&file, path, &err) == 0, "%s", err.msg);
    const st_tensor *t = st_find(&file, "base_model.model.model.layers.0.mlp.down_proj.lora_magnitude_vector");
    CHECK(t && t->ndim == 1 && t->shape[0] == cfg.hidden_size && t->dtype == ST_F32);
    CHECK(file.n_tensors == 3 * 2 * cfg.num_hidden_layers);
    st_close(&file);
    snprintf(path, sizeof path, "%s/README.md", dir);
    char *card = check_slurp(path, NULL);
    CHECK_CONTAINS(card ? card : "", "A DoRA (weight-decomposed LoRA) adapter for");
    free(card);
    lora_settings read = {0};
    CHECK_MSG(lora_read_config(dir, &read, &err) == 0 && read.use_dora, "%s", err.msg);
    model fresh;
    CHECK(model_create(&fresh, &cfg, &read, k, &err) == 0);
    CHECK_MSG(lora_load_adapter(&fresh, dir, &err) == 0, "%s", err.msg);
    CHECK(lora_equal(&fresh, &m));
    model_free(&fresh);

    read.use_dora = false; /* the magnitudes are not parameters of a plain LoRA model */
    CHECK(model_create(&fresh, &cfg, &read, k, &err) == 0);
    CHECK(lora_load_adapter(&fresh, dir, &err) == -1);
    CHECK_CONTAINS(err.msg, "unexpected adapter key");
    CHECK_CONTAINS(err.msg, "lora_magnitude_vector");
    model_free(&fresh);

    const char *swapped = "base_model.model.model.layers.1.self_attn.q_proj.lora_magnitude_vector";
    rewrite_adapter(dir, at(other, "dora-shape"), swapped, swapped); /* re-added as [2, 2] */
    read.use_dora = true;
    CHECK(model_create(&fresh, &cfg, &read, k, &err) == 0);
    CHECK(lora_load_adapter(&fresh, other, &err) == -1);
    CHECK_CONTAINS(err.msg, swapped);
    char expected[64];
    snprintf(expected, sizeof expected, "expected shape [%d], the file has [2, 2]",
             cfg.num_attention_heads * cfg.head_dim);
    CHECK_CONTAINS(err.msg, expected);
    model_free(&fresh);
    model_free(&m);
    model_config_free(&cfg);
}

static void test_card_base_model(const kernels *k) {
    char base[1500], dir[1500], path[2000];
    make_base(at(base, "hub-base"), "\"_name_or_path\": \"HuggingFaceTB/SmolLM2-135M\",");
    model_config cfg;
    ct_error err = {{0}};
    snprintf(path, sizeof path, "%s/config.json", base);
    CHECK(model_config_load(&cfg, path, &err) == 0);
    model m;
    CHECK(make_lora_model(&m, &cfg, 2, k, &err) == 0);
    recipe r;
    recipe_for(&r, METHOD_LORA);
    r.data.train[0] = '\0';
    snprintf(r.checkpoint.license, sizeof r.checkpoint.license, "mit");
    run_summary s = {.steps = 1, .train_loss = NAN, .eval_loss = NAN, .eval_accuracy = NAN};
    CHECK_MSG(checkpoint_write_hub(at(dir, "hub-lora"), &m, &r, base, &s, &err) == 0, "%s", err.msg);
    char *readme = check_slurp(strcat(strcpy(path, dir), "/README.md"), NULL);
    char fm[8192];
    front_matter(readme, fm, sizeof fm);
    CHECK_CONTAINS(fm, "base_model: \"HuggingFaceTB/SmolLM2-135M\"\n");
    CHECK_CONTAINS(fm, "- \"base_model:adapter:HuggingFaceTB/SmolLM2-135M\"\n");
    CHECK_CONTAINS(fm, "license: \"mit\"\n");
    CHECK(strstr(fm, "model-index") == NULL); /* nothing measured */
    CHECK(strstr(fm, "datasets") == NULL);
    free(readme);
    char *config = check_slurp(strcat(strcpy(path, dir), "/adapter_config.json"), NULL);
    CHECK(config && strstr(config, "\"base_model_name_or_path\": \"HuggingFaceTB/SmolLM2-135M\""));
    free(config);
    model_free(&m);
    model_config_free(&cfg);

    /* A local path in _name_or_path is not an id: the folder's name is used. */
    make_base(at(base, "local-base"), "\"_name_or_path\": \"/home/someone/models/x\",");
    snprintf(path, sizeof path, "%s/config.json", base);
    CHECK(model_config_load(&cfg, path, &err) == 0);
    CHECK(model_create(&m, &cfg, NULL, k, &err) == 0);
    char id[256];
    checkpoint_base_model_id(&m, base, false, id, sizeof id);
    CHECK(strcmp(id, "local-base") == 0);
    checkpoint_base_model_id(&m, base, true, id, sizeof id);
    CHECK(strcmp(id, base) == 0);
    model_free(&m);
    model_config_free(&cfg);
}

/* ---- metrics.jsonl ---- */

static void test_metrics(void) {
    char path[1500];
    metrics_log log;
    ct_error err = {{0}};
    CHECK(metrics_open(&log, at(path, "metrics.jsonl"), &err) == 0);
    metrics_step(&log, &(metrics_step_values){.step = 1, .loss = 2.5, .lr = 1e-4, .grad_norm = 0.75, .tokens = 4096,
                                              .tokens_per_second = 12345.678, .elapsed_seconds = 0.5,
                                              .peak_memory_bytes = -1});
    /* Flushed per line: the line is on disk before the log is closed. */
    char *early = check_slurp(path, NULL);
    CHECK(early && strchr(early, '\n'));
    free(early);
    metrics_step(&log, &(metrics_step_values){.step = 2, .loss = NAN, .lr = 1e-4, .grad_norm = INFINITY, .tokens = 8192,
                                              .tokens_per_second = 12000.0, .elapsed_seconds = 1.0,
                                              .loss_scale = 32768.0, .skipped = true,
                                              .peak_memory_bytes = 5000000123LL});
    metrics_eval(&log, 2, 1.125, 640, NAN);
    metrics_eval(&log, 2, 1.125, 640, 0.5);
    metrics_close(&log);
    metrics_step(&log, &(metrics_step_values){.step = 3, .peak_memory_bytes = -1}); /* closed: ignored, no crash */

    char *text = check_slurp(path, NULL);
    CHECK(text != NULL);
    if (!text) return;
    cJSON *lines[4] = {0};
    int n = 0;
    for (char *line = strtok(text, "\n"); line && n < 4; line = strtok(NULL, "\n")) lines[n++] = cJSON_Parse(line);
    CHECK(n == 4 && lines[0] && lines[1] && lines[2] && lines[3]);
    if (n == 4 && lines[0] && lines[1] && lines[2] && lines[3]) {
        CHECK(cJSON_GetObjectItem(lines[0], "step")->valueint == 1);
        CHECK(cJSON_GetObjectItem(lines[0], "loss")->valuedouble == 2.5);
        CHECK(cJSON_GetObjectItem(lines[0], "lr")->valuedouble == 1e-4);
        CHECK(cJSON_GetObjectItem(lines[0], "tokens")->valuedouble == 4096);
        CHECK_CLOSE(cJSON_GetObjectItem(lines[0], "tok_s")->valuedouble, 12345.678, 1e-7);
        CHECK(cJSON_GetObjectItem(lines[0], "elapsed_s")->valuedouble == 0.5);
        CHECK(cJSON_GetObjectItem(lines[0], "grad_norm")->valuedouble == 0.75);
        CHECK(cJSON_IsNull(cJSON_GetObjectItem(lines[1], "loss")));
        CHECK(cJSON_IsNull(cJSON_GetObjectItem(lines[1], "grad_norm")));
        /* fp16 loss scaling: the scale and the skip flag only where given */
        CHECK(cJSON_GetObjectItem(lines[0], "loss_scale") == NULL);
        CHECK(cJSON_GetObjectItem(lines[0], "skipped") == NULL);
        /* the backend's peak memory only where it could tell, as an exact integer */
        CHECK(cJSON_GetObjectItem(lines[0], "peak_memory_bytes") == NULL);
        CHECK(cJSON_GetObjectItem(lines[1], "peak_memory_bytes") &&
              cJSON_GetObjectItem(lines[1], "peak_memory_bytes")->valuedouble == 5000000123.0);
        CHECK(cJSON_GetObjectItem(lines[1], "loss_scale")->valuedouble == 32768.0);
        CHECK(cJSON_IsTrue(cJSON_GetObjectItem(lines[1], "skipped")));
        CHECK(cJSON_GetObjectItem(lines[2], "eval_loss")->valuedouble == 1.125);
        CHECK(cJSON_GetObjectItem(lines[2], "eval_tokens")->valueint == 640);
        CHECK(cJSON_GetObjectItem(lines[2], "eval_accuracy") == NULL);
        CHECK(cJSON_GetObjectItem(lines[3], "eval_accuracy")->valuedouble == 0.5);
    }
    for (int i = 0; i < n; i++) cJSON_Delete(lines[i]);
    free(text);
    CHECK(metrics_open(&log, "/nonexistent-dir/metrics.jsonl", &err) == -1);
    CHECK_CONTAINS(err.msg, "/nonexistent-dir/metrics.jsonl");
}

int main(void) {
    const char *build = getenv("CTUNE_BUILD_DIR");
    snprintf(root, sizeof root, "%s/ctune-test-checkpoint-XXXXXX", build ? build : "/tmp");
    if (!mkdtemp(root)) {
        perror(root);
        return 1;
    }
    bool keep = getenv("CTUNE_KEEP_TEST_DIR") != NULL;
    const kernels *k = kernels_cpu();
    test_full(k, keep);
    test_full_sharded(k);
    test_lora(k, keep);
    test_dora(k);
    test_card_base_model(k);
    test_metrics();
    if (keep) {
        printf("kept %s\n", root);
    } else {
        ct_error err;
        remove_tree(root, &err);
    }
    return check_summary("test_checkpoint");
}
