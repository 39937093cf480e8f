/* jsonfile: reading a whole JSON file (config.json, tokenizer.json, adapter_config.json,
 * model.safetensors.index.json) into a cJSON tree, with one error format for all of them:
 * "<path>: byte N (line L, column C): invalid JSON". Does not own: what the keys mean. */
#ifndef CTUNE_JSONFILE_H
#define CTUNE_JSONFILE_H

#include "train/error.h"

struct cJSON;

/* *root gets the parsed tree (free with cJSON_Delete), or NULL on failure. */
int jsonfile_read(const char *path, struct cJSON **root, ct_error *err);

/* 0 when no object in the tree has a key twice; otherwise -1 and where gets the key's
 * dotted path ("rope_parameters.factor", "added_tokens[3].content"). jsonfile_read refuses
 * such files: cJSON reads the first value of a repeated key, Python's json the last. */
int jsonfile_duplicate_key(const struct cJSON *root, char *where, size_t size);

#endif
