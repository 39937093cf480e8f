/* bootstrap: what the built-in default job makes for itself when absent — a randomly
 * initialised model folder from a preset (config.json, model.safetensors, byte-level
 * tokenizer files, generation_config.json) and the synthetic task datasets.
 * Both are deterministic from their seeds, so every machine makes the same files. */
#ifndef CTUNE_BOOTSTRAP_H
#define CTUNE_BOOTSTRAP_H

#include <stdbool.h>
#include <stdint.h>

#include "train/error.h"
#include "train/recipe.h"

/* Writes a Hugging Face model folder at dir (created; files written atomically). */
int bootstrap_model(const char *dir, const char *preset, uint64_t seed, ct_error *err);

/* Creates data.train / data.eval from the recipe's synthetic task when they do not exist,
 * tokenized with the model folder's tokenizer. */
int bootstrap_synthetic_data(const recipe *r, ct_error *err);

#endif
