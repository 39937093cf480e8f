/* tokenizer_write: the tokenizer fingerprint, and the writer of the byte-level tokenizer that
 * `ctune init` models use (loadable by tokenizers and transformers' AutoTokenizer). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/fsutil.h"
#include "train/tokenizer_impl.h"

/* ---------------------------------------------------------------- fingerprint */

typedef struct fnv { uint64_t h; } fnv;

static void fnv_bytes(fnv *f, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        f->h ^= p[i];
        f->h *= 0x100000001b3ull;
    }
}

static void fnv_text(fnv *f, const char *fmt_kind, long long a, long long b, const char *s,
                     size_t n) {
    char head[96];
    int k = snprintf(head, sizeof head, "%s %lld %lld ", fmt_kind, a, b);
    fnv_bytes(f, head, (size_t)k);
    if (s) fnv_bytes(f, s, n);
    fnv_bytes(f, "\n", 1);
}

/* Canonical serialisation (docs/data.md): a header line, then
 *   "v <id> <len> <token bytes>\n"       for model tokens by increasing id,
 *   "m <left id> <right id> \n"          for merges by rank,
 *   "a <id> <special> <content bytes>\n" for added tokens by increasing id,
 * hashed with FNV-1a 64. Normalizer and pre-tokenizer settings are not included. */
void tok_compute_fingerprint(tokenizer *tok, const int32_t *merge_pairs, size_t n_merges) {
    fnv f = {0xcbf29ce484222325ull};
    static const char header[] = "ctune-tokenizer-fingerprint-v1\n";
    fnv_bytes(&f, header, sizeof header - 1);
    for (int32_t id = 0; id < tok->model_cap; id++)
        if (tok->model_str[id])
            fnv_text(&f, "v", id, tok->model_len[id], tok->model_str[id], tok->model_len[id]);
    for (size_t r = 0; r < n_merges; r++)
        fnv_text(&f, "m", merge_pairs[2 * r], merge_pairs[2 * r + 1], NULL, 0);
    for (int32_t id = 0; id < tok->vocab_size; id++) {
        int32_t a = tok->added_of_id[id];
        if (a >= 0)
            fnv_text(&f, "a", id, tok->added[a].special, tok->added[a].content, tok->added[a].len);
    }
    snprintf(tok->fingerprint, sizeof tok->fingerprint, "%016llx", (unsigned long long)f.h);
}

/* ---------------------------------------------------------------- byte-level writer */

/* transformers' VERY_LARGE_INTEGER, its value for "no known limit". */
static const char no_length_limit[] = "1000000000000000019884624838656";

static int write_json(const char *dir, const char *name, cJSON *root, ct_error *err) {
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *text = root ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text) return ct_fail(err, "%s: out of memory serialising JSON", path);
    atomic_file file;
    int rc = atomic_file_open(&file, path, err);
    if (!rc) rc = atomic_file_write(&file, text, strlen(text), err);
    if (!rc) rc = atomic_file_write(&file, "\n", 1, err);
    if (!rc) rc = atomic_file_commit(&file, err);
    free(text);
    return rc;
}

static cJSON *added_token_json(int id, const char *content) {
    cJSON *t = cJSON_CreateObject();
    cJSON_AddNumberToObject(t, "id", id);
    cJSON_AddStringToObject(t, "content", content);
    cJSON_AddFalseToObject(t, "single_word");
    cJSON_AddFalseToObject(t, "lstrip");
    cJSON_AddFalseToObject(t, "rstrip");
    cJSON_AddFalseToObject(t, "normalized");
    cJSON_AddTrueToObject(t, "special");
    return t;
}

static cJSON *byte_level_step(const char *type, bool add_prefix_space, bool trim_offsets) {
    cJSON *s = cJSON_CreateObject();
    cJSON_AddStringToObject(s, "type", type);
    cJSON_AddBoolToObject(s, "add_prefix_space", add_prefix_space);
    cJSON_AddBoolToObject(s, "trim_offsets", trim_offsets);
    cJSON_AddTrueToObject(s, "use_regex");
    return s;
}

/* {"SpecialToken": {"id": bos, "type_id": t}} or {"Sequence": {"id": "A", "type_id": t}} */
static cJSON *template_piece(const char *kind, const char *id, int type_id) {
    cJSON *piece = cJSON_CreateObject(), *inner = cJSON_AddObjectToObject(piece, kind);
    cJSON_AddStringToObject(inner, "id", id);
    cJSON_AddNumberToObject(inner, "type_id", type_id);
    return piece;
}

/* BOS before each sequence, as Llama 3's tokenizer.json does. */
static cJSON *bos_post_processor(const char *bos, int bos_id) {
    cJSON *seq = cJSON_CreateObject();
    cJSON_AddStringToObject(seq, "type", "Sequence");
    cJSON *list = cJSON_AddArrayToObject(seq, "processors");
    cJSON_AddItemToArray(list, byte_level_step("ByteLevel", true, false));
    cJSON *tp = cJSON_CreateObject();
    cJSON_AddStringToObject(tp, "type", "TemplateProcessing");
    cJSON *single = cJSON_AddArrayToObject(tp, "single");
    cJSON_AddItemToArray(single, template_piece("SpecialToken", bos, 0));
    cJSON_AddItemToArray(single, template_piece("Sequence", "A", 0));
    cJSON *pair = cJSON_AddArrayToObject(tp, "pair");
    cJSON_AddItemToArray(pair, template_piece("SpecialToken", bos, 0));
    cJSON_AddItemToArray(pair, template_piece("Sequence", "A", 0));
    cJSON_AddItemToArray(pair, template_piece("SpecialToken", bos, 1));
    cJSON_AddItemToArray(pair, template_piece("Sequence", "B", 1));
    cJSON *specials = cJSON_AddObjectToObject(tp, "special_tokens");
    cJSON *entry = cJSON_AddObjectToObject(specials, bos);
    cJSON_AddStringToObject(entry, "id", bos);
    cJSON_AddItemToObject(entry, "ids", cJSON_CreateIntArray(&bos_id, 1));
    cJSON_AddItemToObject(entry, "tokens", cJSON_CreateStringArray(&bos, 1));
    cJSON_AddItemToArray(list, tp);
    return seq;
}

int tokenizer_write_byte_level_ex(const char *dir, const char *bos, const char *eos,
                                  const char *pad, long long model_max_length, ct_error *err) {
    const char *roles[3] = {"bos_token", "eos_token", "pad_token"};
    const char *given[3] = {bos, eos, pad};
    const char *specials[3];
    int ids[3], n_specials = 0;
    for (int r = 0; r < 3; r++) {
        ids[r] = -1;
        if (!given[r]) continue;
        if (!given[r][0]) return ct_fail(err, "%s: the %s is an empty string", dir, roles[r]);
        for (int k = 0; k < n_specials; k++)
            if (strcmp(specials[k], given[r]) == 0) ids[r] = 256 + k; /* e.g. pad = eos */
        if (ids[r] < 0) {
            ids[r] = 256 + n_specials;
            specials[n_specials++] = given[r];
        }
    }
    tok_byte_alphabet alphabet;
    tok_byte_alphabet_init(&alphabet);

    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation");
    cJSON_AddNullToObject(root, "padding");
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    for (int k = 0; k < n_specials; k++) cJSON_AddItemToArray(added, added_token_json(256 + k, specials[k]));
    cJSON_AddNullToObject(root, "normalizer");
    cJSON_AddItemToObject(root, "pre_tokenizer", byte_level_step("ByteLevel", false, true));
    if (bos) cJSON_AddItemToObject(root, "post_processor", bos_post_processor(bos, ids[0]));
    else cJSON_AddItemToObject(root, "post_processor", byte_level_step("ByteLevel", true, false));
    cJSON_AddItemToObject(root, "decoder", byte_level_step("ByteLevel", true, true));
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddNullToObject(model, "continuing_subword_prefix");
    cJSON_AddNullToObject(model, "end_of_word_suffix");
    cJSON_AddFalseToObject(model, "fuse_unk");
    cJSON_AddFalseToObject(model, "byte_fallback");
    cJSON_AddFalseToObject(model, "ignore_merges");
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    for (int b = 0; b < 256; b++) {
        char sym[4] = {0};
        memcpy(sym, alphabet.utf8[b], alphabet.utf8_len[b]);
        cJSON_AddNumberToObject(vocab, sym, b);
    }
    cJSON_AddArrayToObject(model, "merges");
    if (write_json(dir, "tokenizer.json", root, err)) return -1;

    cJSON *config = cJSON_CreateObject();
    cJSON *decoder = cJSON_AddObjectToObject(config, "added_tokens_decoder");
    for (int k = 0; k < n_specials; k++) {
        char key[16];
        snprintf(key, sizeof key, "%d", 256 + k);
        cJSON *t = added_token_json(256 + k, specials[k]);
        cJSON_DeleteItemFromObject(t, "id");
        cJSON_AddItemToObject(decoder, key, t);
    }
    cJSON *map = cJSON_CreateObject();
    for (int r = 0; r < 3; r++) {
        if (given[r]) {
            cJSON_AddStringToObject(config, roles[r], given[r]);
            cJSON_AddStringToObject(map, roles[r], given[r]);
        } else {
            cJSON_AddNullToObject(config, roles[r]);
        }
    }
    cJSON_AddBoolToObject(config, "add_bos_token", bos != NULL);
    cJSON_AddFalseToObject(config, "add_eos_token");
    cJSON_AddFalseToObject(config, "clean_up_tokenization_spaces");
    if (model_max_length > 0) {
        cJSON_AddNumberToObject(config, "model_max_length", (double)model_max_length);
    } else {
        cJSON_AddItemToObject(config, "model_max_length", cJSON_CreateRaw(no_length_limit));
    }
    cJSON_AddStringToObject(config, "tokenizer_class", "PreTrainedTokenizerFast");
    if (write_json(dir, "tokenizer_config.json", config, err)) {
        cJSON_Delete(map);
        return -1;
    }
    return write_json(dir, "special_tokens_map.json", map, err);
}

int tokenizer_write_byte_level(const char *dir, const char *bos, const char *eos, const char *pad,
                               ct_error *err) {
    return tokenizer_write_byte_level_ex(dir, bos, eos, pad, 0, err);
}
