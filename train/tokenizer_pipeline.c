/* tokenizer_pipeline: loading the stages around the BPE model from tokenizer.json
 * (normalizer, pre_tokenizer, post_processor, decoder). Each unsupported type is an error
 * naming its JSON path, so a tokenizer is never silently encoded differently. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/tokenizer_impl.h"

/* The GPT-2 split regex that ByteLevel(use_regex=true) applies. */
static const char gpt2_regex[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static char *dup_or_null(const char *s, size_t *len) {
    *len = s ? strlen(s) : 0;
    return s ? strdup(s) : NULL;
}

/* {"String": s} or {"Regex": r} (Split, Replace); exactly one of *literal / *regex is set. */
static int load_pattern(const tokenizer *tok, const cJSON *node, const char *where, char **literal,
                        size_t *literal_len, pcre2_code **regex, ct_error *err) {
    const cJSON *pattern = cJSON_GetObjectItemCaseSensitive(node, "pattern");
    const cJSON *re = cJSON_GetObjectItemCaseSensitive(pattern, "Regex");
    const cJSON *str = cJSON_GetObjectItemCaseSensitive(pattern, "String");
    if (cJSON_IsString(re)) {
        *regex = tok_compile_regex(re->valuestring, strlen(re->valuestring), err);
        return *regex ? 0 : ct_error_prefix(err, "%s: %s.pattern.Regex", tok->path, where);
    }
    if (cJSON_IsString(str)) {
        *literal = dup_or_null(str->valuestring, literal_len);
        return *literal ? 0 : ct_fail(err, "out of memory");
    }
    return ct_fail(err, "%s: %s.pattern: expected {\"Regex\": ...} or {\"String\": ...}", tok->path, where);
}

/* ---------------------------------------------------------------- normalizer */

static int add_norm(tokenizer *tok, tok_norm step, ct_error *err) {
    tok_norm *grown = realloc(tok->norm, (tok->n_norm + 1) * sizeof *grown);
    if (!grown) {
        free(step.pattern);
        free(step.content);
        if (step.regex) pcre2_code_free(step.regex);
        return ct_fail(err, "out of memory");
    }
    tok->norm = grown;
    tok->norm[tok->n_norm++] = step;
    return 0;
}

static int load_normalizer(tokenizer *tok, const cJSON *node, const char *where, ct_error *err) {
    if (!node || cJSON_IsNull(node)) return 0;
    const char *type = tok_json_type(node);
    tok_norm step = {0};
    if (type && strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(node, "normalizers");
        if (!cJSON_IsArray(list)) return ct_fail(err, "%s: %s.normalizers: expected an array", tok->path, where);
        size_t i = 0;
        for (const cJSON *e = list->child; e; e = e->next, i++) {
            char sub[128];
            snprintf(sub, sizeof sub, "%s.normalizers[%zu]", where, i);
            if (load_normalizer(tok, e, sub, err)) return -1;
        }
        return 0;
    }
    if (type && strcmp(type, "NFC") == 0) {
        step.kind = NORM_NFC;
        return add_norm(tok, step, err);
    }
    if (type && strcmp(type, "Prepend") == 0) {
        const char *prefix;
        if (tok_json_string(tok, node, where, "prepend", &prefix, err)) return -1;
        if (!prefix) return ct_fail(err, "%s: %s.prepend: missing", tok->path, where);
        step.kind = NORM_PREPEND;
        step.content = dup_or_null(prefix, &step.content_len);
        return step.content ? add_norm(tok, step, err) : ct_fail(err, "out of memory");
    }
    if (type && strcmp(type, "Replace") == 0) {
        const char *content;
        step.kind = NORM_REPLACE;
        if (tok_json_string(tok, node, where, "content", &content, err)) return -1;
        if (!content) return ct_fail(err, "%s: %s.content: missing", tok->path, where);
        if (load_pattern(tok, node, where, &step.pattern, &step.pattern_len, &step.regex, err)) return -1;
        step.content = dup_or_null(content, &step.content_len);
        return add_norm(tok, step, err);
    }
    return ct_fail(err, "%s: %s.type: \"%s\" is not supported yet (ctune reads NFC, Prepend, Replace "
                   "and Sequence)", tok->path, where, type ? type : "(missing)");
}

/* ---------------------------------------------------------------- pre-tokenizer */

static int add_pretok(tokenizer *tok, tok_pretok step, ct_error *err) {
    tok_pretok *grown = realloc(tok->pretok, (tok->n_pretok + 1) * sizeof *grown);
    if (!grown) {
        if (step.regex) pcre2_code_free(step.regex);
        free(step.literal);
        return ct_fail(err, "out of memory");
    }
    tok->pretok = grown;
    tok->pretok[tok->n_pretok++] = step;
    return 0;
}

static int load_split(tokenizer *tok, const cJSON *node, const char *where, ct_error *err) {
    tok_pretok step = {.kind = PRETOK_SPLIT};
    const cJSON *behavior = cJSON_GetObjectItemCaseSensitive(node, "behavior");
    static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious",
                                        "MergedWithNext", "Contiguous"};
    int b = -1;
    for (int i = 0; i < 5 && cJSON_IsString(behavior); i++)
        if (strcmp(behavior->valuestring, names[i]) == 0) b = i;
    if (b < 0)
        return ct_fail(err, "%s: %s.behavior: expected Removed, Isolated, MergedWithPrevious, "
                       "MergedWithNext or Contiguous", tok->path, where);
    step.behavior = (tok_split_behavior)b;
    if (tok_json_bool(tok, node, where, "invert", false, &step.invert, err) ||
        load_pattern(tok, node, where, &step.literal, &step.literal_len, &step.regex, err))
        return -1;
    return add_pretok(tok, step, err);
}

static int load_metaspace(tokenizer *tok, const cJSON *node, const char *where, ct_error *err) {
    tok_pretok step = {.kind = PRETOK_METASPACE, .behavior = SPLIT_MERGED_WITH_NEXT};
    const char *replacement, *scheme;
    bool add_prefix_space;
    if (tok_json_string(tok, node, where, "replacement", &replacement, err) ||
        tok_json_string(tok, node, where, "prepend_scheme", &scheme, err) ||
        tok_json_bool(tok, node, where, "add_prefix_space", true, &add_prefix_space, err) ||
        tok_json_bool(tok, node, where, "split", true, &step.split, err))
        return -1;
    uint32_t cp;
    if (!replacement || utf8_next((const unsigned char *)replacement, strlen(replacement), &cp) !=
                        (int)strlen(replacement))
        return ct_fail(err, "%s: %s.replacement: expected one character", tok->path, where);
    /* Files older than prepend_scheme carry add_prefix_space instead. */
    step.prepend = add_prefix_space ? PREPEND_ALWAYS : PREPEND_NEVER;
    if (scheme && strcmp(scheme, "always") == 0) step.prepend = PREPEND_ALWAYS;
    else if (scheme && strcmp(scheme, "first") == 0) step.prepend = PREPEND_FIRST;
    else if (scheme && strcmp(scheme, "never") == 0) step.prepend = PREPEND_NEVER;
    else if (scheme)
        return ct_fail(err, "%s: %s.prepend_scheme: expected always, first or never", tok->path, where);
    step.literal = dup_or_null(replacement, &step.literal_len);
    return step.literal ? add_pretok(tok, step, err) : ct_fail(err, "out of memory");
}

static int load_pre_tokenizer(tokenizer *tok, const cJSON *node, const char *where, ct_error *err) {
    if (!node || cJSON_IsNull(node)) return 0;
    const char *type = tok_json_type(node);
    if (!type) return ct_fail(err, "%s: %s.type: missing", tok->path, where);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(node, "pretokenizers");
        if (!cJSON_IsArray(list)) return ct_fail(err, "%s: %s.pretokenizers: expected an array", tok->path, where);
        size_t i = 0;
        for (const cJSON *e = list->child; e; e = e->next, i++) {
            char sub[128];
            snprintf(sub, sizeof sub, "%s.pretokenizers[%zu]", where, i);
            if (load_pre_tokenizer(tok, e, sub, err)) return -1;
        }
        return 0;
    }
    if (strcmp(type, "Split") == 0) return load_split(tok, node, where, err);
    if (strcmp(type, "Metaspace") == 0) return load_metaspace(tok, node, where, err);
    if (strcmp(type, "ByteLevel") == 0) {
        tok_pretok step = {.kind = PRETOK_BYTE_LEVEL};
        bool use_regex;
        if (tok_json_bool(tok, node, where, "add_prefix_space", true, &step.add_prefix_space, err) ||
            tok_json_bool(tok, node, where, "use_regex", true, &use_regex, err))
            return -1;
        if (use_regex && !(step.regex = tok_compile_regex(gpt2_regex, strlen(gpt2_regex), err)))
            return -1;
        tok->byte_level = true;
        return add_pretok(tok, step, err);
    }
    if (strcmp(type, "Digits") == 0) {
        /* char::is_numeric runs: isolated one by one, or contiguous */
        bool individual;
        if (tok_json_bool(tok, node, where, "individual_digits", false, &individual, err)) return -1;
        const char *pattern = individual ? "\\p{N}" : "\\p{N}+";
        tok_pretok step = {.kind = PRETOK_SPLIT, .behavior = SPLIT_ISOLATED};
        if (!(step.regex = tok_compile_regex(pattern, strlen(pattern), err))) return -1;
        return add_pretok(tok, step, err);
    }
    return ct_fail(err, "%s: %s.type: \"%s\" is not supported yet (ctune reads ByteLevel, Split, "
                   "Metaspace, Digits and Sequence)", tok->path, where, type);
}

/* ---------------------------------------------------------------- post-processor */

/* cls/sep given as ["token", id] (RobertaProcessing, BertProcessing). */
static int special_pair_id(tokenizer *tok, const cJSON *node, const char *where, const char *key,
                           tok_ids *out, ct_error *err) {
    const cJSON *pair = cJSON_GetObjectItemCaseSensitive(node, key);
    char sub[128];
    snprintf(sub, sizeof sub, "%s.%s[1]", where, key);
    int32_t id;
    if (!cJSON_IsArray(pair) || cJSON_GetArraySize(pair) != 2)
        return ct_fail(err, "%s: %s.%s: expected [\"token\", id]", tok->path, where, key);
    if (tok_json_id(tok, cJSON_GetArrayItem(pair, 1), sub, &id, err)) return -1;
    return tok_ids_push(out, id, err);
}

static int load_template(tokenizer *tok, const cJSON *node, const char *where, tok_ids *prefix,
                         tok_ids *suffix, ct_error *err) {
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(node, "single");
    const cJSON *specials = cJSON_GetObjectItemCaseSensitive(node, "special_tokens");
    if (!cJSON_IsArray(single)) return ct_fail(err, "%s: %s.single: expected an array", tok->path, where);
    bool seen_sequence = false;
    size_t i = 0;
    for (const cJSON *e = single->child; e; e = e->next, i++) {
        if (cJSON_GetObjectItemCaseSensitive(e, "Sequence")) {
            seen_sequence = true;
            continue;
        }
        const cJSON *special = cJSON_GetObjectItemCaseSensitive(e, "SpecialToken");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(special, "id");
        if (!cJSON_IsString(name))
            return ct_fail(err, "%s: %s.single[%zu]: expected {\"SpecialToken\": {\"id\": ...}} or "
                           "{\"Sequence\": ...}", tok->path, where, i);
        const cJSON *entry = cJSON_GetObjectItemCaseSensitive(specials, name->valuestring);
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(entry, "ids");
        if (!cJSON_IsArray(ids))
            return ct_fail(err, "%s: %s.special_tokens[\"%.60s\"].ids: missing", tok->path, where,
                           name->valuestring);
        size_t k = 0;
        for (const cJSON *v = ids->child; v; v = v->next, k++) {
            char sub[200];
            snprintf(sub, sizeof sub, "%s.special_tokens[\"%.60s\"].ids[%zu]", where, name->valuestring, k);
            int32_t id;
            if (tok_json_id(tok, v, sub, &id, err) || tok_ids_push(seen_sequence ? suffix : prefix, id, err))
                return -1;
        }
    }
    return 0;
}

/* Collects the ids a post-processor puts before and after a single sequence. */
static int load_post(tokenizer *tok, const cJSON *node, const char *where, tok_ids *prefix,
                     tok_ids *suffix, ct_error *err) {
    if (!node || cJSON_IsNull(node)) return 0;
    const char *type = tok_json_type(node);
    if (!type) return ct_fail(err, "%s: %s.type: missing", tok->path, where);
    if (strcmp(type, "ByteLevel") == 0) return 0; /* offsets only */
    if (strcmp(type, "TemplateProcessing") == 0) return load_template(tok, node, where, prefix, suffix, err);
    if (strcmp(type, "RobertaProcessing") == 0 || strcmp(type, "BertProcessing") == 0)
        return special_pair_id(tok, node, where, "cls", prefix, err) ||
                       special_pair_id(tok, node, where, "sep", suffix, err) ? -1 : 0;
    if (strcmp(type, "Sequence") != 0)
        return ct_fail(err, "%s: %s.type: \"%s\" is not supported yet (ctune reads "
                       "TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing and Sequence)",
                       tok->path, where, type);
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(node, "processors");
    if (!cJSON_IsArray(list)) return ct_fail(err, "%s: %s.processors: expected an array", tok->path, where);
    size_t i = 0;
    for (const cJSON *e = list->child; e; e = e->next, i++) {
        char sub[128];
        snprintf(sub, sizeof sub, "%s.processors[%zu]", where, i);
        tok_ids p = {0}, s = {0};
        /* A later processor wraps the result of the earlier ones. */
        int rc = load_post(tok, e, sub, &p, &s, err);
        rc = rc ? rc : tok_ids_append(&p, prefix, err);
        rc = rc ? rc : tok_ids_append(suffix, &s, err);
        if (!rc) {
            free(prefix->data);
            *prefix = p;
            p.data = NULL;
        }
        free(p.data);
        free(s.data);
        if (rc) return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- decoder */

static int add_dec(tokenizer *tok, tok_dec step, ct_error *err) {
    tok_dec *grown = realloc(tok->dec, (tok->n_dec + 1) * sizeof *grown);
    if (!grown) {
        free(step.pattern);
        free(step.content);
        if (step.regex) pcre2_code_free(step.regex);
        return ct_fail(err, "out of memory");
    }
    tok->dec = grown;
    tok->dec[tok->n_dec++] = step;
    return 0;
}

static int load_decoder(tokenizer *tok, const cJSON *node, const char *where, ct_error *err) {
    if (!node || cJSON_IsNull(node)) return 0;
    tok->has_decoder = true;
    const char *type = tok_json_type(node);
    tok_dec step = {0};
    if (!type) return ct_fail(err, "%s: %s.type: missing", tok->path, where);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(node, "decoders");
        if (!cJSON_IsArray(list)) return ct_fail(err, "%s: %s.decoders: expected an array", tok->path, where);
        size_t i = 0;
        for (const cJSON *e = list->child; e; e = e->next, i++) {
            char sub[96];
            snprintf(sub, sizeof sub, "%s.decoders[%zu]", where, i);
            if (load_decoder(tok, e, sub, err)) return -1;
        }
        return 0;
    }
    if (strcmp(type, "ByteLevel") == 0) {
        step.kind = DEC_BYTE_LEVEL;
    } else if (strcmp(type, "ByteFallback") == 0) {
        step.kind = DEC_BYTE_FALLBACK;
    } else if (strcmp(type, "Fuse") == 0) {
        step.kind = DEC_FUSE;
    } else if (strcmp(type, "Replace") == 0) {
        const char *content;
        step.kind = DEC_REPLACE;
        if (tok_json_string(tok, node, where, "content", &content, err)) return -1;
        if (!content) return ct_fail(err, "%s: %s.content: missing", tok->path, where);
        if (load_pattern(tok, node, where, &step.pattern, &step.pattern_len, &step.regex, err)) return -1;
        step.content = dup_or_null(content, &step.content_len);
    } else if (strcmp(type, "Strip") == 0) {
        const char *content;
        const cJSON *start = cJSON_GetObjectItemCaseSensitive(node, "start");
        const cJSON *stop = cJSON_GetObjectItemCaseSensitive(node, "stop");
        step.kind = DEC_STRIP;
        if (tok_json_string(tok, node, where, "content", &content, err)) return -1;
        if (!content || !cJSON_IsNumber(start) || !cJSON_IsNumber(stop) || start->valueint < 0 ||
            stop->valueint < 0 ||
            utf8_next((const unsigned char *)content, strlen(content), &step.strip_char) != (int)strlen(content))
            return ct_fail(err, "%s: %s: expected {\"content\": one character, \"start\": n, \"stop\": n}",
                           tok->path, where);
        step.strip_start = start->valueint;
        step.strip_stop = stop->valueint;
    } else if (strcmp(type, "Metaspace") == 0) {
        const char *replacement, *scheme;
        bool add_prefix_space;
        step.kind = DEC_METASPACE;
        if (tok_json_string(tok, node, where, "replacement", &replacement, err) ||
            tok_json_string(tok, node, where, "prepend_scheme", &scheme, err) ||
            tok_json_bool(tok, node, where, "add_prefix_space", true, &add_prefix_space, err))
            return -1;
        if (!replacement || !replacement[0])
            return ct_fail(err, "%s: %s.replacement: expected one character", tok->path, where);
        step.prepend = scheme ? strcmp(scheme, "never") != 0 : add_prefix_space;
        step.pattern = dup_or_null(replacement, &step.pattern_len);
    } else {
        return ct_fail(err, "%s: %s.type: \"%s\" is not supported yet (ctune decodes ByteLevel, Metaspace, "
                       "Replace, ByteFallback, Fuse, Strip and Sequence)", tok->path, where, type);
    }
    if ((step.kind == DEC_REPLACE && !step.content) || (step.kind == DEC_METASPACE && !step.pattern))
        return ct_fail(err, "out of memory");
    return add_dec(tok, step, err);
}

/* ---------------------------------------------------------------- entry points */

int tok_load_pipeline(tokenizer *tok, const void *root, ct_error *err) {
    if (load_normalizer(tok, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), "normalizer", err) ||
        load_pre_tokenizer(tok, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), "pre_tokenizer", err) ||
        load_post(tok, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), "post_processor",
                  &tok->prefix, &tok->suffix, err) ||
        load_decoder(tok, cJSON_GetObjectItemCaseSensitive(root, "decoder"), "decoder", err))
        return -1;
    return 0;
}

void tok_free_pipeline(tokenizer *tok) {
    for (size_t i = 0; i < tok->n_norm; i++) {
        free(tok->norm[i].pattern);
        free(tok->norm[i].content);
        if (tok->norm[i].regex) pcre2_code_free(tok->norm[i].regex);
    }
    free(tok->norm);
    for (size_t i = 0; i < tok->n_pretok; i++) {
        if (tok->pretok[i].regex) pcre2_code_free(tok->pretok[i].regex);
        free(tok->pretok[i].literal);
    }
    free(tok->pretok);
    for (size_t i = 0; i < tok->n_dec; i++) {
        free(tok->dec[i].pattern);
        free(tok->dec[i].content);
        if (tok->dec[i].regex) pcre2_code_free(tok->dec[i].regex);
    }
    free(tok->dec);
    free(tok->prefix.data);
    free(tok->suffix.data);
}
