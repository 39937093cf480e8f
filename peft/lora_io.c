/* lora_io: the PEFT on-disk format of a LoRA adapter.
 *
 * adapter_model.safetensors holds "base_model.model.<param name>" for every LoRA parameter
 * of the model (fp32, metadata format pt); adapter_config.json holds the long-standing keys
 * of peft's LoraConfig (see ../shared/spec/INTEROP.md), sorted, indent 2, as Python's
 * json.dumps(indent=2, sort_keys=True) prints them. Only those keys are written: newer peft
 * versions fill the rest with defaults, older ones reject keys they do not know. */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "peft/lora.h"
#include "train/fsutil.h"
#include "train/jsonfile.h"
#include "train/model.h"
#include "train/safetensors.h"
#include "train/textbuf.h"

#define PEFT_PREFIX "base_model.model."
#define ADAPTER_WEIGHTS "adapter_model.safetensors"
#define ADAPTER_CONFIG "adapter_config.json"

/* ---------------------------------------------------------------- JSON output ---- */

/* The shortest decimal that reads back as the same float, as Python's repr would print the
 * value the user wrote (0.05, not 0.05000000074505806); always with a '.' or exponent so
 * that it parses back as a float. */
static void json_float(textbuf *b, float x) {
    char buf[48];
    for (int digits = 1; digits <= 9; digits++) {
        snprintf(buf, sizeof buf, "%.*g", digits, (double)x);
        if (strtof(buf, NULL) == x) break;
    }
    if (!strpbrk(buf, ".eEn")) strcat(buf, ".0");
    textbuf_puts(b, buf);
}

/* lora_alpha: peft keeps what the user gave, usually an integer; write integral values as one. */
static void json_number(textbuf *b, float x) {
    if (x == floorf(x) && fabsf(x) < 1e9f)
        textbuf_printf(b, "%lld", (long long)x);
    else
        json_float(b, x);
}

static int write_config(const char *path, const model *m, const char *base_model_name_or_path,
                        ct_error *err) {
    const lora_settings *s = &m->lora;
    textbuf b = {0};
    textbuf_puts(&b, "{\n");
    textbuf_puts(&b, "  \"alpha_pattern\": {},\n");
    textbuf_puts(&b, "  \"base_model_name_or_path\": ");
    if (base_model_name_or_path)
        textbuf_json_string(&b, base_model_name_or_path);
    else
        textbuf_puts(&b, "null");
    textbuf_puts(&b, ",\n");
    textbuf_puts(&b, "  \"bias\": \"none\",\n");
    textbuf_puts(&b, "  \"fan_in_fan_out\": false,\n");
    textbuf_puts(&b, "  \"inference_mode\": true,\n");
    textbuf_puts(&b, "  \"init_lora_weights\": true,\n");
    textbuf_puts(&b, "  \"layers_pattern\": null,\n");
    textbuf_puts(&b, "  \"layers_to_transform\": null,\n");
    textbuf_puts(&b, "  \"lora_alpha\": ");
    json_number(&b, s->alpha);
    textbuf_puts(&b, ",\n");
    textbuf_puts(&b, "  \"lora_dropout\": ");
    json_float(&b, s->dropout);
    textbuf_puts(&b, ",\n");
    textbuf_puts(&b, "  \"modules_to_save\": null,\n");
    textbuf_puts(&b, "  \"peft_type\": \"LORA\",\n");
    textbuf_printf(&b, "  \"r\": %d,\n", s->r);
    textbuf_puts(&b, "  \"rank_pattern\": {},\n");
    textbuf_puts(&b, "  \"revision\": null,\n");
    textbuf_puts(&b, "  \"target_modules\": [");
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
        textbuf_puts(&b, i ? ",\n    " : "\n    ");
        textbuf_json_string(&b, names[i]);
    }
    textbuf_puts(&b, n ? "\n  ],\n" : "],\n");
    textbuf_puts(&b, "  \"task_type\": \"CAUSAL_LM\",\n");
    textbuf_printf(&b, "  \"use_dora\": %s,\n", s->use_dora ? "true" : "false");
    textbuf_printf(&b, "  \"use_rslora\": %s\n", s->use_rslora ? "true" : "false");
    textbuf_puts(&b, "}");
    int rc = b.failed ? ct_fail(err, "%s: out of memory building the JSON text", path)
                      : write_file_atomic(path, b.data, b.len, err);
    textbuf_free(&b);
    return rc;
}

int lora_write_adapter(const char *dir, struct model *m, const char *base_model_name_or_path,
                       ct_error *err) {
    if (!m->has_lora) return ct_fail(err, "%s: the model has no LoRA adapters to write", dir);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return ct_fail(err, "%s: cannot create directory: %s", dir, strerror(errno));

    char path[4096];
    if (path_join(path, sizeof path, dir, ADAPTER_WEIGHTS, err) ||
        model_write_weights(m, path, true, PEFT_PREFIX, err) ||
        path_join(path, sizeof path, dir, ADAPTER_CONFIG, err))
        return -1;
    return write_config(path, m, base_model_name_or_path, err);
}

/* ---------------------------------------------------------------- reading ---- */

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
    /* 1e999 parses as infinity; a double beyond FLT_MAX would become one as a float. */
    if (!cJSON_IsNumber(item) || !(fabs(item->valuedouble) <= FLT_MAX))
        return ct_fail(err, "%s: key 'lora_alpha': expected a finite number", path);
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

    s->use_dora = false;
    item = cJSON_GetObjectItemCaseSensitive(root, "use_dora");
    if (item && !cJSON_IsNull(item)) {
        if (!cJSON_IsBool(item)) return ct_fail(err, "%s: key 'use_dora': expected true or false", path);
        s->use_dora = cJSON_IsTrue(item);
    }

    /* Features that change the adapter's math or layout: refuse rather than load wrongly. */
    if (expect_false_or_absent(root, "fan_in_fan_out", path, "only [out, in] Linear weights", err))
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
    if (path_join(path, sizeof path, dir, ADAPTER_CONFIG, err)) return -1;
    cJSON *root;
    if (jsonfile_read(path, &root, err)) return -1;
    lora_settings parsed = {0};
    int rc = parse_config(root, path, &parsed, err);
    cJSON_Delete(root);
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
        char got[128] = "", want[64] = "";
        for (int d = 0; d < t->ndim && strlen(got) < 100; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "",
                     (long long)t->shape[d]);
        for (int d = 0; d < p->ndim; d++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", d ? ", " : "",
                     (long long)p->shape[d]);
        ct_fail(err, "%s: key '%s': expected shape [%s], the file has [%s] "
                "(was the adapter trained with another r or base model?)", path, key, want, got);
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
    if (path_join(path, sizeof path, dir, ADAPTER_WEIGHTS, err)) return -1;
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
    model_weights_changed(m, true); /* mixed precision: the adapters' 16-bit copies */
    rc = 0;
done:
    free(host);
    st_close(&file);
    return rc;
}
