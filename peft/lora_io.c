/* lora_io: the PEFT on-disk format of a LoRA adapter.
 *
 * adapter_model.safetensors holds "base_model.model.<param name>" for every LoRA parameter
 * of the model (fp32, metadata format pt); adapter_config.json holds the long-standing keys
 * of peft's LoraConfig (see ../shared/spec/INTEROP.md), sorted, indent 2, as Python's
 * json.dumps(indent=2, sort_keys=True) prints them. Only those keys are written: newer peft
 * versions fill the rest with defaults, older ones reject keys they do not know. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "peft/lora.h"
#include "train/fsutil.h"
#include "train/model.h"
#include "train/safetensors.h"

#define PEFT_PREFIX "base_model.model."
#define ADAPTER_WEIGHTS "adapter_model.safetensors"
#define ADAPTER_CONFIG "adapter_config.json"

/* dir + "/" + file into path; false (with err set) when it does not fit. */
static bool file_in(char *path, size_t size, const char *dir, const char *file, ct_error *err) {
    int n = snprintf(path, size, "%s/%s", dir, file);
    if (n >= 0 && (size_t)n < size) return true;
    ct_fail(err, "%s: path too long", dir);
    return false;
}

/* ---------------------------------------------------------------- JSON output ---- */

static void json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (*p < 0x20)
                fprintf(f, "\\u%04x", *p);
            else
                fputc(*p, f);
        }
    }
    fputc('"', f);
}

/* The shortest decimal that reads back as the same float, as Python's repr would print the
 * value the user wrote (0.05, not 0.05000000074505806); always with a '.' or exponent so
 * that it parses back as a float. */
static void json_float(FILE *f, float x) {
    char buf[48];
    for (int digits = 1; digits <= 9; digits++) {
        snprintf(buf, sizeof buf, "%.*g", digits, (double)x);
        if (strtof(buf, NULL) == x) break;
    }
    if (!strpbrk(buf, ".eEn")) strcat(buf, ".0");
    fputs(buf, f);
}

/* lora_alpha: peft keeps what the user gave, usually an integer; write integral values as one. */
static void json_number(FILE *f, float x) {
    if (x == floorf(x) && fabsf(x) < 1e9f)
        fprintf(f, "%lld", (long long)x);
    else
        json_float(f, x);
}

static int write_config(const char *path, const model *m, const char *base_model_name_or_path,
                        ct_error *err) {
    const lora_settings *s = &m->lora;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return ct_fail(err, "%s: cannot allocate the JSON text", path);
    fputs("{\n", f);
    fputs("  \"alpha_pattern\": {},\n", f);
    fputs("  \"base_model_name_or_path\": ", f);
    if (base_model_name_or_path)
        json_string(f, base_model_name_or_path);
    else
        fputs("null", f);
    fputs(",\n", f);
    fputs("  \"bias\": \"none\",\n", f);
    fputs("  \"fan_in_fan_out\": false,\n", f);
    fputs("  \"inference_mode\": true,\n", f);
    fputs("  \"init_lora_weights\": true,\n", f);
    fputs("  \"layers_pattern\": null,\n", f);
    fputs("  \"layers_to_transform\": null,\n", f);
    fputs("  \"lora_alpha\": ", f);
    json_number(f, s->alpha);
    fputs(",\n", f);
    fputs("  \"lora_dropout\": ", f);
    json_float(f, s->dropout);
    fputs(",\n", f);
    fputs("  \"modules_to_save\": null,\n", f);
    fputs("  \"peft_type\": \"LORA\",\n", f);
    fprintf(f, "  \"r\": %d,\n", s->r);
    fputs("  \"rank_pattern\": {},\n", f);
    fputs("  \"revision\": null,\n", f);
    fputs("  \"target_modules\": [", f);
    /* Sorted by name, as peft writes its set of short module names. */
    const char *names[LINEAR_KIND_COUNT];
    int n = 0;
    for (int kind = 0; kind < LINEAR_KIND_COUNT; kind++)
        if (s->targets[kind]) names[n++] = linear_kind_name((linear_kind)kind);
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            const char *t = names[j];
            names[j] = names[j - 1];
            names[j - 1] = t;
        }
    for (int i = 0; i < n; i++) {
        fputs(i ? ",\n    " : "\n    ", f);
        json_string(f, names[i]);
    }
    fputs(n ? "\n  ],\n" : "],\n", f);
    fputs("  \"task_type\": \"CAUSAL_LM\",\n", f);
    fputs("  \"use_dora\": false,\n", f);
    fprintf(f, "  \"use_rslora\": %s\n", s->use_rslora ? "true" : "false");
    fputs("}", f);
    if (fclose(f) != 0 || !text) {
        free(text);
        return ct_fail(err, "%s: cannot build the JSON text", path);
    }
    int rc = write_file_atomic(path, text, len, err);
    free(text);
    return rc;
}

int lora_write_adapter(const char *dir, struct model *m, const char *base_model_name_or_path,
                       ct_error *err) {
    if (!m->has_lora) return ct_fail(err, "%s: the model has no LoRA adapters to write", dir);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return ct_fail(err, "%s: cannot create directory: %s", dir, strerror(errno));

    int n = 0;
    size_t total = 0;
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].is_lora) {
            n++;
            total += m->params[i].numel;
        }
    if (n == 0) return ct_fail(err, "%s: the model has no LoRA parameters", dir);

    /* The tensors may live on a device: bring them all to one host buffer first, since the
     * writer needs every tensor at once. */
    float *host = malloc((total ? total : 1) * sizeof(float));
    st_write_tensor *tensors = calloc((size_t)n, sizeof *tensors);
    char (*names)[sizeof m->params[0].name + sizeof PEFT_PREFIX] = calloc((size_t)n, sizeof *names);
    int rc = -1;
    if (!host || !tensors || !names) {
        ct_fail(err, "%s: out of memory for %zu adapter values", dir, total);
        goto done;
    }
    size_t offset = 0;
    int t = 0;
    for (int i = 0; i < m->n_params; i++) {
        model_param *p = &m->params[i];
        if (!p->is_lora) continue;
        m->k->download(host + offset, p->data, p->numel * sizeof(float));
        snprintf(names[t], sizeof names[t], PEFT_PREFIX "%s", p->name);
        tensors[t] = (st_write_tensor){.name = names[t], .dtype = ST_F32, .ndim = p->ndim,
                                       .data = host + offset};
        for (int d = 0; d < p->ndim; d++) tensors[t].shape[d] = p->shape[d];
        offset += p->numel;
        t++;
    }
    char path[4096];
    if (!file_in(path, sizeof path, dir, ADAPTER_WEIGHTS, err)) goto done;
    const char *meta_key = "format", *meta_value = "pt";
    if (st_write(path, tensors, n, &meta_key, &meta_value, 1, err) != 0) goto done;
    if (!file_in(path, sizeof path, dir, ADAPTER_CONFIG, err)) goto done;
    rc = write_config(path, m, base_model_name_or_path, err);
done:
    free(names);
    free(tensors);
    free(host);
    return rc;
}

/* ---------------------------------------------------------------- reading ---- */

/* Byte offset of cJSON's parse error, for a message that points at the problem. */
static long parse_error_offset(const char *text) {
    const char *at = cJSON_GetErrorPtr();
    return at && at >= text ? (long)(at - text) : -1;
}

static int expect_false_or_absent(const cJSON *root, const char *key, const char *path,
                                  const char *why, ct_error *err) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, key);
    if (item && !cJSON_IsNull(item) && !cJSON_IsFalse(item))
        return ct_fail(err, "%s: key '%s': expected false (%s)", path, key, why);
    return 0;
}

static int parse_config(const cJSON *root, const char *path, lora_settings *s, ct_error *err) {
    if (!cJSON_IsObject(root)) return ct_fail(err, "%s: expected a JSON object", path);

    const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, "peft_type");
    if (item && (!cJSON_IsString(item) || strcmp(item->valuestring, "LORA") != 0))
        return ct_fail(err, "%s: key 'peft_type': expected \"LORA\"", path);

    item = cJSON_GetObjectItemCaseSensitive(root, "r");
    if (!item) return ct_fail(err, "%s: key 'r' is missing", path);
    if (!cJSON_IsNumber(item) || item->valuedouble != floor(item->valuedouble) ||
        item->valuedouble < 1 || item->valuedouble > 1 << 20)
        return ct_fail(err, "%s: key 'r': expected a positive integer", path);
    s->r = (int)item->valuedouble;

    item = cJSON_GetObjectItemCaseSensitive(root, "lora_alpha");
    if (!item) return ct_fail(err, "%s: key 'lora_alpha' is missing", path);
    if (!cJSON_IsNumber(item)) return ct_fail(err, "%s: key 'lora_alpha': expected a number", path);
    s->alpha = (float)item->valuedouble;

    s->dropout = 0.0f;
    item = cJSON_GetObjectItemCaseSensitive(root, "lora_dropout");
    if (item && !cJSON_IsNull(item)) {
        if (!cJSON_IsNumber(item) || item->valuedouble < 0 || item->valuedouble >= 1)
            return ct_fail(err, "%s: key 'lora_dropout': expected a number in [0, 1)", path);
        s->dropout = (float)item->valuedouble;
    }

    s->use_rslora = false;
    item = cJSON_GetObjectItemCaseSensitive(root, "use_rslora");
    if (item && !cJSON_IsNull(item)) {
        if (!cJSON_IsBool(item)) return ct_fail(err, "%s: key 'use_rslora': expected true or false", path);
        s->use_rslora = cJSON_IsTrue(item);
    }

    /* Features that change the adapter's math or layout: refuse rather than load wrongly. */
    if (expect_false_or_absent(root, "use_dora", path, "DoRA is not supported", err) ||
        expect_false_or_absent(root, "fan_in_fan_out", path, "only [out, in] Linear weights", err))
        return -1;
    item = cJSON_GetObjectItemCaseSensitive(root, "bias");
    if (item && !cJSON_IsNull(item) && (!cJSON_IsString(item) || strcmp(item->valuestring, "none") != 0))
        return ct_fail(err, "%s: key 'bias': expected \"none\" (trained biases are not supported)", path);
    const char *must_be_empty[] = {"rank_pattern", "alpha_pattern"};
    for (int i = 0; i < 2; i++) {
        item = cJSON_GetObjectItemCaseSensitive(root, must_be_empty[i]);
        if (item && !cJSON_IsNull(item) && !(cJSON_IsObject(item) && item->child == NULL))
            return ct_fail(err, "%s: key '%s': expected {} (per-module ranks are not supported)",
                           path, must_be_empty[i]);
    }
    const char *must_be_null[] = {"layers_to_transform", "modules_to_save"};
    for (int i = 0; i < 2; i++) {
        item = cJSON_GetObjectItemCaseSensitive(root, must_be_null[i]);
        if (item && !cJSON_IsNull(item) && !(cJSON_IsArray(item) && item->child == NULL))
            return ct_fail(err, "%s: key '%s': expected null (not supported)", path, must_be_null[i]);
    }

    item = cJSON_GetObjectItemCaseSensitive(root, "target_modules");
    if (!item) return ct_fail(err, "%s: key 'target_modules' is missing", path);
    const char *names[64];
    int n = 0;
    if (cJSON_IsString(item) && strcmp(item->valuestring, "all-linear") == 0) {
        names[n++] = item->valuestring;
    } else if (cJSON_IsArray(item)) {
        const cJSON *name;
        cJSON_ArrayForEach(name, item) {
            if (!cJSON_IsString(name))
                return ct_fail(err, "%s: key 'target_modules': expected a list of module names", path);
            if (n == 64) return ct_fail(err, "%s: key 'target_modules': more than 64 names", path);
            names[n++] = name->valuestring;
        }
        if (n == 0) return ct_fail(err, "%s: key 'target_modules': the list is empty", path);
    } else {
        return ct_fail(err,
                       "%s: key 'target_modules': expected a list of module names or \"all-linear\" "
                       "(regular expressions are not supported)", path);
    }
    if (lora_parse_targets(s, names, n, err) != 0)
        return ct_error_prefix(err, "%s: key 'target_modules'", path);
    return 0;
}

int lora_read_config(const char *dir, lora_settings *s, ct_error *err) {
    char path[4096];
    if (!file_in(path, sizeof path, dir, ADAPTER_CONFIG, err)) return -1;
    char *text;
    if (read_file(path, &text, NULL, err) != 0) return -1;
    cJSON *root = cJSON_Parse(text);
    if (!root) {
        long at = parse_error_offset(text);
        free(text);
        return ct_fail(err, "%s: byte %ld: invalid JSON", path, at);
    }
    lora_settings parsed = {0};
    int rc = parse_config(root, path, &parsed, err);
    cJSON_Delete(root);
    free(text);
    if (rc == 0) *s = parsed;
    return rc;
}

/* The file's tensor for a LoRA parameter, checked for shape and dtype; NULL with err set. */
static const st_tensor *find_adapter_tensor(const st_file *file, const char *path,
                                            const model_param *p, ct_error *err) {
    char key[sizeof p->name + sizeof PEFT_PREFIX];
    snprintf(key, sizeof key, PEFT_PREFIX "%s", p->name);
    const st_tensor *t = st_find(file, key);
    if (!t) {
        ct_fail(err, "%s: missing adapter key '%s'", path, key);
        return NULL;
    }
    bool same_shape = t->ndim == p->ndim;
    for (int d = 0; same_shape && d < p->ndim; d++) same_shape = t->shape[d] == p->shape[d];
    if (!same_shape) {
        char got[128] = "";
        for (int d = 0; d < t->ndim && strlen(got) < 100; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "",
                     (long long)t->shape[d]);
        ct_fail(err, "%s: key '%s': expected shape [%lld, %lld], the file has [%s] "
                "(was the adapter trained with another r or base model?)", path, key,
                (long long)p->shape[0], (long long)(p->ndim > 1 ? p->shape[1] : 1), got);
        return NULL;
    }
    if (t->dtype != ST_F32 && t->dtype != ST_BF16 && t->dtype != ST_F16) {
        ct_fail(err, "%s: key '%s': dtype %s, expected F32, BF16 or F16", path, key,
                st_dtype_name(t->dtype));
        return NULL;
    }
    return t;
}

int lora_load_adapter(struct model *m, const char *dir, ct_error *err) {
    char path[4096];
    if (!file_in(path, sizeof path, dir, ADAPTER_WEIGHTS, err)) return -1;
    st_file file;
    if (st_open(&file, path, err) != 0) return -1;

    int rc = -1;
    float *host = NULL;
    /* Everything is checked before the first tensor is copied, so a bad file leaves the
     * model as it was. Every key the model expects must be there with its shape: peft
     * itself only warns on a missing key and runs with the untrained (B = 0) adapter. */
    size_t max_numel = 0;
    int n_expected = 0;
    for (int i = 0; i < m->n_params; i++) {
        const model_param *p = &m->params[i];
        if (!p->is_lora) continue;
        n_expected++;
        if (!find_adapter_tensor(&file, path, p, err)) goto done;
        if (p->numel > max_numel) max_numel = p->numel;
    }
    if (n_expected == 0) {
        ct_fail(err, "%s: the model has no LoRA parameters to load into", path);
        goto done;
    }
    for (int i = 0; i < file.n_tensors; i++) {
        const char *name = file.tensors[i].name;
        bool known = strncmp(name, PEFT_PREFIX, strlen(PEFT_PREFIX)) == 0;
        if (known) {
            const model_param *p = model_find_param(m, name + strlen(PEFT_PREFIX));
            known = p && p->is_lora;
        }
        if (!known) {
            ct_fail(err, "%s: unexpected adapter key '%s' (not a LoRA parameter of this model)",
                    path, name);
            goto done;
        }
    }
    host = malloc(max_numel * sizeof(float));
    if (!host) {
        ct_fail(err, "%s: out of memory", path);
        goto done;
    }
    for (int i = 0; i < m->n_params; i++) {
        model_param *p = &m->params[i];
        if (!p->is_lora) continue;
        const st_tensor *t = find_adapter_tensor(&file, path, p, err);
        if (!t || st_read_f32(t, host, err) != 0) goto done;
        m->k->upload(p->data, host, p->numel * sizeof(float));
    }
    rc = 0;
done:
    free(host);
    st_close(&file);
    return rc;
}
