/* tokenizer_impl: the private layout shared by tokenizer*.c (not part of the public API).
 *  tokenizer.c          loading the model and added tokens, encode, the small accessors
 *  tokenizer_pipeline.c loading normalizer, pre-tokenizer, post-processor and decoder
 *  tokenizer_bpe.c      hash maps, byte-level alphabet, the BPE merge loop, UTF-8 helpers
 *  tokenizer_split.c    added-token splitting, normalizers, pre-tokenizers (PCRE2)
 *  tokenizer_decode.c   decoding and the decoder chain
 *  tokenizer_write.c    the byte-level tokenizer writer and the fingerprint
 *  tokenizer_nfc.c      the Unicode NFC quick-check tables */
#ifndef CTUNE_TOKENIZER_IMPL_H
#define CTUNE_TOKENIZER_IMPL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "train/error.h"
#include "train/textbuf.h"
#include "train/tokenizer.h"
#include "train/utf8.h"

/* ---- growable vectors ---- */
typedef struct tok_ids { int32_t *data; size_t len, cap; } tok_ids;
int tok_ids_push(tok_ids *v, int32_t id, ct_error *err);
/* textbuf_put that reports running out of memory through err. */
int tok_bytes_append(textbuf *b, const char *s, size_t n, ct_error *err);
/* The first occurrence of needle (len > 0) in s[0, n), or NULL: memmem, which C11 lacks. */
const char *tok_find(const char *s, size_t n, const char *needle, size_t len);

/* ---- string -> id map (open addressing; keys live in the owner's string table) ---- */
typedef struct tok_strmap {
    int32_t *slots;          /* token id or -1; capacity is a power of two */
    size_t cap;
    const char *const *strs; /* strs[id], lens[id]: the keys, owned by the tokenizer */
    const uint32_t *lens;
} tok_strmap;
int tok_strmap_init(tok_strmap *m, size_t n_keys, const char *const *strs, const uint32_t *lens,
                    ct_error *err);
/* Inserts id (its key is strs[id]); returns the id already holding the key, or -1. */
int32_t tok_strmap_put(tok_strmap *m, int32_t id);
int32_t tok_strmap_get(const tok_strmap *m, const char *s, size_t n);
void tok_strmap_free(tok_strmap *m);

/* ---- merge pair (left id, right id) -> (rank, merged id) ---- */
typedef struct tok_merge_entry { uint64_t key; uint32_t rank; int32_t new_id; } tok_merge_entry;
typedef struct tok_mergemap { tok_merge_entry *slots; size_t cap; } tok_mergemap;
int tok_mergemap_init(tok_mergemap *m, size_t n, ct_error *err);
void tok_mergemap_put(tok_mergemap *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id);
const tok_merge_entry *tok_mergemap_get(const tok_mergemap *m, int32_t a, int32_t b);
void tok_mergemap_free(tok_mergemap *m);

/* ---- byte-level alphabet (GPT-2 bytes_to_unicode) ---- */
typedef struct tok_byte_alphabet {
    char utf8[256][3];     /* UTF-8 of the symbol standing for each byte */
    uint8_t utf8_len[256];
    int16_t byte_of[324];  /* code point -> byte, or -1 if not a byte-level symbol */
} tok_byte_alphabet;
void tok_byte_alphabet_init(tok_byte_alphabet *a);

/* ---- UTF-8 ---- */
/* Appends bytes replacing invalid sequences with U+FFFD like Rust's from_utf8_lossy. */
int tok_utf8_lossy_append(textbuf *out, const unsigned char *s, size_t n, ct_error *err);
bool tok_is_unicode_space(uint32_t cp);

/* ---- the tokenizer ---- */
typedef enum { NORM_NFC, NORM_PREPEND, NORM_REPLACE } tok_norm_kind;
typedef struct tok_norm {
    tok_norm_kind kind;
    char *pattern;            /* Replace: String pattern (regex == NULL) */
    size_t pattern_len;
    pcre2_code *regex;        /* Replace: Regex pattern */
    char *content;            /* Prepend: the prefix; Replace: the replacement */
    size_t content_len;
} tok_norm;

typedef enum { PRETOK_SPLIT, PRETOK_BYTE_LEVEL, PRETOK_METASPACE } tok_pretok_kind;
typedef enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } tok_prepend_scheme;
typedef enum {
    SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_WITH_PREVIOUS, SPLIT_MERGED_WITH_NEXT,
    SPLIT_CONTIGUOUS
} tok_split_behavior;

typedef struct tok_pretok {
    tok_pretok_kind kind;
    pcre2_code *regex;        /* Split pattern, or ByteLevel's GPT-2 regex when use_regex */
    char *literal;            /* Split String pattern; Metaspace replacement (e.g. U+2581) */
    size_t literal_len;
    tok_split_behavior behavior;
    bool invert;
    bool add_prefix_space;    /* ByteLevel */
    tok_prepend_scheme prepend; /* Metaspace */
    bool split;               /* Metaspace: split before each replacement character */
} tok_pretok;

typedef struct tok_added {
    int32_t id;
    char *content;
    size_t len;
    bool special, lstrip, rstrip, single_word, normalized;
} tok_added;

/* Added tokens of one matching pass, bucketed by first byte, longest first. */
typedef struct tok_added_set {
    int32_t *order;           /* indexes into tokenizer.added */
    size_t count;
    uint32_t bucket_start[257];
} tok_added_set;

typedef enum {
    DEC_BYTE_LEVEL, DEC_REPLACE, DEC_BYTE_FALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE
} tok_dec_kind;
typedef struct tok_dec {
    tok_dec_kind kind;
    char *pattern;            /* Replace: String pattern; Metaspace: the replacement */
    size_t pattern_len;
    pcre2_code *regex;        /* Replace: Regex pattern */
    char *content;            /* Replace: what replaces it */
    size_t content_len;
    uint32_t strip_char;      /* Strip: content, and how many to cut at each end */
    int strip_start, strip_stop;
    bool prepend;             /* Metaspace: prepend_scheme is not never */
} tok_dec;

struct tokenizer {
    char path[1024];
    /* model vocabulary: id -> string (NULL where an id has no model token) */
    char **model_str;
    uint32_t *model_len;
    int32_t model_cap;        /* highest model id + 1 */
    tok_strmap vocab;
    tok_mergemap merges;
    size_t n_merges;
    bool ignore_merges, byte_fallback, fuse_unk;
    int32_t unk_id;           /* -1 if none */
    char *subword_prefix, *word_suffix; /* continuing_subword_prefix / end_of_word_suffix */
    size_t subword_prefix_len, word_suffix_len;

    tok_added *added;
    size_t n_added;
    int32_t *added_of_id;     /* [vocab_size] index into added, or -1 */
    tok_added_set raw_set, normalized_set; /* normalized=false / normalized=true tokens */
    pcre2_code *word_regex;   /* ^\w, for single_word */

    tok_norm *norm;           /* normalizer steps, in order */
    size_t n_norm;
    tok_pretok *pretok;
    size_t n_pretok;
    bool byte_level;          /* a ByteLevel step maps bytes to the alphabet */

    tok_ids prefix, suffix;   /* ids the post-processor adds around a single sequence */
    tok_dec *dec;             /* decoder steps, in order */
    size_t n_dec;
    bool has_decoder;         /* without one, tokens are joined with spaces */

    int32_t vocab_size;
    char fingerprint[17];
    tok_byte_alphabet alphabet;
};

typedef struct tok_range { size_t start, end; bool is_match; } tok_range;
typedef struct tok_depth {
    textbuf prefixed, mapped;
    tok_range *ranges;
    size_t n_ranges, ranges_cap;
} tok_depth;

/* Per-call scratch for encoding (the tokenizer itself stays read-only). */
typedef struct tok_encode_ctx {
    const tokenizer *tok;
    tok_ids *out;
    pcre2_match_data *match;
    pcre2_jit_stack *jit_stack;
    pcre2_match_context *match_ctx;
    const char *text;         /* the whole input, for error offsets */
    size_t text_len;
    textbuf norm[2];          /* normalizer output (ping-pong) */
    struct tok_depth *depth;  /* scratch per pre-tokenizer step (steps recurse) */
    /* BPE working memory */
    struct tok_symbol *symbols;
    size_t symbols_cap;
    struct tok_heap_item *heap;
    size_t heap_cap;
    textbuf word;
    ct_error *err;
} tok_encode_ctx;

/* tokenizer_bpe.c: tokenizes one pre-token (already in the model's alphabet), appends ids. */
int tok_bpe_word(tok_encode_ctx *ctx, const char *s, size_t n);
void tok_encode_ctx_free(tok_encode_ctx *ctx);

/* tokenizer.c: JSON accessors that name the file and the JSON path in errors */
const char *tok_json_type(const void *node);
int tok_json_bool(const tokenizer *tok, const void *obj, const char *where, const char *key,
                  bool fallback, bool *out, ct_error *err);
int tok_json_string(const tokenizer *tok, const void *obj, const char *where, const char *key,
                    const char **out, ct_error *err);   /* NULL when absent or null */
int tok_json_id(const tokenizer *tok, const void *value, const char *where, int32_t *out,
                ct_error *err);
int tok_ids_append(tok_ids *to, const tok_ids *from, ct_error *err);

/* tokenizer_pipeline.c: the stages around the model, from their JSON objects */
int tok_load_pipeline(tokenizer *tok, const void *root, ct_error *err);
void tok_free_pipeline(tokenizer *tok);

/* tokenizer_split.c */
int tok_encode_text(tok_encode_ctx *ctx, const char *text, size_t len);
int tok_build_added_sets(tokenizer *tok, ct_error *err);
pcre2_code *tok_compile_regex(const char *pattern, size_t len, ct_error *err);
/* Unicode NFC quick check: 0 if the text is certainly NFC, else the byte offset + 1 of the
 * first character that may change under normalization (tokenizer_nfc.c). */
size_t tok_nfc_quick_check(const char *s, size_t n);

/* tokenizer_write.c */
void tok_compute_fingerprint(tokenizer *tok, const int32_t *merge_pairs, size_t n_merges);

#endif
