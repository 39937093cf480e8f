/* tokenizer: a native reader of Hugging Face tokenizer.json, encoding and decoding
 * token-for-token like the `tokenizers` library.
 *
 * Supported here: BPE models, byte-level (GPT-2 / Llama 3 / Qwen2 / SmolLM style: Split
 * pre-tokenizers with PCRE2 regexes, ByteLevel, ignore_merges) and SentencePiece-style
 * (Llama 2 / Mistral: Metaspace or Prepend/Replace normalizers, byte fallback, unk), added and
 * special tokens, the TemplateProcessing/ByteLevel post-processors for BOS/EOS, decoding.
 * The list and the limits (e.g. NFC only for already-normalized text) are in docs/data.md.
 * Also a writer for the byte-level tokenizer of `ctune init` models.
 * Does not own: chat templates and datasets (data.h, prep). */
#ifndef CTUNE_TOKENIZER_H
#define CTUNE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "train/error.h"

typedef struct tokenizer tokenizer;

/* Parses tokenizer.json. Errors name the file and the JSON path ("model.merges[12]"). */
int tokenizer_load(tokenizer **out, const char *path, ct_error *err);
void tokenizer_free(tokenizer *tok);

/* Encodes UTF-8 text. add_special applies the post-processor (e.g. BOS for Llama 3), as
 * tokenizers' encode(text, add_special_tokens=True). *ids is malloc'd; caller frees. */
int tokenizer_encode(const tokenizer *tok, const char *text, size_t len, bool add_special,
                     int32_t **ids, size_t *n_ids, ct_error *err);
/* Decodes ids to UTF-8 (invalid UTF-8 replaced by U+FFFD as tokenizers does);
 * skip_special drops special added tokens. *text is malloc'd and NUL-terminated. */
int tokenizer_decode(const tokenizer *tok, const int32_t *ids, size_t n_ids, bool skip_special,
                     char **text, size_t *len, ct_error *err);

int tokenizer_vocab_size(const tokenizer *tok);   /* highest id + 1, added tokens included */
int tokenizer_token_to_id(const tokenizer *tok, const char *content); /* -1 if absent */
/* A stable identity of vocabulary + merges + added tokens: 16 lowercase hex digits
 * (FNV-1a 64 of a canonical serialisation). Datasets record it; training compares it. */
const char *tokenizer_fingerprint(const tokenizer *tok);
/* The path tokenizer_load read (datasets record it as the tokenizer's name). */
const char *tokenizer_path(const tokenizer *tok);

/* Writes dir/tokenizer.json (byte-level BPE: the 256 byte symbols as ids 0..255 in byte
 * order, no merges, GPT-2 split regex, ByteLevel decoder) with the given special tokens as
 * added tokens at ids 256.. , plus dir/tokenizer_config.json and special_tokens_map.json
 * naming bos/eos/pad, so transformers' AutoTokenizer loads the folder. */
int tokenizer_write_byte_level(const char *dir, const char *bos, const char *eos,
                               const char *pad, ct_error *err);
/* The same, with tokenizer_config.json's model_max_length (<= 0: transformers' "no limit").
 * bos/pad may be NULL; with a bos the post-processor prepends it (TemplateProcessing, as
 * Llama 3), so encode(add_special=true) starts with BOS here and in transformers. */
int tokenizer_write_byte_level_ex(const char *dir, const char *bos, const char *eos,
                                  const char *pad, long long model_max_length, ct_error *err);

/* The id the post-processor puts before a single sequence when add_special is set (BOS for
 * Llama 3 style tokenizers), or -1 when it adds none or more than one. */
int tokenizer_bos_id(const tokenizer *tok);

#endif
