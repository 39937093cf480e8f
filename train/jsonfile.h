/* jsonfile: reading a whole JSON file (config.json, tokenizer.json, adapter_config.json,
 * model.safetensors.index.json) into a cJSON tree, with one error format for all of them:
 * "<path>: byte N (line L, column C): invalid JSON". Does not own: what the keys mean. */
#ifndef CTUNE_JSONFILE_H
#define CTUNE_JSONFILE_H

#include <stdbool.h>
#include <stddef.h>

#include "train/error.h"

struct cJSON;

/* *root gets the parsed tree (free with cJSON_Delete), or NULL on failure. */
int jsonfile_read(const char *path, struct cJSON **root, ct_error *err);

/* 0 when no object in the tree has a key twice; otherwise -1 and where gets the key's
 * dotted path ("rope_parameters.factor", "added_tokens[3].content"). jsonfile_read refuses
 * such files: cJSON reads the first value of a repeated key, Python's json the last. */
int jsonfile_duplicate_key(const struct cJSON *root, char *where, size_t size);

/* One line of a JSONL file (ctune prep's input, generate --prompts): its line ending cut off
 * in place, a UTF-8 BOM skipped on the first line, then one JSON value with nothing but blanks
 * after it and no key twice. 0 with *root (cJSON_Delete it); 1 for a blank line; -1 with
 * "column C: invalid JSON", "column C: unexpected text after the JSON value (one object per
 * line)" or "duplicate key ..." (columns counted from the line's first byte). */
int jsonfile_parse_line(char *line, size_t len, bool first_line, struct cJSON **root, ct_error *err);

#endif
