/* test_merge: sharded full-model output (checkpoint.max_shard_bytes), the streaming
 * safetensors writer, and `ctune merge` (LoRA and DoRA adapters folded into their base). */
#include <fcntl.h>
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
#include "train/cli.h"
#include "train/fsutil.h"
#include "train/model.h"
#include "train/safetensors.h"

static char root[512];

static const char *at(char *buf, const char *name) {
    snprintf(buf, 1400, "%s/%s", root, name);
    return buf;
}

static bool is_file(const char *dir, const char *name) {
    char path[2000];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static const char *TINY_CONFIG =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 64,"
    " \"hidden_size\": 16, \"intermediate_size\": 32, \"num_hidden_layers\": 2,"
    " \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"max_position_embeddings\": 64,"
    " \"rms_norm_eps\": 1e-6, \"rope_theta\": 10000.0, \"tie_word_embeddings\": false,"
    " \"hidden_act\": \"silu\", \"bos_token_id\": 1, \"eos_token_id\": 2,"
    " \"torch_dtype\": \"float32\"}";

static uint64_t lcg(uint64_t *s) {
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 33;
}

static void randomize_lora_b(model *m, uint64_t seed) {
    for (int i = 0; i < m->n_params; i++) {
        model_param *p = &m->params[i];
        if (!p->is_lora || !strstr(p->name, "lora_B")) continue;
        for (size_t j = 0; j < p->numel; j++)
            p->data[j] = ((float)(lcg(&seed) % 2001) - 1000.0f) * 1e-3f;
    }
}

/* A random fp32 base folder written by checkpoint_write_hub (full), sharded at shard_bytes. */
static void make_base(const char *dir, long long shard_bytes, model *m, const kernels *k) {
    char path[2000];
    ct_error err = {{0}};
    char src[1500];
    at(src, "src");
    make_dirs(src, &err);
    snprintf(path, sizeof path, "%s/config.json", src);
    check_write_text(path, TINY_CONFIG);
    snprintf(path, sizeof path, "%s/tokenizer.json", src);
    check_write_text(path, "{\"version\": \"1.0\", \"model\": {\"type\": \"BPE\"}}\n");
    snprintf(path, sizeof path, "%s/generation_config.json", src);
    check_write_text(path, "{\"do_sample\": false}\n");
    model_config cfg;
    snprintf(path, sizeof path, "%s/config.json", src);
    CHECK_MSG(model_config_load(&cfg, path, &err) == 0, "%s", err.msg);
    CHECK_MSG(model_create(m, &cfg, NULL, k, &err) == 0, "%s", err.msg);
    model_init_weights(m, 7);
    recipe r;
    recipe_defaults(&r);
    r.method = METHOD_FULL;
    r.checkpoint.max_shard_bytes = shard_bytes;
    run_summary s = {.steps = 1, .eval_loss = NAN, .eval_accuracy = NAN, .world_size = 1};
    CHECK_MSG(checkpoint_write_hub(dir, m, &r, src, &s, &err) == 0, "%s", err.msg);
    model_config_free(&cfg);
}

/* ---- sharded output ---- */

static void test_sharded(const kernels *k) {
    char dir[1500], path[2000];
    model m;
    ct_error err = {{0}};
    at(dir, "sharded");
    /* embed_tokens and lm_head are 4096 bytes each (> limit: a shard of their own); each
     * layer's weights (q, o 1024 bytes; k, v 512; gate, up, down 2048) fill shards greedily. */
    const long long limit = 3000;
    make_base(dir, limit, &m, k);
    CHECK(!is_file(dir, "model.safetensors"));
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    char *text = check_slurp(path, NULL);
    const char *opening = "{\n  \"metadata\": {\n    \"total_size\": ";
    CHECK(text && strncmp(text, opening, strlen(opening)) == 0);
    CHECK(text && strstr(text, "\n  },\n  \"weight_map\": {\n    \"lm_head.weight\": \"model-"));
    CHECK(text && text[strlen(text) - 1] == '\n' && strstr(text, "\n  }\n}\n"));
    cJSON *index = text ? cJSON_Parse(text) : NULL;
    CHECK(index != NULL);
    if (index) {
        cJSON *meta = cJSON_GetObjectItem(index, "metadata");
        cJSON *map = cJSON_GetObjectItem(index, "weight_map");
        uint64_t expected_total = 0;
        for (int i = 0; i < m.n_params; i++) expected_total += m.params[i].numel * 4;
        CHECK(meta && (uint64_t)cJSON_GetObjectItem(meta, "total_size")->valuedouble ==
                          expected_total);
        CHECK(cJSON_GetArraySize(map) == m.n_params);
        /* sorted keys, every file named model-0000k-of-0000n with the same n */
        int n_shards = 0;
        const cJSON *prev = NULL;
        bool sorted = true;
        for (const cJSON *e = map ? map->child : NULL; e; prev = e, e = e->next) {
            if (prev && strcmp(prev->string, e->string) >= 0) sorted = false;
            int kth, n;
            CHECK(sscanf(e->valuestring, "model-%5d-of-%5d.safetensors", &kth, &n) == 2);
            if (!n_shards) n_shards = n;
            CHECK(n == n_shards && kth >= 1 && kth <= n);
        }
        CHECK(sorted);
        CHECK_MSG(n_shards >= 4, "%d shards", n_shards);
        /* each shard within the limit unless it holds a single tensor; all tensors present */
        for (int s = 1; s <= n_shards; s++) {
            char name[64];
            snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s, n_shards);
            snprintf(path, sizeof path, "%s/%s", dir, name);
            st_file file;
            CHECK_MSG(st_open(&file, path, &err) == 0, "%s", err.msg);
            uint64_t bytes = 0;
            for (int t = 0; t < file.n_tensors; t++) {
                bytes += file.tensors[t].nbytes;
                const cJSON *where = cJSON_GetObjectItem(map, file.tensors[t].name);
                CHECK(where && strcmp(where->valuestring, name) == 0);
            }
            CHECK_MSG(bytes <= (uint64_t)limit || file.n_tensors == 1, "%s: %llu bytes", name,
                      (unsigned long long)bytes);
            CHECK(st_metadata(&file, "format") && !strcmp(st_metadata(&file, "format"), "pt"));
            st_close(&file);
        }
        /* greedy in state-dict order: layer 0's q, k, v (1024 + 512 + 512 bytes) share a
         * shard, o_proj (1024 more) would overflow 3000 and starts the next */
        const cJSON *q = cJSON_GetObjectItem(map, "model.layers.0.self_attn.q_proj.weight");
        const cJSON *kp = cJSON_GetObjectItem(map, "model.layers.0.self_attn.k_proj.weight");
        const cJSON *v = cJSON_GetObjectItem(map, "model.layers.0.self_attn.v_proj.weight");
        const cJSON *o = cJSON_GetObjectItem(map, "model.layers.0.self_attn.o_proj.weight");
        CHECK(q && kp && v && o && !strcmp(q->valuestring, kp->valuestring) &&
              !strcmp(kp->valuestring, v->valuestring) && strcmp(v->valuestring, o->valuestring));
    }
    cJSON_Delete(index);
    free(text);
    model again;
    CHECK_MSG(model_create(&again, &m.cfg, NULL, k, &err) == 0, "%s", err.msg);
    CHECK_MSG(model_load_weights(&again, dir, &err) == 0, "%s", err.msg);
    CHECK(memcmp(again.weight_arena, m.weight_arena, m.weight_numel * sizeof(float)) == 0);
    model_free(&again);

    /* Under the default limit the same model is one file, no index. */
    at(dir, "single");
    model one;
    make_base(dir, 5000000000LL, &one, k);
    CHECK(is_file(dir, "model.safetensors") && !is_file(dir, "model.safetensors.index.json"));
    model_free(&one);
    model_free(&m);
}

/* ---- streaming writer ---- */

static void test_stream_writer(void) {
    char a[1500], b[1500];
    ct_error err = {{0}};
    static const float f32[6] = {1, -2, 3.5f, 0, 1e-3f, 7};
    static const uint16_t bf16[3] = {0x3f80, 0xc000, 0x0001};
    static const int64_t i64[2] = {-1, 1LL << 40};
    static const uint8_t u8[5] = {1, 2, 3, 4, 5};
    const st_write_tensor tensors[] = {
        {.name = "z.small", .dtype = ST_U8, .ndim = 1, .shape = {5}, .data = u8},
        {.name = "b.f32", .dtype = ST_F32, .ndim = 2, .shape = {2, 3}, .data = f32},
        {.name = "a.bf16", .dtype = ST_BF16, .ndim = 1, .shape = {3}, .data = bf16},
        {.name = "c.i64", .dtype = ST_I64, .ndim = 1, .shape = {2}, .data = i64},
        {.name = "empty", .dtype = ST_F32, .ndim = 2, .shape = {0, 4}, .data = NULL},
        {.name = "scalar", .dtype = ST_F32, .ndim = 0, .data = f32},
    };
    const int n = (int)(sizeof tensors / sizeof tensors[0]);
    const char *keys[] = {"format", "note"}, *values[] = {"pt", "hello"};
    CHECK_MSG(st_write(at(a, "direct.safetensors"), tensors, n, keys, values, 2, &err) == 0,
              "%s", err.msg);
    st_write_tensor descs[6];
    memcpy(descs, tensors, sizeof descs);
    for (int i = 0; i < n; i++) descs[i].data = NULL; /* the header needs no data */
    st_writer *w;
    CHECK_MSG(st_writer_open(&w, at(b, "stream.safetensors"), descs, n, keys, values, 2, &err) ==
                  0, "%s", err.msg);
    int put = 0;
    for (int next; w && (next = st_writer_next(w)) >= 0; put++)
        CHECK_MSG(st_writer_put(w, tensors[next].name, tensors[next].data, &err) == 0, "%s",
                  err.msg);
    CHECK(put == n);
    CHECK_MSG(w && st_writer_finish(w, &err) == 0, "%s", err.msg);
    size_t size_a = 0, size_b = 0;
    char *bytes_a = check_slurp(a, &size_a), *bytes_b = check_slurp(b, &size_b);
    CHECK(bytes_a && bytes_b && size_a == size_b && size_a > 8 &&
          memcmp(bytes_a, bytes_b, size_a) == 0);
    free(bytes_a);
    free(bytes_b);

    /* Out of header order: refused, and no file appears. */
    CHECK(st_writer_open(&w, at(b, "bad.safetensors"), descs, n, keys, values, 2, &err) == 0);
    int first = st_writer_next(w);
    const char *wrong = tensors[first == 0 ? 1 : 0].name;
    CHECK(st_writer_put(w, wrong, f32, &err) != 0);
    CHECK_CONTAINS(err.msg, "places");
    CHECK(st_writer_finish(w, &err) != 0);
    CHECK(access(b, F_OK) != 0);
    /* Finishing early: an error naming the tensor still due, no file. */
    CHECK(st_writer_open(&w, b, descs, n, keys, values, 2, &err) == 0);
    CHECK(st_writer_finish(w, &err) != 0);
    CHECK_CONTAINS(err.msg, "0 of 6 tensors");
    CHECK(access(b, F_OK) != 0);
}

/* ---- DoRA merge math ---- */

/* The DoRA merge written out naively: the whole B A, then W + s B A, then each row's norm,
 * all in double, and (m / n) v rounded to fp32 once. Returns a malloc'd [out, in]. */
static float *dora_reference(const float *w, const float *a, const float *b, const float *mag,
                             int out, int in, int r, double s) {
    double *ba = calloc((size_t)out * in, sizeof *ba), *v = calloc((size_t)out * in, sizeof *v);
    float *result = malloc((size_t)out * in * sizeof *result);
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++)
            for (int k = 0; k < r; k++) ba[o * in + i] += (double)b[o * r + k] * a[k * in + i];
    for (int j = 0; j < out * in; j++) v[j] = (double)w[j] + s * ba[j];
    for (int o = 0; o < out; o++) {
        double sum = 0;
        for (int i = 0; i < in; i++) sum += v[o * in + i] * v[o * in + i];
        double factor = (double)mag[o] / sqrt(sum);
        for (int i = 0; i < in; i++) result[o * in + i] = (float)(factor * v[o * in + i]);
    }
    free(ba);
    free(v);
    return result;
}

static void test_dora_merge_weight(void) {
    enum { OUT = 5, IN = 7, R = 3 };
    const float scaling = 1.5f;
    float w[OUT * IN], a[R * IN], b[OUT * R], mag[OUT];
    uint64_t seed = 42;
    for (int j = 0; j < OUT * IN; j++) w[j] = ((float)(lcg(&seed) % 2001) - 1000.0f) * 1e-3f;
    for (int j = 0; j < R * IN; j++) a[j] = ((float)(lcg(&seed) % 2001) - 1000.0f) * 1e-3f;
    for (int j = 0; j < OUT * R; j++) b[j] = ((float)(lcg(&seed) % 2001) - 1000.0f) * 1e-3f;
    for (int o = 0; o < OUT; o++) mag[o] = 0.25f + (float)(lcg(&seed) % 1000) * 1e-3f;
    for (int k = 0; k < R; k++) b[2 * R + k] = 0.0f; /* row 2: no LoRA update */
    mag[4] = 0.0f;                                  /* row 4: a zero magnitude */
    float *want = dora_reference(w, a, b, mag, OUT, IN, R, scaling);

    float got[OUT * IN];
    memcpy(got, w, sizeof got);
    dora_merge_weight(got, a, b, mag, OUT, IN, R, scaling);
    int exact = 0;
    for (int j = 0; j < OUT * IN; j++) exact += got[j] == want[j];
    CHECK_MSG(exact == OUT * IN, "%d of %d elements equal the double reference", exact, OUT * IN);
    /* Each merged row has the norm of its magnitude (to fp32 rounding). */
    for (int o = 0; o < OUT; o++) {
        double sum = 0;
        for (int i = 0; i < IN; i++) sum += (double)got[o * IN + i] * got[o * IN + i];
        CHECK_MSG(fabs(sqrt(sum) - mag[o]) <= 1e-6 * (mag[o] + 1e-30), "row %d: norm %.9g, m %.9g",
                  o, sqrt(sum), (double)mag[o]);
    }
    /* B = 0: m / ||W|| * W, whatever A holds. */
    double norm = 0;
    for (int i = 0; i < IN; i++) norm += (double)w[2 * IN + i] * w[2 * IN + i];
    norm = sqrt(norm);
    int same = 0;
    for (int i = 0; i < IN; i++)
        same += got[2 * IN + i] == (float)((double)mag[2] / norm * (double)w[2 * IN + i]);
    CHECK_MSG(same == IN, "B = 0 row: %d of %d elements are m / ||W|| * W", same, IN);
    for (int i = 0; i < IN; i++) CHECK(got[4 * IN + i] == 0.0f); /* m = 0: a zero row */
    /* m = ||W + s B A||: the LoRA merge itself (to fp32 rounding). */
    float lora[OUT * IN], unit_mag[OUT];
    memcpy(lora, w, sizeof lora);
    lora_merge_weight(lora, a, b, OUT, IN, R, scaling);
    for (int o = 0; o < OUT; o++) {
        double sum = 0;
        for (int i = 0; i < IN; i++) {
            double v = (double)w[o * IN + i];
            for (int k = 0; k < R; k++) v += (double)scaling * b[o * R + k] * a[k * IN + i];
            sum += v * v;
        }
        unit_mag[o] = (float)sqrt(sum);
    }
    memcpy(got, w, sizeof got);
    dora_merge_weight(got, a, b, unit_mag, OUT, IN, R, scaling);
    double worst = 0;
    for (int j = 0; j < OUT * IN; j++) {
        double rel = fabs((double)got[j] - lora[j]) / (fabs(lora[j]) + 1e-6);
        if (rel > worst) worst = rel;
    }
    CHECK_MSG(worst < 1e-6, "m = row norm: differs from the LoRA merge by %g", worst);
    free(want);
}

/* ---- ctune merge ---- */

/* Runs cmd_merge with stderr captured into err_text; returns its exit status. */
static int run_merge(char **argv, int argc, char *err_text, size_t size) {
    char path[1500];
    at(path, "stderr.txt");
    fflush(stderr);
    int saved = dup(2), fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    close(fd);
    int rc = cmd_merge(argc, argv);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    char *text = check_slurp(path, NULL);
    snprintf(err_text, size, "%s", text ? text : "");
    free(text);
    return rc;
}

static float *last_logits(model *m) {
    ct_error err = {{0}};
    static const int32_t ids[5] = {1, 5, 9, 3, 40};
    float *logits = malloc((size_t)m->cfg.vocab_size * sizeof(float));
    if (model_reserve(m, 1, 8, &err) || model_last_logits(m, ids, 5, logits, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        free(logits);
        return NULL;
    }
    return logits;
}

/* W + s * B A in double, rounded to fp32 once. */
static float merged_element(const float *w, const float *a, const float *b, int in, int r,
                            double s, int o, int i) {
    double sum = 0;
    for (int k = 0; k < r; k++) sum += (double)b[o * r + k] * (double)a[k * in + i];
    return (float)((double)w[o * in + i] + s * sum);
}

static void test_merge_dora(char *base, const char *lora_dir, model *lm);

static void test_merge(const kernels *k) {
    char base[1500], adapter[1500], out[1500], out16[1500], path[2000], msg[4096];
    ct_error err = {{0}};
    model m;
    at(base, "merge-base");
    make_base(base, 3000, &m, k); /* a sharded base: st_model_open reads all shards */

    lora_settings lora = {.r = 4, .alpha = 8.0f, .dropout = 0.0f};
    const char *targets[] = {"q_proj", "v_proj", "down_proj"};
    CHECK(lora_parse_targets(&lora, targets, 3, &err) == 0);
    model lm;
    CHECK_MSG(model_create(&lm, &m.cfg, &lora, k, &err) == 0, "%s", err.msg);
    CHECK_MSG(model_load_weights(&lm, base, &err) == 0, "%s", err.msg);
    model_init_lora(&lm, 11);
    randomize_lora_b(&lm, 5);
    at(adapter, "adapter");
    make_dirs(adapter, &err);
    CHECK_MSG(lora_write_adapter(adapter, &lm, base, &err) == 0, "%s", err.msg);
    float *expected = last_logits(&lm);

    at(out, "merged");
    char *argv[] = {"merge", adapter, "--base", base, "-o", out, "--max-shard-bytes", "5000"};
    int rc = run_merge(argv, 8, msg, sizeof msg);
    CHECK_MSG(rc == 0, "%s", msg);

    model merged;
    CHECK_MSG(model_create(&merged, &m.cfg, NULL, k, &err) == 0, "%s", err.msg);
    CHECK_MSG(model_load_weights(&merged, out, &err) == 0, "%s", err.msg);
    float *got = last_logits(&merged);
    double worst = 0;
    for (int i = 0; expected && got && i < m.cfg.vocab_size; i++) {
        double rel = fabs((double)got[i] - expected[i]) / (fabs(expected[i]) + 1e-3);
        if (rel > worst) worst = rel;
    }
    CHECK_MSG(expected && got && worst < 1e-5, "worst relative logit difference %g", worst);
    free(expected);
    free(got);

    /* Every tensor: adapted ones exactly W + s B A, the others bit-identical to the base. */
    st_model_files merged_files = {0}, base_files = {0};
    CHECK_MSG(st_model_open(&merged_files, out, &err) == 0, "%s", err.msg);
    CHECK_MSG(st_model_open(&base_files, base, &err) == 0, "%s", err.msg);
    CHECK(merged_files.n_files > 1); /* sharded by --max-shard-bytes */
    double scaling = lora_scaling(&lora);
    int adapted = 0, same = 0, total = 0;
    for (int f = 0; f < base_files.n_files; f++)
        for (int t = 0; t < base_files.files[f].n_tensors; t++) {
            const st_tensor *bt = &base_files.files[f].tensors[t];
            const st_tensor *mt = st_model_find(&merged_files, bt->name);
            total++;
            CHECK(mt && mt->dtype == ST_F32 && mt->nbytes == bt->nbytes);
            if (!mt) continue;
            char a_name[256], b_name[256];
            size_t len = strlen(bt->name) - strlen(".weight");
            snprintf(a_name, sizeof a_name, "%.*s.lora_A.weight", (int)len, bt->name);
            snprintf(b_name, sizeof b_name, "%.*s.lora_B.weight", (int)len, bt->name);
            const model_param *pa = model_find_param(&lm, a_name), *pb = model_find_param(&lm, b_name);
            if (!pa) {
                same += memcmp(mt->data, bt->data, bt->nbytes) == 0;
                continue;
            }
            const float *w = bt->data, *got_w = mt->data;
            int out_dim = (int)bt->shape[0], in = (int)bt->shape[1], exact = 0;
            for (int o = 0; o < out_dim; o++)
                for (int i = 0; i < in; i++)
                    exact += got_w[o * in + i] ==
                             merged_element(w, pa->data, pb->data, in, 4, scaling, o, i);
            CHECK_MSG(exact == out_dim * in, "%s: %d of %d elements exact", bt->name, exact,
                      out_dim * in);
            CHECK(memcmp(mt->data, bt->data, bt->nbytes) != 0); /* B is non-zero */
            adapted++;
        }
    CHECK_MSG(adapted == 6 && same == total - 6, "%d adapted, %d of %d unchanged", adapted, same,
              total);
    st_model_close(&merged_files);

    /* The folder: config (torch_dtype), the base's tokenizer and generation config, a card. */
    snprintf(path, sizeof path, "%s/config.json", out);
    model_config back;
    CHECK_MSG(model_config_load(&back, path, &err) == 0, "%s", err.msg);
    CHECK(strcmp(back.torch_dtype, "float32") == 0 && back.hidden_size == 16);
    model_config_free(&back);
    CHECK(is_file(out, "tokenizer.json") && is_file(out, "generation_config.json"));
    CHECK(is_file(out, "model.safetensors.index.json") && !is_file(out, "adapter_config.json"));
    snprintf(path, sizeof path, "%s/README.md", out);
    char *card = check_slurp(path, NULL);
    CHECK(card && strncmp(card, "---\nbase_model: \"merge-base\"\n", 29) == 0);
    CHECK(card && strstr(card, "library_name: transformers\n") && strstr(card, adapter));
    free(card);

    /* --dtype bfloat16: each merged fp32 weight rounded to bf16; config says so. */
    at(out16, "merged-bf16");
    char *argv16[] = {"merge", adapter, "--base", base, "-o", out16, "--dtype", "bfloat16"};
    CHECK_MSG(run_merge(argv16, 8, msg, sizeof msg) == 0, "%s", msg);
    CHECK(is_file(out16, "model.safetensors") && !is_file(out16, "model.safetensors.index.json"));
    st_model_files bf = {0};
    CHECK_MSG(st_model_open(&bf, out16, &err) == 0, "%s", err.msg);
    CHECK_MSG(st_model_open(&merged_files, out, &err) == 0, "%s", err.msg);
    int rounded = 0, count = 0;
    for (int t = 0; bf.n_files && t < bf.files[0].n_tensors; t++) {
        const st_tensor *h = &bf.files[0].tensors[t];
        const st_tensor *full = st_model_find(&merged_files, h->name);
        CHECK(h->dtype == ST_BF16 && full);
        if (!full || h->dtype != ST_BF16) continue;
        const uint16_t *hv = h->data;
        const float *fv = full->data;
        for (uint64_t i = 0; i < h->numel; i++, count++) rounded += hv[i] == st_f32_to_bf16(fv[i]);
    }
    CHECK_MSG(count > 0 && rounded == count, "%d of %d bf16 values", rounded, count);
    st_model_close(&bf);
    st_model_close(&merged_files);
    snprintf(path, sizeof path, "%s/config.json", out16);
    CHECK(model_config_load(&back, path, &err) == 0 && !strcmp(back.torch_dtype, "bfloat16"));
    model_config_free(&back);

    /* A bf16 base merges to bf16 by default, its unadapted tensors byte for byte. */
    char base16[1500], out_from16[1500];
    at(base16, "merge-base-bf16");
    char *argv_base16[] = {"merge", adapter, "--base", base, "-o", base16, "--dtype", "bfloat16"};
    CHECK(run_merge(argv_base16, 8, msg, sizeof msg) == 0); /* any bf16 model folder will do */
    at(out_from16, "merged-from-bf16");
    char *argv_from16[] = {"merge", adapter, "--base", base16, "-o", out_from16};
    CHECK_MSG(run_merge(argv_from16, 6, msg, sizeof msg) == 0, "%s", msg);
    st_model_files in16 = {0}, out_16 = {0};
    CHECK(st_model_open(&in16, base16, &err) == 0 && st_model_open(&out_16, out_from16, &err) == 0);
    int kept = 0, bf_total = 0;
    for (int t = 0; in16.n_files && t < in16.files[0].n_tensors; t++) {
        const st_tensor *i16 = &in16.files[0].tensors[t], *o16 = st_model_find(&out_16, i16->name);
        bf_total++;
        CHECK(o16 && o16->dtype == ST_BF16);
        if (o16 && !strstr(i16->name, "q_proj") && !strstr(i16->name, "v_proj") &&
            !strstr(i16->name, "down_proj"))
            kept += memcmp(o16->data, i16->data, i16->nbytes) == 0;
    }
    CHECK_MSG(kept == bf_total - 6, "%d of %d unadapted bf16 tensors kept", kept, bf_total - 6);
    st_model_close(&in16);
    st_model_close(&out_16);

    /* Errors: clear messages, no output folder. */
    char bad_out[1500], missing[1500], partial[1500];
    at(bad_out, "never-written");
    at(missing, "no-such-adapter");
    char *argv_missing[] = {"merge", missing, "--base", base, "-o", bad_out};
    CHECK(run_merge(argv_missing, 6, msg, sizeof msg) == 1);
    CHECK_CONTAINS(msg, "no-such-adapter: adapter folder not found");
    char *argv_nobase[] = {"merge", adapter, "--base", missing, "-o", bad_out};
    CHECK(run_merge(argv_nobase, 6, msg, sizeof msg) == 1);
    CHECK_CONTAINS(msg, "base model folder not found");
    at(partial, "config-only");
    make_dirs(partial, &err);
    snprintf(path, sizeof path, "%s/adapter_config.json", adapter);
    char *config = check_slurp(path, NULL);
    snprintf(path, sizeof path, "%s/adapter_config.json", partial);
    if (config) check_write_text(path, config);
    free(config);
    char *argv_partial[] = {"merge", partial, "--base", base, "-o", bad_out};
    CHECK(run_merge(argv_partial, 6, msg, sizeof msg) == 1);
    CHECK_CONTAINS(msg, "adapter_model.safetensors: not found");
    /* An adapter for a different model: a tensor that matches no base weight. */
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", partial);
    static const float extra[8] = {0};
    const st_write_tensor stray = {.name = "base_model.model.model.layers.9.mlp.up_proj.lora_A.weight",
                                   .dtype = ST_F32, .ndim = 2, .shape = {4, 2}, .data = extra};
    CHECK(st_write(path, &stray, 1, NULL, NULL, 0, &err) == 0);
    CHECK(run_merge(argv_partial, 6, msg, sizeof msg) == 1);
    CHECK_CONTAINS(msg, "layers.9.mlp.up_proj.lora_A.weight' matches no weight of the base");
    char *argv_usage[] = {"merge", adapter, "-o", bad_out};
    CHECK(run_merge(argv_usage, 4, msg, sizeof msg) == 2);
    CHECK_CONTAINS(msg, "--base is required");
    char *argv_same[] = {"merge", adapter, "--base", base, "-o", base};
    CHECK(run_merge(argv_same, 6, msg, sizeof msg) == 1);
    CHECK_CONTAINS(msg, "must differ");
    CHECK(access(bad_out, F_OK) != 0);
    CHECK(is_file(base, "config.json"));

    test_merge_dora(base, adapter, &lm);

    st_model_close(&base_files);
    model_free(&merged);
    model_free(&lm);
    model_free(&m);
}

/* ---- ctune merge of a DoRA adapter ---- */

#define DORA_ADAPTED 6 /* q_proj, v_proj, down_proj in each of 2 layers */

/* dir: from_dir's adapter tensors plus extra, and its adapter_config.json with use_dora set as
 * given (lora_write_adapter writes "use_dora": false). */
static void write_adapter_variant(const char *dir, const char *from_dir,
                                  const st_write_tensor *extra, int n_extra, bool use_dora) {
    char path[2000];
    ct_error err = {{0}};
    make_dirs(dir, &err);
    snprintf(path, sizeof path, "%s/adapter_config.json", from_dir);
    char *config = check_slurp(path, NULL);
    char *flag = config ? strstr(config, "\"use_dora\": false") : NULL;
    CHECK(flag != NULL);
    if (!flag) {
        free(config);
        return;
    }
    if (use_dora) {
        memmove(flag + 16, flag + 17, strlen(flag + 17) + 1); /* "false" -> "true" */
        memcpy(flag + 12, "true", 4);
    }
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    check_write_text(path, config);
    free(config);

    st_file from;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", from_dir);
    CHECK_MSG(st_open(&from, path, &err) == 0, "%s", err.msg);
    st_write_tensor tensors[32];
    int n = 0;
    for (int i = 0; i < from.n_tensors && n < 32; i++, n++) {
        const st_tensor *t = &from.tensors[i];
        tensors[n] = (st_write_tensor){.name = t->name, .dtype = t->dtype, .ndim = t->ndim,
                                       .data = t->data};
        for (int d = 0; d < t->ndim; d++) tensors[n].shape[d] = t->shape[d];
    }
    for (int i = 0; i < n_extra && n < 32; i++) tensors[n++] = extra[i];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    CHECK_MSG(st_write(path, tensors, n, NULL, NULL, 0, &err) == 0, "%s", err.msg);
    st_close(&from);
}

static void test_merge_dora(char *base, const char *lora_dir, model *lm) {
    char dora[1500], out[1500], bad[1500], bad_out[1500], path[2000], msg[4096];
    ct_error err = {{0}};
    /* A magnitude per adapted weight, [out] fp32, random in [0.5, 1.5). */
    char names[DORA_ADAPTED][256];
    float mags[DORA_ADAPTED][64];
    st_write_tensor magnitude[DORA_ADAPTED];
    int n_mag = 0;
    uint64_t seed = 99;
    for (int i = 0; i < lm->n_params && n_mag < DORA_ADAPTED; i++) {
        const model_param *p = &lm->params[i];
        const char *at_b = strstr(p->name, ".lora_B.weight");
        if (!p->is_lora || !at_b || p->shape[0] > 64) continue;
        snprintf(names[n_mag], sizeof names[n_mag], "base_model.model.%.*s.lora_magnitude_vector",
                 (int)(at_b - p->name), p->name);
        for (int o = 0; o < p->shape[0]; o++)
            mags[n_mag][o] = 0.5f + (float)(lcg(&seed) % 1000) * 1e-3f;
        magnitude[n_mag] = (st_write_tensor){.name = names[n_mag], .dtype = ST_F32, .ndim = 1,
                                             .shape = {p->shape[0]}, .data = mags[n_mag]};
        n_mag++;
    }
    CHECK(n_mag == DORA_ADAPTED);

    at(dora, "dora-adapter");
    write_adapter_variant(dora, lora_dir, magnitude, n_mag, true);
    at(out, "dora-merged");
    char *argv[] = {"merge", dora, "--base", base, "-o", out};
    int rc = run_merge(argv, 6, msg, sizeof msg);
    CHECK_MSG(rc == 0, "%s", msg);

    /* Adapted weights: exactly the naive DoRA merge; every row's norm its magnitude. Others:
     * the base's bytes. */
    st_model_files merged = {0}, base_files = {0};
    if (rc == 0) CHECK_MSG(st_model_open(&merged, out, &err) == 0, "%s", err.msg);
    CHECK_MSG(st_model_open(&base_files, base, &err) == 0, "%s", err.msg);
    double scaling = 2.0; /* alpha 8 / r 4 */
    int adapted = 0, same = 0, total = 0;
    for (int f = 0; merged.n_files && f < base_files.n_files; f++)
        for (int t = 0; t < base_files.files[f].n_tensors; t++) {
            const st_tensor *bt = &base_files.files[f].tensors[t];
            const st_tensor *mt = st_model_find(&merged, bt->name);
            total++;
            CHECK(mt && mt->dtype == ST_F32 && mt->nbytes == bt->nbytes);
            if (!mt) continue;
            char a_name[256], b_name[256], m_name[256];
            int len = (int)(strlen(bt->name) - strlen(".weight"));
            snprintf(a_name, sizeof a_name, "%.*s.lora_A.weight", len, bt->name);
            snprintf(b_name, sizeof b_name, "%.*s.lora_B.weight", len, bt->name);
            snprintf(m_name, sizeof m_name, "base_model.model.%.*s.lora_magnitude_vector", len,
                     bt->name);
            const model_param *pa = model_find_param(lm, a_name);
            const model_param *pb = model_find_param(lm, b_name);
            if (!pa) {
                same += memcmp(mt->data, bt->data, bt->nbytes) == 0;
                continue;
            }
            const float *mag = NULL;
            for (int j = 0; j < n_mag; j++)
                if (!strcmp(names[j], m_name)) mag = mags[j];
            CHECK(mag != NULL && pb != NULL);
            if (!mag || !pb) continue;
            int out_dim = (int)bt->shape[0], in = (int)bt->shape[1], exact = 0, norms = 0;
            float *want =
                dora_reference(bt->data, pa->data, pb->data, mag, out_dim, in, 4, scaling);
            const float *got = mt->data;
            for (int j = 0; j < out_dim * in; j++) exact += got[j] == want[j];
            for (int o = 0; o < out_dim; o++) {
                double sum = 0;
                for (int i = 0; i < in; i++) sum += (double)got[o * in + i] * got[o * in + i];
                norms += fabs(sqrt(sum) - mag[o]) <= 1e-6 * mag[o];
            }
            CHECK_MSG(exact == out_dim * in, "%s: %d of %d elements exact", bt->name, exact,
                      out_dim * in);
            CHECK_MSG(norms == out_dim, "%s: %d of %d rows with the norm m", bt->name, norms,
                      out_dim);
            free(want);
            adapted++;
        }
    CHECK_MSG(adapted == DORA_ADAPTED && same == total - DORA_ADAPTED,
              "%d adapted, %d of %d unchanged", adapted, same, total);
    st_model_close(&merged);
    st_model_close(&base_files);
    snprintf(path, sizeof path, "%s/README.md", out);
    char *card = rc == 0 ? check_slurp(path, NULL) : NULL;
    CHECK(card && strstr(card, "\n- dora\n") && strstr(card, "The DoRA adapter `") &&
          strstr(card, "lora_magnitude") == NULL && strstr(card, "||W + scaling * B A||_row"));
    free(card);

    /* Errors name the file and the tensor; no output folder. */
    at(bad, "dora-bad");
    at(bad_out, "dora-never-written");
    char *argv_bad[] = {"merge", bad, "--base", base, "-o", bad_out};
    char adapter_file[1600];
    snprintf(adapter_file, sizeof adapter_file, "%s/adapter_model.safetensors", bad);
    /* the last magnitude missing */
    write_adapter_variant(bad, lora_dir, magnitude, n_mag - 1, true);
    CHECK(run_merge(argv_bad, 6, msg, sizeof msg) == 1);
    CHECK_CONTAINS(msg, adapter_file);
    char expected[2400];
    snprintf(expected, sizeof expected, "missing DoRA magnitude '%s'", names[n_mag - 1]);
    CHECK_CONTAINS(msg, expected);
    /* one magnitude a row short, then one stored [1, out] */
    st_write_tensor wrong[DORA_ADAPTED];
    memcpy(wrong, magnitude, sizeof wrong);
    wrong[0].shape[0] = magnitude[0].shape[0] - 1;
    write_adapter_variant(bad, lora_dir, wrong, n_mag, true);
    CHECK(run_merge(argv_bad, 6, msg, sizeof msg) == 1);
    snprintf(expected, sizeof expected, "%s: DoRA magnitude '%s' has shape [%lld]; expected [%lld]",
             adapter_file, names[0], (long long)wrong[0].shape[0],
             (long long)magnitude[0].shape[0]);
    CHECK_CONTAINS(msg, expected);
    wrong[0] = magnitude[0];
    wrong[0].ndim = 2;
    wrong[0].shape[0] = 1;
    wrong[0].shape[1] = magnitude[0].shape[0];
    write_adapter_variant(bad, lora_dir, wrong, n_mag, true);
    CHECK(run_merge(argv_bad, 6, msg, sizeof msg) == 1);
    snprintf(expected, sizeof expected, "has shape [1, %lld]; expected [%lld]",
             (long long)magnitude[0].shape[0], (long long)magnitude[0].shape[0]);
    CHECK_CONTAINS(msg, expected);
    /* an integer magnitude */
    static const int32_t int_mag[64] = {0};
    wrong[0] = magnitude[0];
    wrong[0].dtype = ST_I32;
    wrong[0].data = int_mag;
    write_adapter_variant(bad, lora_dir, wrong, n_mag, true);
    CHECK(run_merge(argv_bad, 6, msg, sizeof msg) == 1);
    CHECK_CONTAINS(msg, "is stored as I32, expected F32, BF16 or F16");
    /* magnitudes in an adapter whose config does not set use_dora */
    write_adapter_variant(bad, lora_dir, magnitude, n_mag, false);
    CHECK(run_merge(argv_bad, 6, msg, sizeof msg) == 1);
    CHECK_CONTAINS(msg, "is a DoRA magnitude, but adapter_config.json does not set use_dora");
    /* a leftover magnitude for an unadapted weight (k_proj) */
    static const float k_mag[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    st_write_tensor leftover[DORA_ADAPTED + 1];
    memcpy(leftover, magnitude, sizeof magnitude);
    leftover[DORA_ADAPTED] = (st_write_tensor){
        .name = "base_model.model.model.layers.0.self_attn.k_proj.lora_magnitude_vector",
        .dtype = ST_F32, .ndim = 1, .shape = {8}, .data = k_mag};
    write_adapter_variant(bad, lora_dir, leftover, n_mag + 1, true);
    CHECK(run_merge(argv_bad, 6, msg, sizeof msg) == 1);
    CHECK_CONTAINS(msg, "layers.0.self_attn.k_proj.lora_magnitude_vector' has no lora_A / lora_B");
    CHECK(access(bad_out, F_OK) != 0);
}

int main(void) {
    const char *build = getenv("CTUNE_BUILD_DIR");
    snprintf(root, sizeof root, "%s/ctune-test-merge-XXXXXX", build ? build : "/tmp");
    if (!mkdtemp(root)) {
        perror(root);
        return 1;
    }
    const kernels *k = kernels_cpu();
    test_sharded(k);
    test_stream_writer();
    test_dora_merge_weight();
    test_merge(k);
    if (getenv("CTUNE_KEEP_TEST_DIR")) {
        printf("kept %s\n", root);
    } else {
        ct_error err;
        remove_tree(root, &err);
    }
    return check_summary("test_merge");
}
