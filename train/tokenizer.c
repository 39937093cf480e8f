/* tokenizer: loading tokenizer.json (the model and the added tokens here, the other stages in
 * tokenizer_pipeline.c) and the public encode entry point; the stages themselves run in
 * tokenizer_split.c (added tokens, normalizers, pre-tokenizers) and tokenizer_bpe.c (BPE). */
#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/jsonfile.h"
#include "train/tokenizer_impl.h"

#define MAX_VOCAB (1 << 24) /* ids beyond this are a corrupt file, not a big vocabulary */

/* ---------------------------------------------------------------- JSON helpers */

const char *tok_json_type(const void *node) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(node, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

int tok_json_bool(const tokenizer *tok, const void *obj, const char *where, const char *key,
                  bool fallback, bool *out, ct_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) {
        *out = fallback;
        return 0;
    }
    if (!cJSON_IsBool(v)) return ct_fail(err, "%s: %s.%s: expected true or false", tok->path, where, key);
    *out = cJSON_IsTrue(v);
    return 0;
}

int tok_json_string(const tokenizer *tok, const void *obj, const char *where, const char *key,
                    const char **out, ct_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsString(v)) return ct_fail(err, "%s: %s.%s: expected a string", tok->path, where, key);
    *out = v->valuestring;
    return 0;
}

int tok_json_id(const tokenizer *tok, const void *value, const char *where, int32_t *out,
                ct_error *err) {
    const cJSON *v = value;
    *out = -1;
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= MAX_VOCAB ||
        v->valuedouble != (double)(int32_t)v->valuedouble)
        return ct_fail(err, "%s: %s: expected a token id (integer in [0, %d))", tok->path, where,
                       MAX_VOCAB);
    *out = (int32_t)v->valuedouble;
    return 0;
}

int tok_ids_append(tok_ids *to, const tok_ids *from, ct_error *err) {
    for (size_t i = 0; i < from->len; i++)
        if (tok_ids_push(to, from->data[i], err)) return -1;
    return 0;
}

/* ---------------------------------------------------------------- model */

static int load_vocab(tokenizer *tok, const cJSON *vocab, ct_error *err) {
    if (!cJSON_IsObject(vocab)) return ct_fail(err, "%s: model.vocab: expected an object {token: id}", tok->path);
    int32_t max_id = -1;
    size_t n = 0;
    for (const cJSON *e = vocab->child; e; e = e->next, n++) {
        char where[96];
        snprintf(where, sizeof where, "model.vocab[\"%.60s\"]", e->string);
        int32_t id;
        if (tok_json_id(tok, e, where, &id, err)) return -1;
        if (id > max_id) max_id = id;
    }
    tok->model_cap = max_id + 1;
    tok->model_str = calloc((size_t)tok->model_cap + 1, sizeof *tok->model_str);
    tok->model_len = calloc((size_t)tok->model_cap + 1, sizeof *tok->model_len);
    if (!tok->model_str || !tok->model_len) return ct_fail(err, "%s: out of memory for model.vocab", tok->path);
    if (tok_strmap_init(&tok->vocab, n, (const char *const *)tok->model_str, tok->model_len, err))
        return -1;
    for (const cJSON *e = vocab->child; e; e = e->next) {
        int32_t id = (int32_t)e->valuedouble;
        if (tok->model_str[id])
            return ct_fail(err, "%s: model.vocab: id %d is given to both \"%.60s\" and \"%.60s\"",
                           tok->path, id, tok->model_str[id], e->string);
        tok->model_str[id] = strdup(e->string);
        if (!tok->model_str[id]) return ct_fail(err, "%s: out of memory for model.vocab", tok->path);
        tok->model_len[id] = (uint32_t)strlen(e->string);
        if (tok_strmap_put(&tok->vocab, id) >= 0)
            return ct_fail(err, "%s: model.vocab: token \"%.60s\" appears twice", tok->path, e->string);
    }
    return 0;
}

static int32_t vocab_id(const tokenizer *tok, const char *s, size_t n) {
    return tok_strmap_get(&tok->vocab, s, n);
}

static int load_merges(tokenizer *tok, const cJSON *merges, int32_t **pairs, ct_error *err) {
    if (!merges || cJSON_IsNull(merges)) return 0;
    if (!cJSON_IsArray(merges)) return ct_fail(err, "%s: model.merges: expected an array", tok->path);
    size_t n = (size_t)cJSON_GetArraySize(merges);
    if (tok_mergemap_init(&tok->merges, n, err)) return -1;
    *pairs = malloc((n ? n : 1) * 2 * sizeof **pairs);
    if (!*pairs) return ct_fail(err, "%s: out of memory for %zu merges", tok->path, n);
    textbuf joined = {0};
    size_t rank = 0;
    for (const cJSON *m = merges->child; m; m = m->next, rank++) {
        const char *a, *b;
        size_t a_len, b_len;
        if (cJSON_IsString(m)) { /* legacy "a b" */
            const char *space = strchr(m->valuestring, ' ');
            if (!space || strchr(space + 1, ' ')) {
                free(joined.data);
                return ct_fail(err, "%s: model.merges[%zu]: expected \"left right\" (one space), got \"%.60s\"",
                               tok->path, rank, m->valuestring);
            }
            a = m->valuestring;
            a_len = (size_t)(space - a);
            b = space + 1;
            b_len = strlen(b);
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(m->child) &&
                   cJSON_IsString(m->child->next)) {
            a = m->child->valuestring;
            a_len = strlen(a);
            b = m->child->next->valuestring;
            b_len = strlen(b);
        } else {
            free(joined.data);
            return ct_fail(err, "%s: model.merges[%zu]: expected [\"left\", \"right\"] or \"left right\"",
                           tok->path, rank);
        }
        int32_t a_id = vocab_id(tok, a, a_len), b_id = vocab_id(tok, b, b_len);
        if (a_id < 0 || b_id < 0) {
            free(joined.data);
            return ct_fail(err, "%s: model.merges[%zu]: \"%.*s\" is not in model.vocab", tok->path,
                           rank, (int)(a_id < 0 ? a_len : b_len), a_id < 0 ? a : b);
        }
        size_t skip = tok->subword_prefix_len <= b_len ? tok->subword_prefix_len : b_len;
        joined.len = 0;
        if (tok_bytes_append(&joined, a, a_len, err) ||
            tok_bytes_append(&joined, b + skip, b_len - skip, err)) {
            free(joined.data);
            return -1;
        }
        int32_t new_id = vocab_id(tok, joined.data, joined.len);
        if (new_id < 0) {
            ct_fail(err, "%s: model.merges[%zu]: the merged token \"%.60s\" is not in model.vocab",
                    tok->path, rank, joined.data);
            free(joined.data);
            return -1;
        }
        tok_mergemap_put(&tok->merges, a_id, b_id, (uint32_t)rank, new_id);
        (*pairs)[2 * rank] = a_id;
        (*pairs)[2 * rank + 1] = b_id;
    }
    free(joined.data);
    tok->n_merges = rank;
    return 0;
}

static int load_model(tokenizer *tok, const cJSON *model, int32_t **pairs, ct_error *err) {
    if (!cJSON_IsObject(model)) return ct_fail(err, "%s: model: expected an object", tok->path);
    const char *type = tok_json_type(model);
    if (!type && !cJSON_GetObjectItemCaseSensitive(model, "merges"))
        return ct_fail(err, "%s: model.type: missing (expected \"BPE\")", tok->path);
    if (type && strcmp(type, "BPE") != 0)
        return ct_fail(err, "%s: model.type: \"%s\" is not supported yet (ctune reads BPE models)",
                       tok->path, type);
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (dropout && !cJSON_IsNull(dropout) && !(cJSON_IsNumber(dropout) && dropout->valuedouble == 0))
        return ct_fail(err, "%s: model.dropout: BPE dropout is not supported (set it to null)", tok->path);
    const char *unk, *prefix, *suffix;
    if (tok_json_bool(tok, model, "model", "ignore_merges", false, &tok->ignore_merges, err) ||
        tok_json_bool(tok, model, "model", "byte_fallback", false, &tok->byte_fallback, err) ||
        tok_json_bool(tok, model, "model", "fuse_unk", false, &tok->fuse_unk, err) ||
        tok_json_string(tok, model, "model", "unk_token", &unk, err) ||
        tok_json_string(tok, model, "model", "continuing_subword_prefix", &prefix, err) ||
        tok_json_string(tok, model, "model", "end_of_word_suffix", &suffix, err))
        return -1;
    if (prefix && !(tok->subword_prefix = strdup(prefix))) return ct_fail(err, "out of memory");
    if (suffix && !(tok->word_suffix = strdup(suffix))) return ct_fail(err, "out of memory");
    tok->subword_prefix_len = prefix ? strlen(prefix) : 0;
    tok->word_suffix_len = suffix ? strlen(suffix) : 0;
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!vocab) return ct_fail(err, "%s: model.vocab: missing", tok->path);
    if (load_vocab(tok, vocab, err)) return -1;
    tok->unk_id = unk ? vocab_id(tok, unk, strlen(unk)) : -1;
    if (unk && tok->unk_id < 0)
        return ct_fail(err, "%s: model.unk_token: \"%.60s\" is not in model.vocab", tok->path, unk);
    return load_merges(tok, cJSON_GetObjectItemCaseSensitive(model, "merges"), pairs, err);
}

/* ---------------------------------------------------------------- added tokens */

static int load_added(tokenizer *tok, const cJSON *list, ct_error *err) {
    if (!list || cJSON_IsNull(list)) return 0;
    if (!cJSON_IsArray(list)) return ct_fail(err, "%s: added_tokens: expected an array", tok->path);
    size_t n = (size_t)cJSON_GetArraySize(list);
    tok->added = calloc(n ? n : 1, sizeof *tok->added);
    if (!tok->added) return ct_fail(err, "%s: out of memory for added_tokens", tok->path);
    for (const cJSON *e = list->child; e; e = e->next) {
        char where[64];
        snprintf(where, sizeof where, "added_tokens[%zu]", tok->n_added);
        tok_added *a = &tok->added[tok->n_added];
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (!cJSON_IsObject(e) || !cJSON_IsString(content))
            return ct_fail(err, "%s: %s: expected an object with a string \"content\"", tok->path, where);
        char id_where[80];
        snprintf(id_where, sizeof id_where, "%s.id", where);
        if (tok_json_id(tok, cJSON_GetObjectItemCaseSensitive(e, "id"), id_where, &a->id, err)) return -1;
        if (tok_json_bool(tok, e, where, "special", false, &a->special, err) ||
            tok_json_bool(tok, e, where, "single_word", false, &a->single_word, err) ||
            tok_json_bool(tok, e, where, "lstrip", false, &a->lstrip, err) ||
            tok_json_bool(tok, e, where, "rstrip", false, &a->rstrip, err) ||
            tok_json_bool(tok, e, where, "normalized", !a->special, &a->normalized, err))
            return -1;
        a->content = strdup(content->valuestring);
        if (!a->content) return ct_fail(err, "out of memory");
        a->len = strlen(a->content);
        /* tokenizers gives a token that the model already has the model's id. */
        int32_t model_id = vocab_id(tok, a->content, a->len);
        if (model_id >= 0) a->id = model_id;
        tok->n_added++;
    }
    return 0;
}

/* ---------------------------------------------------------------- load / free */

static int load_json(tokenizer *tok, const cJSON *root, ct_error *err) {
    if (!cJSON_IsObject(root)) return ct_fail(err, "%s: expected a JSON object at the top level", tok->path);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!model) return ct_fail(err, "%s: model: missing (a tokenizer.json has a \"model\" object)", tok->path);
    int32_t *pairs = NULL;
    int rc = load_model(tok, model, &pairs, err);
    rc = rc ? rc : load_added(tok, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), err);
    rc = rc ? rc : tok_load_pipeline(tok, root, err);
    if (rc) {
        free(pairs);
        return -1;
    }
    tok->vocab_size = tok->model_cap;
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].id >= tok->vocab_size) tok->vocab_size = tok->added[i].id + 1;
    for (size_t i = 0; i < tok->prefix.len + tok->suffix.len; i++) {
        int32_t id = i < tok->prefix.len ? tok->prefix.data[i] : tok->suffix.data[i - tok->prefix.len];
        if (id >= tok->vocab_size) {
            free(pairs);
            return ct_fail(err, "%s: post_processor: id %d is outside the vocabulary (%d ids)",
                           tok->path, id, tok->vocab_size);
        }
    }
    tok->added_of_id = malloc((size_t)tok->vocab_size * sizeof *tok->added_of_id + 1);
    if (!tok->added_of_id) {
        free(pairs);
        return ct_fail(err, "out of memory");
    }
    for (int32_t i = 0; i < tok->vocab_size; i++) tok->added_of_id[i] = -1;
    bool single_word = false;
    for (size_t i = 0; i < tok->n_added; i++) {
        tok->added_of_id[tok->added[i].id] = (int32_t)i;
        single_word |= tok->added[i].single_word;
    }
    /* Rust regex \w: alphabetic, marks, decimal digits, connector punctuation, joiners. */
    static const char word[] = "[\\p{L}\\p{Nl}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]";
    if (single_word && !(tok->word_regex = tok_compile_regex(word, strlen(word), err))) rc = -1;
    if (!rc) rc = tok_build_added_sets(tok, err);
    if (!rc) tok_compute_fingerprint(tok, pairs, tok->n_merges);
    free(pairs);
    return rc;
}

int tokenizer_load(tokenizer **out, const char *path, ct_error *err) {
    *out = NULL;
    cJSON *root;
    if (jsonfile_read(path, &root, err)) return -1;
    tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) {
        cJSON_Delete(root);
        return ct_fail(err, "out of memory");
    }
    snprintf(tok->path, sizeof tok->path, "%s", path);
    tok->unk_id = -1;
    tok_byte_alphabet_init(&tok->alphabet);
    int rc = load_json(tok, root, err);
    cJSON_Delete(root);
    if (rc) {
        tokenizer_free(tok);
        return -1;
    }
    *out = tok;
    return 0;
}

void tokenizer_free(tokenizer *tok) {
    if (!tok) return;
    for (int32_t i = 0; tok->model_str && i < tok->model_cap; i++) free(tok->model_str[i]);
    free(tok->model_str);
    free(tok->model_len);
    tok_strmap_free(&tok->vocab);
    tok_mergemap_free(&tok->merges);
    free(tok->subword_prefix);
    free(tok->word_suffix);
    for (size_t i = 0; i < tok->n_added; i++) free(tok->added[i].content);
    free(tok->added);
    free(tok->added_of_id);
    free(tok->raw_set.order);
    free(tok->normalized_set.order);
    if (tok->word_regex) pcre2_code_free(tok->word_regex);
    tok_free_pipeline(tok);
    free(tok);
}

/* ---------------------------------------------------------------- encode / decode */

int tokenizer_encode(const tokenizer *tok, const char *text, size_t len, bool add_special,
                     int32_t **ids, size_t *n_ids, ct_error *err) {
    *ids = NULL;
    *n_ids = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        int clen = utf8_next((const unsigned char *)text + i, len - i, &cp);
        if (clen <= 0) return ct_fail(err, "byte %zu: invalid UTF-8", i);
        i += (size_t)clen;
    }
    tok_ids out = {0};
    tok_encode_ctx ctx = {.tok = tok, .out = &out, .err = err};
    ctx.match = pcre2_match_data_create(16, NULL);
    ctx.depth = calloc(tok->n_pretok + 1, sizeof *ctx.depth);
    int rc = ctx.match && ctx.depth ? 0 : ct_fail(err, "out of memory encoding text");
    if (!rc && add_special) rc = tok_ids_append(&out, &tok->prefix, err);
    if (!rc) rc = tok_encode_text(&ctx, text, len);
    if (!rc && add_special) rc = tok_ids_append(&out, &tok->suffix, err);
    tok_encode_ctx_free(&ctx);
    if (rc) {
        free(out.data);
        return -1;
    }
    if (!out.data && !(out.data = malloc(sizeof *out.data))) return ct_fail(err, "out of memory");
    *ids = out.data;
    *n_ids = out.len;
    return 0;
}

int tokenizer_vocab_size(const tokenizer *tok) { return tok->vocab_size; }

int tokenizer_token_to_id(const tokenizer *tok, const char *content) {
    size_t n = strlen(content);
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].len == n && memcmp(tok->added[i].content, content, n) == 0)
            return tok->added[i].id;
    return vocab_id(tok, content, n);
}

const char *tokenizer_fingerprint(const tokenizer *tok) { return tok->fingerprint; }

const char *tokenizer_path(const tokenizer *tok) { return tok->path; }

int tokenizer_bos_id(const tokenizer *tok) {
    return tok->prefix.len == 1 ? tok->prefix.data[0] : -1;
}
