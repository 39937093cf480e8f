/* ctune merge ADAPTER --base MODEL -o OUT: folds a LoRA or DoRA adapter into its base and
 * writes a full hub folder (weights, sharded beyond --max-shard-bytes; config.json; the base's
 * tokenizer and generation config; a model card).
 *
 * Memory is bounded by the largest tensor, not the model: the base stays mmap'd and each
 * output tensor is converted (and merged, W' = W + scaling * B A, or with DoRA
 * W' = (m / ||W + scaling * B A||_row) (W + scaling * B A)) into one buffer and streamed to
 * its shard before the next is read. */
#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/nf4.h"
#include "peft/lora.h"
#include "train/checkpoint.h"
#include "train/cli.h"
#include "train/fsutil.h"
#include "train/model.h"
#include "train/safetensors.h"

#define PATH_CAP 4096
#define PEFT_PREFIX "base_model.model."

static void merge_usage(FILE *out) {
    fprintf(out,
            "usage: ctune merge ADAPTER_DIR --base MODEL_DIR -o OUT_DIR [options]\n"
            "\n"
            "Merges a LoRA adapter (adapter_model.safetensors + adapter_config.json) into its\n"
            "base model: W' = W + scaling * B A for every adapted Linear (with use_dora, each\n"
            "row then rescaled to its trained magnitude: W' = m / ||W + scaling * B A||_row *\n"
            "(W + scaling * B A)), every other tensor copied unchanged. OUT_DIR is a complete\n"
            "model folder that transformers loads.\n"
            "\n"
            "options:\n"
            "  --base DIR               the base model folder (model.safetensors or shards)\n"
            "  -o, --output DIR         the output folder (replaced atomically)\n"
            "  --dtype float32|bfloat16|float16\n"
            "                           output dtype (default: the base's stored dtype)\n"
            "  --max-shard-bytes N      shard the weights beyond N bytes (default 5000000000)\n"
            "  --quantize-base nf4      merge into the base a QLoRA run (lora.quantize_base: nf4)\n"
            "                           trained on: the decoder layers' Linear weights NF4-quantized\n"
            "                           and read back, so the merged model computes what the adapter\n"
            "                           was trained with (without it, the full-precision base)\n");
}

/* One output tensor: where it comes from and, when adapted, its adapter tensors. */
typedef struct merge_tensor {
    const st_tensor *base;
    const st_tensor *lora_a, *lora_b; /* NULL when not adapted */
    const st_tensor *magnitude;       /* DoRA's lora_magnitude_vector [out]; NULL without DoRA */
    st_dtype out_dtype;
} merge_tensor;

typedef struct merge_state {
    merge_tensor *tensors;
    int n_tensors;
    float scaling;
    /* fp32 scratch, each the size of the largest of its kind (magnitude only with DoRA) */
    float *weight, *lora_a, *lora_b, *magnitude;
    /* --quantize-base nf4: scratch for the largest weight's codes and absmaxes */
    bool nf4_base;
    uint8_t *nf4_codes;
    float *nf4_absmax;
} merge_state;

static bool is_float_dtype(st_dtype dtype) {
    return dtype == ST_F32 || dtype == ST_BF16 || dtype == ST_F16;
}

static int dtype_from_torch(const char *name, st_dtype *out) {
    if (!strcmp(name, "float32")) *out = ST_F32;
    else if (!strcmp(name, "bfloat16")) *out = ST_BF16;
    else if (!strcmp(name, "float16")) *out = ST_F16;
    else return -1;
    return 0;
}

static const char *torch_from_dtype(st_dtype dtype) {
    return dtype == ST_BF16 ? "bfloat16" : dtype == ST_F16 ? "float16" : "float32";
}

/* "model.layers.2.x" before "model.layers.10.x": numbers compare by value, so the order is
 * the model's layer order (the state-dict order up to the order of modules inside a layer). */
static int natural_compare(const char *a, const char *b) {
    while (*a && *b) {
        if (isdigit((unsigned char)*a) && isdigit((unsigned char)*b)) {
            char *end_a, *end_b;
            unsigned long long x = strtoull(a, &end_a, 10), y = strtoull(b, &end_b, 10);
            if (x != y) return x < y ? -1 : 1;
            a = end_a;
            b = end_b;
            continue;
        }
        if (*a != *b) return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
        a++;
        b++;
    }
    return (unsigned char)*a - (unsigned char)*b;
}

static int merge_tensor_compare(const void *x, const void *y) {
    return natural_compare(((const merge_tensor *)x)->base->name,
                           ((const merge_tensor *)y)->base->name);
}

#define MAGNITUDE_SUFFIX ".lora_magnitude_vector"

/* The adapter's key "base_model.model.<module><suffix>" for base weight "<module>.weight"
 * (suffix ".lora_A.weight", ".lora_B.weight" or MAGNITUDE_SUFFIX) into key; false when the
 * base tensor is not a ".weight" or the key does not fit. */
static bool adapter_key(const char *base_name, const char *suffix, char *key, size_t size) {
    size_t len = strlen(base_name);
    if (len < 7 || strcmp(base_name + len - 7, ".weight") != 0) return false;
    return (size_t)snprintf(key, size, PEFT_PREFIX "%.*s%s", (int)(len - 7), base_name, suffix) <
           size;
}

static const st_tensor *find_adapter(const st_file *adapter, const char *base_name,
                                     const char *suffix) {
    char key[1024];
    return adapter_key(base_name, suffix, key, sizeof key) ? st_find(adapter, key) : NULL;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static int check_pair(const merge_tensor *t, const char *adapter_path, int r, ct_error *err) {
    const st_tensor *w = t->base, *a = t->lora_a, *b = t->lora_b;
    if (!a || !b)
        return ct_fail(err, "%s: '%s' has lora_%c but no lora_%c", adapter_path, w->name,
                       a ? 'A' : 'B', a ? 'B' : 'A');
    if (w->ndim != 2 || !is_float_dtype(w->dtype))
        return ct_fail(err, "base tensor '%s' (%s, %d dims) cannot take a LoRA adapter", w->name,
                       st_dtype_name(w->dtype), w->ndim);
    if (!is_float_dtype(a->dtype) || !is_float_dtype(b->dtype))
        return ct_fail(err, "%s: adapter of '%s' is stored as %s/%s, expected F32, BF16 or F16",
                       adapter_path, w->name, st_dtype_name(a->dtype), st_dtype_name(b->dtype));
    if (a->ndim != 2 || b->ndim != 2 || a->shape[0] != r || a->shape[1] != w->shape[1] ||
        b->shape[0] != w->shape[0] || b->shape[1] != r)
        return ct_fail(err,
                       "%s: adapter of '%s' [%lld, %lld] has shapes A [%lld, %lld], B [%lld, "
                       "%lld]; expected A [%d, %lld], B [%lld, %d] (r = %d from "
                       "adapter_config.json)",
                       adapter_path, w->name, (long long)w->shape[0], (long long)w->shape[1],
                       (long long)a->shape[0], (long long)(a->ndim > 1 ? a->shape[1] : 0),
                       (long long)b->shape[0], (long long)(b->ndim > 1 ? b->shape[1] : 0), r,
                       (long long)w->shape[1], (long long)w->shape[0], r, r);
    return 0;
}

/* DoRA: the adapted weight's "<module>.lora_magnitude_vector", F32/BF16/F16 of shape [out]. */
static int check_magnitude(merge_tensor *t, const st_file *adapter, ct_error *err) {
    const st_tensor *w = t->base;
    char key[1024];
    if (!adapter_key(w->name, MAGNITUDE_SUFFIX, key, sizeof key))
        return ct_fail(err, "%s: base tensor '%s' has a name too long for its adapter keys",
                       adapter->path, w->name);
    const st_tensor *m = t->magnitude = st_find(adapter, key);
    if (!m)
        return ct_fail(err, "%s: missing DoRA magnitude '%s' for '%s' (adapter_config.json sets "
                            "use_dora)", adapter->path, key, w->name);
    if (!is_float_dtype(m->dtype))
        return ct_fail(err, "%s: DoRA magnitude '%s' is stored as %s, expected F32, BF16 or F16",
                       adapter->path, key, st_dtype_name(m->dtype));
    if (m->ndim != 1 || m->shape[0] != w->shape[0]) {
        char shape[128];
        st_shape_text(m, shape, sizeof shape);
        return ct_fail(err, "%s: DoRA magnitude '%s' has shape %s; expected [%lld] (the rows "
                            "of '%s')", adapter->path, key, shape, (long long)w->shape[0],
                       w->name);
    }
    return 0;
}

static int fetch_merged(void *ctx, int index, void *out, ct_error *err) {
    merge_state *s = ctx;
    const merge_tensor *t = &s->tensors[index];
    const st_tensor *w = t->base;
    const bool quantized = s->nf4_base && model_nf4_quantizes(w->name, w->ndim);
    if (!t->lora_a && !quantized && t->out_dtype == w->dtype) { /* the bytes as stored */
        if (w->nbytes) memcpy(out, w->data, (size_t)w->nbytes);
        return 0;
    }
    if (st_read_f32(w, s->weight, err)) return -1;
    if (quantized) { /* what the QLoRA run multiplied with: the weight's NF4 read-back */
        const size_t bad = nf4_read_back(s->weight, (size_t)w->numel, s->nf4_codes, s->nf4_absmax);
        if (bad < (size_t)w->numel)
            return nf4_non_finite_error(err, w->name, (double)s->weight[bad], bad);
    }
    if (t->lora_a) {
        if (st_read_f32(t->lora_a, s->lora_a, err) || st_read_f32(t->lora_b, s->lora_b, err))
            return -1;
        if (t->magnitude) {
            if (st_read_f32(t->magnitude, s->magnitude, err)) return -1;
            dora_merge_weight(s->weight, s->lora_a, s->lora_b, s->magnitude, (int)w->shape[0],
                              (int)w->shape[1], (int)t->lora_a->shape[0], s->scaling);
        } else {
            lora_merge_weight(s->weight, s->lora_a, s->lora_b, (int)w->shape[0],
                              (int)w->shape[1], (int)t->lora_a->shape[0], s->scaling);
        }
    }
    size_t n = (size_t)w->numel;
    if (t->out_dtype == ST_F32) {
        memcpy(out, s->weight, n * sizeof(float));
    } else {
        uint16_t *half = out;
        for (size_t i = 0; i < n; i++)
            half[i] = t->out_dtype == ST_BF16 ? st_f32_to_bf16(s->weight[i])
                                              : st_f32_to_f16(s->weight[i]);
    }
    return 0;
}

typedef struct merge_job {
    const char *adapter_dir, *base_dir, *out_dir;
    bool dtype_given;
    st_dtype dtype;
    long long max_shard_bytes;
    /* filled while planning */
    model_config cfg;
    lora_settings lora;
    merge_state state;
    st_write_tensor *descs;
    st_dtype config_dtype;
} merge_job;

static void yaml_quoted(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fputc('\\', f);
        if ((unsigned char)*s >= 0x20) fputc(*s, f);
    }
    fputc('"', f);
}

static int write_merge_card(const char *dir, const merge_job *job, ct_error *err) {
    char path[PATH_CAP], base_id[PATH_CAP], adapter_name[PATH_CAP];
    model holder = {0};
    holder.cfg = job->cfg;
    checkpoint_base_model_id(&holder, job->base_dir, false, base_id, sizeof base_id);
    path_basename(job->adapter_dir, adapter_name, sizeof adapter_name);
    if (path_join(path, sizeof path, dir, "README.md", err)) return -1;
    FILE *f = fopen(path, "w");
    if (!f) return ct_fail(err, "%s: cannot create", path);
    fputs("---\n", f);
    if (base_id[0]) {
        fputs("base_model: ", f);
        yaml_quoted(f, base_id);
        fputc('\n', f);
    }
    fprintf(f, "library_name: transformers\nlicense: other\ntags:\n- ctune\n- lora\n%s- merge\n"
               "- text-generation\npipeline_tag: text-generation\n---\n\n",
            job->lora.use_dora ? "- dora\n" : "");
    fprintf(f, "# %s\n\n", adapter_name);
    /* the one sentence, with DoRA's per-row rescaling where it applies */
    const bool dora = job->lora.use_dora;
    fprintf(f, "The %s adapter `%s` merged into its base model `%s` by `ctune merge`: every adapted Linear "
               "weight is %s%sr = %d, alpha = %g, scaling = %g%s), every other tensor is the base's. Weights are "
               "stored as %s.\n",
            dora ? "DoRA" : "LoRA", job->adapter_dir, job->base_dir,
            dora ? "m / ||W + scaling * B A||_row * (W + scaling * B A), each row rescaled to its trained "
                   "magnitude m "
                 : "W + scaling * B A ",
            dora ? "(DoRA, " : "(", job->lora.r, (double)job->lora.alpha, (double)job->state.scaling,
            job->lora.use_rslora ? ", rsLoRA" : "", torch_from_dtype(job->config_dtype));
    if (job->state.nf4_base)
        fputs("\nThe base's decoder-layer Linear weights were first quantized to NF4 (blocks of 64) and read "
              "back (`--quantize-base nf4`): the weights the QLoRA run that trained the adapter multiplied with.\n",
              f);
    fputs("\nLoad it with `transformers.AutoModelForCausalLM.from_pretrained` like any model; "
          "no peft needed.\n",
          f);
    if (fclose(f) != 0) return ct_fail(err, "%s: write failed", path);
    return 0;
}

static int fill_merged(const char *tmp, void *ctx, ct_error *err) {
    merge_job *job = ctx;
    if (st_write_model(tmp, job->descs, job->state.n_tensors, job->max_shard_bytes, fetch_merged,
                       &job->state, err))
        return -1;
    model_config cfg = job->cfg;
    snprintf(cfg.torch_dtype, sizeof cfg.torch_dtype, "%s", torch_from_dtype(job->config_dtype));
    char path[PATH_CAP];
    if (path_join(path, sizeof path, tmp, "config.json", err) ||
        model_config_write(&cfg, path, err) ||
        checkpoint_copy_base_files(tmp, job->base_dir, err) ||
        write_merge_card(tmp, job, err))
        return -1;
    return 0;
}

/* Pairs every base weight with its adapter tensors and checks that none is left over. */
static int plan_merge(merge_job *job, const st_model_files *base, const st_file *adapter,
                      ct_error *err) {
    merge_state *s = &job->state;
    int total = 0;
    for (int f = 0; f < base->n_files; f++) total += base->files[f].n_tensors;
    if (total == 0) return ct_fail(err, "%s: the base has no tensors", job->base_dir);
    s->tensors = calloc((size_t)total, sizeof *s->tensors);
    job->descs = calloc((size_t)total, sizeof *job->descs);
    if (!s->tensors || !job->descs) return ct_fail(err, "out of memory");
    for (int f = 0; f < base->n_files; f++)
        for (int i = 0; i < base->files[f].n_tensors; i++)
            s->tensors[s->n_tensors++].base = &base->files[f].tensors[i];
    qsort(s->tensors, (size_t)total, sizeof *s->tensors, merge_tensor_compare);

    int adapted = 0;
    uint64_t max_weight = 1, max_a = 1, max_b = 1, max_magnitude = 1;
    for (int i = 0; i < total; i++) {
        merge_tensor *t = &s->tensors[i];
        const st_tensor *w = t->base;
        t->lora_a = find_adapter(adapter, w->name, ".lora_A.weight");
        t->lora_b = find_adapter(adapter, w->name, ".lora_B.weight");
        if (t->lora_a || t->lora_b) {
            if (check_pair(t, adapter->path, job->lora.r, err)) return -1;
            if (job->lora.use_dora && check_magnitude(t, adapter, err)) return -1;
            adapted++;
            if (t->lora_a->numel > max_a) max_a = t->lora_a->numel;
            if (t->lora_b->numel > max_b) max_b = t->lora_b->numel;
            if (t->magnitude && t->magnitude->numel > max_magnitude)
                max_magnitude = t->magnitude->numel;
        }
        t->out_dtype = job->dtype_given && is_float_dtype(w->dtype) ? job->dtype : w->dtype;
        if (w->numel > max_weight) max_weight = w->numel;
        st_write_tensor *d = &job->descs[i];
        *d = (st_write_tensor){.name = w->name, .dtype = t->out_dtype, .ndim = w->ndim};
        for (int k = 0; k < w->ndim; k++) d->shape[k] = w->shape[k];
    }
    if (adapted * (job->lora.use_dora ? 3 : 2) != adapter->n_tensors) {
        for (int i = 0; i < adapter->n_tensors; i++) {
            const st_tensor *a = &adapter->tensors[i];
            bool used = false;
            for (int j = 0; j < total && !used; j++)
                used = s->tensors[j].lora_a == a || s->tensors[j].lora_b == a ||
                       s->tensors[j].magnitude == a;
            if (used) continue;
            if (ends_with(a->name, MAGNITUDE_SUFFIX) && !job->lora.use_dora)
                return ct_fail(err, "%s: tensor '%s' is a DoRA magnitude, but adapter_config.json "
                                    "does not set use_dora", adapter->path, a->name);
            if (ends_with(a->name, MAGNITUDE_SUFFIX))
                return ct_fail(err, "%s: DoRA magnitude '%s' has no lora_A / lora_B for a "
                                    "weight of the base %s", adapter->path, a->name,
                               job->base_dir);
            return ct_fail(err, "%s: tensor '%s' matches no weight of the base %s",
                           adapter->path, a->name, job->base_dir);
        }
    }
    if (adapted == 0) return ct_fail(err, "%s: the adapter holds no LoRA tensors", adapter->path);
    s->scaling = lora_scaling(&job->lora);
    s->weight = malloc((size_t)max_weight * sizeof(float));
    s->lora_a = malloc((size_t)max_a * sizeof(float));
    s->lora_b = malloc((size_t)max_b * sizeof(float));
    s->magnitude = malloc((size_t)max_magnitude * sizeof(float));
    if (s->nf4_base) {
        s->nf4_codes = malloc(nf4_code_bytes((size_t)max_weight));
        s->nf4_absmax = malloc(nf4_block_count((size_t)max_weight) * sizeof(float));
    }
    if (!s->weight || !s->lora_a || !s->lora_b || !s->magnitude ||
        (s->nf4_base && (!s->nf4_codes || !s->nf4_absmax)))
        return ct_fail(err, "out of memory for a %llu-element tensor",
                       (unsigned long long)max_weight);

    /* config.json's torch_dtype: the output dtype, or the one the embedding is stored in. */
    job->config_dtype = ST_F32;
    for (int i = 0; i < total; i++)
        if (is_float_dtype(s->tensors[i].out_dtype)) {
            job->config_dtype = s->tensors[i].out_dtype;
            if (strstr(s->tensors[i].base->name, "embed_tokens")) break;
        }
    return 0;
}

static bool same_folder(const char *a, const char *b) {
    char ra[PATH_MAX], rb[PATH_MAX];
    return realpath(a, ra) && realpath(b, rb) && strcmp(ra, rb) == 0;
}

static int run_merge(merge_job *job, ct_error *err) {
    char path[PATH_CAP];
    if (!path_is_dir(job->adapter_dir))
        return ct_fail(err, "%s: adapter folder not found", job->adapter_dir);
    if (!path_is_dir(job->base_dir))
        return ct_fail(err, "%s: base model folder not found", job->base_dir);
    if (same_folder(job->out_dir, job->base_dir) || same_folder(job->out_dir, job->adapter_dir))
        return ct_fail(err, "%s: the output folder must differ from the base and the adapter",
                       job->out_dir);
    if (lora_read_config(job->adapter_dir, &job->lora, err)) return -1;
    if (path_join(path, sizeof path, job->base_dir, "config.json", err) ||
        model_config_load(&job->cfg, path, err))
        return -1;

    st_file adapter;
    st_model_files base = {0};
    if (path_join(path, sizeof path, job->adapter_dir, "adapter_model.safetensors", err))
        return -1;
    if (!path_exists(path))
        return ct_fail(err, "%s: not found (is %s a LoRA adapter folder?)", path,
                       job->adapter_dir);
    if (st_open(&adapter, path, err)) return -1;
    int rc = -1;
    if (st_model_open(&base, job->base_dir, err) == 0 && plan_merge(job, &base, &adapter, err) == 0)
        rc = checkpoint_write_folder(job->out_dir, fill_merged, job, err);
    st_model_close(&base);
    st_close(&adapter);
    return rc;
}

static void free_job(merge_job *job) {
    free(job->state.tensors);
    free(job->state.weight);
    free(job->state.lora_a);
    free(job->state.lora_b);
    free(job->state.magnitude);
    free(job->state.nf4_codes);
    free(job->state.nf4_absmax);
    free(job->descs);
    model_config_free(&job->cfg);
}

int cmd_merge(int argc, char **argv) {
    merge_job job = {0};
    job.max_shard_bytes = 5000000000LL;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        bool has_value = i + 1 < argc;
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            merge_usage(stdout);
            return 0;
        } else if (!strcmp(arg, "--base") && has_value) {
            job.base_dir = argv[++i];
        } else if ((!strcmp(arg, "-o") || !strcmp(arg, "--output")) && has_value) {
            job.out_dir = argv[++i];
        } else if (!strcmp(arg, "--dtype") && has_value) {
            if (dtype_from_torch(argv[++i], &job.dtype)) {
                fprintf(stderr, "ctune merge: --dtype '%s': expected float32, bfloat16 or "
                                "float16\n", argv[i]);
                return 2;
            }
            job.dtype_given = true;
        } else if (!strcmp(arg, "--max-shard-bytes") && has_value) {
            char *end;
            job.max_shard_bytes = strtoll(argv[++i], &end, 10);
            if (*end || job.max_shard_bytes <= 0) {
                fprintf(stderr, "ctune merge: --max-shard-bytes '%s': expected a positive "
                                "integer\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(arg, "--quantize-base") && has_value) {
            if (strcmp(argv[++i], "nf4") != 0) {
                fprintf(stderr, "ctune merge: --quantize-base '%s': expected nf4\n", argv[i]);
                return 2;
            }
            job.state.nf4_base = true;
        } else if (arg[0] == '-') {
            fprintf(stderr, "ctune merge: unknown option '%s'%s\n\n", arg,
                    has_value ? "" : " (or missing value)");
            merge_usage(stderr);
            return 2;
        } else if (!job.adapter_dir) {
            job.adapter_dir = arg;
        } else {
            fprintf(stderr, "ctune merge: unexpected argument '%s'\n\n", arg);
            merge_usage(stderr);
            return 2;
        }
    }
    if (!job.adapter_dir || !job.base_dir || !job.out_dir) {
        fprintf(stderr, "ctune merge: %s is required\n\n",
                !job.adapter_dir ? "ADAPTER_DIR" : !job.base_dir ? "--base" : "-o OUT_DIR");
        merge_usage(stderr);
        return 2;
    }
    ct_error err = {0};
    int rc = run_merge(&job, &err);
    free_job(&job);
    if (rc != 0) {
        fprintf(stderr, "ctune merge: %s\n", err.msg);
        return 1;
    }
    printf("merged %s into %s -> %s\n", job.adapter_dir, job.base_dir, job.out_dir);
    return 0;
}
