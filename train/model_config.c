/* model_config: config.json of a Llama-family model (read, presets, write) and the RoPE
 * inverse frequencies it implies. Defaults follow transformers' config classes per
 * model_type (LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/fsutil.h"
#include "train/jsonfile.h"
#include "train/model.h"
#include "train/textbuf.h"

/* ---------------------------------------------------------------- reading helpers */

static const cJSON *get_key(const cJSON *obj, const char *key) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    return item && !cJSON_IsNull(item) ? item : NULL; /* JSON null means "use the default" */
}

static bool is_integer(const cJSON *item) {
    return cJSON_IsNumber(item) && item->valuedouble == floor(item->valuedouble) &&
           fabs(item->valuedouble) < 2147483648.0;
}

/* An int key >= min; absent keys keep *out (the default) unless required. */
static int read_int(const cJSON *obj, const char *key, const char *prefix, bool required, int min,
                    int *out, const char *path, ct_error *err) {
    const cJSON *item = get_key(obj, key);
    if (!item) {
        if (required) return ct_fail(err, "%s: missing required key '%s%s'", path, prefix, key);
        return 0;
    }
    if (!is_integer(item) || item->valuedouble < min)
        return ct_fail(err, "%s: '%s%s' must be a %s integer", path, prefix, key,
                       min >= 1 ? "positive" : "non-negative");
    *out = (int)item->valuedouble;
    return 0;
}

static int read_double(const cJSON *obj, const char *key, const char *prefix, bool required,
                       bool positive, double *out, const char *path, ct_error *err) {
    const cJSON *item = get_key(obj, key);
    if (!item) {
        if (required) return ct_fail(err, "%s: missing required key '%s%s'", path, prefix, key);
        return 0;
    }
    if (!cJSON_IsNumber(item) || !isfinite(item->valuedouble) || (positive && item->valuedouble <= 0))
        return ct_fail(err, "%s: '%s%s' must be a %snumber", path, prefix, key,
                       positive ? "positive " : "");
    *out = item->valuedouble;
    return 0;
}

static int read_bool(const cJSON *obj, const char *key, bool *out, const char *path, ct_error *err) {
    const cJSON *item = get_key(obj, key);
    if (!item) return 0;
    if (!cJSON_IsBool(item)) return ct_fail(err, "%s: '%s' must be true or false", path, key);
    *out = cJSON_IsTrue(item);
    return 0;
}

/* rope_scaling (legacy) or rope_parameters (transformers >= 5): both are objects with
 * rope_type (legacy files may say "type") and the type's parameters. */
static int read_rope_object(model_config *cfg, const cJSON *rope, const char *key, const char *path,
                            ct_error *err) {
    if (!cJSON_IsObject(rope)) return ct_fail(err, "%s: '%s' must be an object or null", path, key);
    char prefix[64];
    snprintf(prefix, sizeof prefix, "%s.", key);
    if (read_double(rope, "rope_theta", prefix, false, true, &cfg->rope_theta, path, err)) return -1;
    const char *type_key = "rope_type";
    const cJSON *type = get_key(rope, type_key);
    if (!type) type = get_key(rope, type_key = "type");
    if (!type) {
        /* rope_parameters may hold only rope_theta; a rope_scaling needs a type. */
        if (strcmp(key, "rope_scaling") == 0)
            return ct_fail(err, "%s: missing required key '%s.rope_type'", path, key);
        return 0;
    }
    if (!cJSON_IsString(type)) return ct_fail(err, "%s: '%s.%s' must be a string", path, key, type_key);
    if (strcmp(type->valuestring, "default") == 0) {
        cfg->rope_scaling = ROPE_SCALING_NONE;
        return 0;
    }
    if (strcmp(type->valuestring, "llama3") != 0)
        return ct_fail(err, "%s: '%s.%s' is '%s', which ctune does not support (supported: default, llama3)",
                       path, key, type_key, type->valuestring);
    cfg->rope_scaling = ROPE_SCALING_LLAMA3;
    if (read_double(rope, "factor", prefix, true, true, &cfg->rope_factor, path, err) ||
        read_double(rope, "low_freq_factor", prefix, true, true, &cfg->rope_low_freq_factor, path, err) ||
        read_double(rope, "high_freq_factor", prefix, true, true, &cfg->rope_high_freq_factor, path, err) ||
        read_int(rope, "original_max_position_embeddings", prefix, true, 1,
                 &cfg->rope_original_max_position_embeddings, path, err))
        return -1;
    if (cfg->rope_high_freq_factor <= cfg->rope_low_freq_factor)
        return ct_fail(err, "%s: '%s.high_freq_factor' must be greater than '%s.low_freq_factor'",
                       path, key, key);
    return 0;
}

static int read_token_ids(model_config *cfg, const cJSON *root, const char *path, ct_error *err) {
    if (read_int(root, "bos_token_id", "", false, 0, &cfg->bos_token_id, path, err) ||
        read_int(root, "pad_token_id", "", false, 0, &cfg->pad_token_id, path, err))
        return -1;
    const cJSON *eos = get_key(root, "eos_token_id");
    if (!eos) return 0;
    if (cJSON_IsArray(eos)) {
        int n = cJSON_GetArraySize(eos);
        if (n > MODEL_MAX_EOS)
            return ct_fail(err, "%s: 'eos_token_id' has %d entries (at most %d supported)", path, n,
                           MODEL_MAX_EOS);
        const cJSON *item;
        cfg->n_eos = 0;
        cJSON_ArrayForEach(item, eos) {
            if (!is_integer(item) || item->valuedouble < 0)
                return ct_fail(err, "%s: 'eos_token_id' entries must be non-negative integers", path);
            cfg->eos_token_ids[cfg->n_eos++] = (int)item->valuedouble;
        }
        return 0;
    }
    if (!is_integer(eos) || eos->valuedouble < 0)
        return ct_fail(err, "%s: 'eos_token_id' must be a non-negative integer or a list of them", path);
    cfg->n_eos = 1;
    cfg->eos_token_ids[0] = (int)eos->valuedouble;
    return 0;
}

static void set_type_defaults(model_config *cfg) {
    cfg->rms_norm_eps = 1e-6;
    cfg->rope_theta = 10000.0;
    cfg->rope_scaling = ROPE_SCALING_NONE;
    cfg->initializer_range = 0.02;
    cfg->max_position_embeddings = 2048;
    cfg->bos_token_id = -1;
    cfg->pad_token_id = -1;
    cfg->n_eos = 0;
    snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "float32");
}

static int parse_config(model_config *cfg, const cJSON *root, const char *path, ct_error *err) {
    if (!cJSON_IsObject(root)) return ct_fail(err, "%s: top level must be a JSON object", path);
    const cJSON *type = get_key(root, "model_type");
    if (!type) return ct_fail(err, "%s: missing required key 'model_type'", path);
    if (!cJSON_IsString(type)) return ct_fail(err, "%s: 'model_type' must be a string", path);
    const char *mt = type->valuestring;
    bool llama = strcmp(mt, "llama") == 0, mistral = strcmp(mt, "mistral") == 0;
    bool qwen2 = strcmp(mt, "qwen2") == 0, qwen3 = strcmp(mt, "qwen3") == 0;
    if (!llama && !mistral && !qwen2 && !qwen3)
        return ct_fail(err, "%s: 'model_type' is '%s'; supported: llama, mistral, qwen2, qwen3", path, mt);
    snprintf(cfg->model_type, sizeof cfg->model_type, "%s", mt);
    set_type_defaults(cfg);

    if (read_int(root, "vocab_size", "", true, 1, &cfg->vocab_size, path, err) ||
        read_int(root, "hidden_size", "", true, 1, &cfg->hidden_size, path, err) ||
        read_int(root, "intermediate_size", "", true, 1, &cfg->intermediate_size, path, err) ||
        read_int(root, "num_hidden_layers", "", true, 1, &cfg->num_hidden_layers, path, err) ||
        read_int(root, "num_attention_heads", "", true, 1, &cfg->num_attention_heads, path, err))
        return -1;
    /* transformers' per-class defaults for keys a file may omit */
    cfg->num_key_value_heads = llama ? cfg->num_attention_heads : mistral ? 8 : 32;
    cfg->head_dim = qwen3 ? 128 : cfg->hidden_size / cfg->num_attention_heads;
    if (read_int(root, "num_key_value_heads", "", false, 1, &cfg->num_key_value_heads, path, err) ||
        read_int(root, "head_dim", "", false, 1, &cfg->head_dim, path, err) ||
        read_int(root, "max_position_embeddings", "", false, 1, &cfg->max_position_embeddings, path, err) ||
        read_double(root, "rms_norm_eps", "", false, true, &cfg->rms_norm_eps, path, err) ||
        read_double(root, "initializer_range", "", false, false, &cfg->initializer_range, path, err) ||
        read_bool(root, "tie_word_embeddings", &cfg->tie_word_embeddings, path, err) ||
        read_token_ids(cfg, root, path, err))
        return -1;
    if (!get_key(root, "head_dim") && !qwen3 && cfg->hidden_size % cfg->num_attention_heads != 0)
        return ct_fail(err, "%s: 'hidden_size' (%d) must be a multiple of 'num_attention_heads' (%d)",
                       path, cfg->hidden_size, cfg->num_attention_heads);
    if (cfg->num_attention_heads % cfg->num_key_value_heads != 0)
        return ct_fail(err, "%s: 'num_attention_heads' (%d) must be a multiple of 'num_key_value_heads' (%d)",
                       path, cfg->num_attention_heads, cfg->num_key_value_heads);
    if (cfg->head_dim % 2 != 0)
        return ct_fail(err, "%s: 'head_dim' (%d) must be even for rotary embeddings", path, cfg->head_dim);

    const cJSON *act = get_key(root, "hidden_act");
    if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu") != 0))
        return ct_fail(err, "%s: 'hidden_act' must be \"silu\" (the only activation ctune implements)", path);

    bool sliding = false;
    if (read_bool(root, "use_sliding_window", &sliding, path, err)) return -1;
    if (sliding)
        return ct_fail(err, "%s: 'use_sliding_window' is true; ctune implements full causal attention only", path);

    bool attention_bias = false, mlp_bias = false;
    if (llama || qwen3) {
        if (read_bool(root, "attention_bias", &attention_bias, path, err)) return -1;
    }
    if (llama && read_bool(root, "mlp_bias", &mlp_bias, path, err)) return -1;
    cfg->attention_bias = qwen2 ? true : attention_bias;
    cfg->o_proj_bias = qwen2 ? false : attention_bias;
    cfg->mlp_bias = mlp_bias;
    cfg->qk_norm = qwen3;

    if (read_double(root, "rope_theta", "", false, true, &cfg->rope_theta, path, err)) return -1;
    const cJSON *scaling = get_key(root, "rope_scaling");
    if (scaling && read_rope_object(cfg, scaling, "rope_scaling", path, err)) return -1;
    const cJSON *params = get_key(root, "rope_parameters");
    if (params && read_rope_object(cfg, params, "rope_parameters", path, err)) return -1;

    const cJSON *dtype = get_key(root, "torch_dtype");
    if (!dtype) dtype = get_key(root, "dtype");
    if (dtype) {
        if (!cJSON_IsString(dtype) || (strcmp(dtype->valuestring, "float32") != 0 &&
                                       strcmp(dtype->valuestring, "bfloat16") != 0 &&
                                       strcmp(dtype->valuestring, "float16") != 0))
            return ct_fail(err, "%s: '%s' must be \"float32\", \"bfloat16\" or \"float16\"", path,
                           dtype->string);
        snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "%s", dtype->valuestring);
    }
    return 0;
}

/* The dotted path of the first number that overflowed to infinity (1e999), or false. Such a
 * number in a key ctune does not read would be kept and written back as Infinity, which
 * Python reads but cJSON does not: the file ctune writes would not load again. */
static bool find_infinite(const cJSON *item, char *where, size_t size) {
    if (cJSON_IsNumber(item) && !isfinite(item->valuedouble)) return true;
    int index = 0;
    size_t used = strlen(where);
    for (const cJSON *c = item->child; c && (cJSON_IsObject(item) || cJSON_IsArray(item)); c = c->next, index++) {
        if (cJSON_IsObject(item))
            snprintf(where + used, size - used, "%s%.64s", used ? "." : "", c->string);
        else
            snprintf(where + used, size - used, "[%d]", index);
        if (find_infinite(c, where, size)) return true;
        where[used] = '\0';
    }
    return false;
}

int model_config_load(model_config *cfg, const char *path, ct_error *err) {
    memset(cfg, 0, sizeof *cfg);
    cJSON *root;
    if (jsonfile_read(path, &root, err)) return -1;
    char where[512] = "";
    if (cJSON_IsObject(root) && find_infinite(root, where, sizeof where)) {
        cJSON_Delete(root);
        return ct_fail(err, "%s: '%s' is a number beyond the range of a double", path, where);
    }
    if (parse_config(cfg, root, path, err)) {
        cJSON_Delete(root);
        memset(cfg, 0, sizeof *cfg);
        return -1;
    }
    cfg->raw_json = root;
    return 0;
}

int model_config_preset(model_config *cfg, const char *preset, ct_error *err) {
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->model_type, sizeof cfg->model_type, "llama");
    set_type_defaults(cfg);
    if (strcmp(preset, "tiny") == 0) {
        cfg->vocab_size = 259; /* the 256 bytes, then the special tokens */
        cfg->hidden_size = 128;
        cfg->intermediate_size = 384;
        cfg->num_hidden_layers = 4;
        cfg->num_attention_heads = 4;
        cfg->max_position_embeddings = 256;
        /* ~1/sqrt(hidden): transformers' 0.02 suits hidden sizes in the thousands; at 128 it
         * caps the tied logits near +-2.6, which a frozen base (LoRA) can never sharpen. */
        cfg->initializer_range = 0.08;
    } else if (strcmp(preset, "bench-20m") == 0) {
        /* ~21.7M parameters when tied like SmolLM, the benchmark's intended size. */
        cfg->vocab_size = 32000;
        cfg->hidden_size = 384;
        cfg->intermediate_size = 1024;
        cfg->num_hidden_layers = 6;
        cfg->num_attention_heads = 6;
        cfg->max_position_embeddings = 2048;
    } else {
        return ct_fail(err, "unknown model preset '%s' (expected tiny or bench-20m)", preset);
    }
    cfg->num_key_value_heads = 2;
    cfg->tie_word_embeddings = true;
    /* The byte-level tokenizer of preset folders: bos 256, eos 257, pad 258. */
    cfg->bos_token_id = 256;
    cfg->n_eos = 1;
    cfg->eos_token_ids[0] = 257;
    cfg->pad_token_id = 258;
    cfg->head_dim = cfg->hidden_size / cfg->num_attention_heads;
    return 0;
}

void model_config_free(model_config *cfg) {
    if (cfg->raw_json) cJSON_Delete((cJSON *)cfg->raw_json);
    cfg->raw_json = NULL;
}

/* transformers computes 1 / theta^(2j/dim) in float32, then (llama3) compares wavelengths
 * 2*pi/inv_freq in float32; the same operation order is kept here. */
void model_rope_inv_freq(const model_config *cfg, float *inv_freq) {
    int dim = cfg->head_dim, half = dim / 2;
    float theta = (float)cfg->rope_theta;
    for (int j = 0; j < half; j++) {
        float exponent = (float)(2 * j) / (float)dim;
        float inv = 1.0f / powf(theta, exponent);
        if (cfg->rope_scaling == ROPE_SCALING_LLAMA3) {
            float factor = (float)cfg->rope_factor;
            float low = (float)cfg->rope_low_freq_factor, high = (float)cfg->rope_high_freq_factor;
            float old_ctx = (float)cfg->rope_original_max_position_embeddings;
            float low_wavelen = old_ctx / low, high_wavelen = old_ctx / high;
            float wavelen = (float)(2.0 * M_PI) / inv;
            if (wavelen > low_wavelen) {
                inv = inv / factor;
            } else if (!(wavelen < high_wavelen)) {
                float smooth = (old_ctx / wavelen - low) / (high - low);
                inv = (1.0f - smooth) * inv / factor + smooth * inv;
            }
        }
        inv_freq[j] = inv;
    }
}

/* ---------------------------------------------------------------- writing */

/* Python's repr of a float: the shortest digits that read back as the same double, fixed
 * notation for exponents -4..15 (always with a '.'), otherwise scientific ("1e-05"). Keys
 * that transformers types as float must be written so ("10000.0", not "10000"). */
static void format_float(double v, char *out, size_t size) {
    if (!isfinite(v)) {
        snprintf(out, size, "%s", isnan(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity");
        return;
    }
    char sci[64];
    int digits = 1;
    for (; digits <= 17; digits++) {
        snprintf(sci, sizeof sci, "%.*e", digits - 1, v);
        if (strtod(sci, NULL) == v) break;
    }
    const char *e = strchr(sci, 'e');
    int exponent = e ? atoi(e + 1) : 0;
    if (exponent < -4 || exponent >= 16) {
        snprintf(out, size, "%s", sci);
        return;
    }
    int decimals = digits - 1 - exponent;
    snprintf(out, size, "%.*f", decimals > 0 ? decimals : 0, v);
    if (!strchr(out, '.')) strncat(out, ".0", size - strlen(out) - 1);
}

static int compare_keys(const void *a, const void *b) {
    return strcmp((*(const cJSON *const *)a)->string, (*(const cJSON *const *)b)->string);
}

static void indent(textbuf *b, int depth) {
    for (int i = 0; i < depth; i++) textbuf_puts(b, "  ");
}

/* json.dumps(indent=2, sort_keys=True) layout, as transformers writes config.json. */
static void put_value(textbuf *b, const cJSON *item, int depth) {
    char num[64];
    if (cJSON_IsRaw(item)) {
        textbuf_puts(b, item->valuestring);
    } else if (cJSON_IsNull(item)) {
        textbuf_puts(b, "null");
    } else if (cJSON_IsBool(item)) {
        textbuf_puts(b, cJSON_IsTrue(item) ? "true" : "false");
    } else if (cJSON_IsNumber(item)) {
        double v = item->valuedouble;
        if (v == floor(v) && fabs(v) < 1e15) snprintf(num, sizeof num, "%.0f", v);
        else format_float(v, num, sizeof num);
        textbuf_puts(b, num);
    } else if (cJSON_IsString(item)) {
        textbuf_json_string(b, item->valuestring);
    } else if (cJSON_IsArray(item) || cJSON_IsObject(item)) {
        bool object = cJSON_IsObject(item);
        int n = cJSON_GetArraySize(item);
        if (n == 0) {
            textbuf_puts(b, object ? "{}" : "[]");
            return;
        }
        const cJSON **children = malloc(sizeof *children * (size_t)n);
        if (!children) {
            b->failed = true;
            return;
        }
        int i = 0;
        const cJSON *child;
        cJSON_ArrayForEach(child, item) children[i++] = child;
        if (object) qsort(children, (size_t)n, sizeof *children, compare_keys);
        textbuf_puts(b, object ? "{\n" : "[\n");
        for (i = 0; i < n; i++) {
            indent(b, depth + 1);
            if (object) {
                textbuf_json_string(b, children[i]->string);
                textbuf_puts(b, ": ");
            }
            put_value(b, children[i], depth + 1);
            textbuf_puts(b, i + 1 < n ? ",\n" : "\n");
        }
        indent(b, depth);
        textbuf_puts(b, object ? "}" : "]");
        free(children);
    }
}

static void set_item(cJSON *obj, const char *key, cJSON *item) {
    if (cJSON_GetObjectItemCaseSensitive(obj, key)) cJSON_ReplaceItemInObjectCaseSensitive(obj, key, item);
    else cJSON_AddItemToObject(obj, key, item);
}

static cJSON *float_item(double v) {
    char text[64];
    format_float(v, text, sizeof text);
    return cJSON_CreateRaw(text);
}

static cJSON *token_item(int id) { return id >= 0 ? cJSON_CreateNumber(id) : cJSON_CreateNull(); }

static const char *architecture_of(const char *model_type) {
    if (strcmp(model_type, "mistral") == 0) return "MistralForCausalLM";
    if (strcmp(model_type, "qwen2") == 0) return "Qwen2ForCausalLM";
    if (strcmp(model_type, "qwen3") == 0) return "Qwen3ForCausalLM";
    return "LlamaForCausalLM";
}

int model_config_write(const model_config *cfg, const char *path, ct_error *err) {
    cJSON *root = cfg->raw_json ? cJSON_Duplicate((const cJSON *)cfg->raw_json, true) : cJSON_CreateObject();
    if (!root) return ct_fail(err, "%s: out of memory building config.json", path);
    if (!cJSON_GetObjectItemCaseSensitive(root, "architectures")) {
        const char *arch = architecture_of(cfg->model_type);
        set_item(root, "architectures", cJSON_CreateStringArray(&arch, 1));
    }
    set_item(root, "model_type", cJSON_CreateString(cfg->model_type));
    set_item(root, "vocab_size", cJSON_CreateNumber(cfg->vocab_size));
    set_item(root, "hidden_size", cJSON_CreateNumber(cfg->hidden_size));
    set_item(root, "intermediate_size", cJSON_CreateNumber(cfg->intermediate_size));
    set_item(root, "num_hidden_layers", cJSON_CreateNumber(cfg->num_hidden_layers));
    set_item(root, "num_attention_heads", cJSON_CreateNumber(cfg->num_attention_heads));
    set_item(root, "num_key_value_heads", cJSON_CreateNumber(cfg->num_key_value_heads));
    set_item(root, "head_dim", cJSON_CreateNumber(cfg->head_dim));
    set_item(root, "hidden_act", cJSON_CreateString("silu"));
    set_item(root, "max_position_embeddings", cJSON_CreateNumber(cfg->max_position_embeddings));
    set_item(root, "rms_norm_eps", float_item(cfg->rms_norm_eps));
    set_item(root, "initializer_range", float_item(cfg->initializer_range));
    set_item(root, "rope_theta", float_item(cfg->rope_theta));
    cJSON_DeleteItemFromObjectCaseSensitive(root, "rope_parameters"); /* legacy keys only */
    if (cfg->rope_scaling == ROPE_SCALING_LLAMA3) {
        cJSON *scaling = cJSON_CreateObject();
        cJSON_AddItemToObject(scaling, "rope_type", cJSON_CreateString("llama3"));
        cJSON_AddItemToObject(scaling, "factor", float_item(cfg->rope_factor));
        cJSON_AddItemToObject(scaling, "low_freq_factor", float_item(cfg->rope_low_freq_factor));
        cJSON_AddItemToObject(scaling, "high_freq_factor", float_item(cfg->rope_high_freq_factor));
        cJSON_AddNumberToObject(scaling, "original_max_position_embeddings",
                                cfg->rope_original_max_position_embeddings);
        set_item(root, "rope_scaling", scaling);
    } else {
        set_item(root, "rope_scaling", cJSON_CreateNull());
    }
    set_item(root, "tie_word_embeddings", cJSON_CreateBool(cfg->tie_word_embeddings));
    bool llama = strcmp(cfg->model_type, "llama") == 0;
    if (llama || strcmp(cfg->model_type, "qwen3") == 0)
        set_item(root, "attention_bias", cJSON_CreateBool(cfg->o_proj_bias));
    if (llama) set_item(root, "mlp_bias", cJSON_CreateBool(cfg->mlp_bias));
    set_item(root, "bos_token_id", token_item(cfg->bos_token_id));
    if (cfg->n_eos == 1) {
        set_item(root, "eos_token_id", cJSON_CreateNumber(cfg->eos_token_ids[0]));
    } else if (cfg->n_eos > 1) {
        set_item(root, "eos_token_id", cJSON_CreateIntArray(cfg->eos_token_ids, cfg->n_eos));
    } else {
        set_item(root, "eos_token_id", cJSON_CreateNull());
    }
    set_item(root, "pad_token_id", token_item(cfg->pad_token_id));
    bool new_style_dtype = cJSON_GetObjectItemCaseSensitive(root, "dtype") &&
                           !cJSON_GetObjectItemCaseSensitive(root, "torch_dtype");
    set_item(root, new_style_dtype ? "dtype" : "torch_dtype", cJSON_CreateString(cfg->torch_dtype));

    textbuf b = {0};
    put_value(&b, root, 0);
    textbuf_puts(&b, "\n");
    cJSON_Delete(root);
    int rc = b.failed ? ct_fail(err, "%s: out of memory formatting config.json", path)
                      : write_file_atomic(path, b.data, b.len, err);
    textbuf_free(&b);
    return rc;
}
