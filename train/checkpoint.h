/* checkpoint: hub-ready output folders. A LoRA run writes adapter_model.safetensors +
 * adapter_config.json (peft's format); a full run writes model.safetensors (or shards beyond
 * checkpoint.max_shard_bytes, with model.safetensors.index.json) + config.json
 * + the base's tokenizer files (+ generation_config.json when the base has one). Both get a
 * README.md model card with YAML front matter (base_model, library_name, license, tags,
 * datasets, pipeline_tag, model-index with the eval loss) and a body with the recipe and
 * results. A folder is written under "<dir>.tmp-<pid>", fsynced, then renamed into place,
 * so a crash never leaves a half-written checkpoint at <dir>.
 * Does not own: training state for resume (issue 3), the safetensors encoding itself. */
#ifndef CTUNE_CHECKPOINT_H
#define CTUNE_CHECKPOINT_H

#include <stdbool.h>
#include <stddef.h>

#include "train/error.h"
#include "train/model.h"
#include "train/recipe.h"

typedef struct run_summary {
    int steps;
    double train_loss;      /* mean loss of the last step */
    double eval_loss;       /* NAN when there is no eval set */
    double eval_accuracy;   /* exact-match accuracy of greedy answers; NAN when not measured */
    long long tokens_seen;  /* loss tokens over the run */
    double tokens_per_second;
    double wall_seconds;
    int world_size;
    long long peak_memory_bytes; /* the most backend memory a rank held; < 0: not known */
    int peak_memory_rank;        /* ... and that rank */
} run_summary;

/* Writes the final (or periodic) hub folder at dir. base_dir is the model folder the run
 * started from (tokenizer files are copied from it; its name is the card's base_model). */
int checkpoint_write_hub(const char *dir, model *m, const recipe *r, const char *base_dir,
                         const run_summary *summary, ct_error *err);
/* Where the fp32 values of weights sharded over the ranks come from (model_create_in with a
 * shard): fetch fills host[numel] with parameter `index`'s (optim/zero.h: zero_fetch_param). */
typedef struct checkpoint_values {
    int (*fetch)(void *ctx, int index, float *host, ct_error *err);
    void *ctx;
} checkpoint_values;
/* checkpoint_write_hub for such a model (values NULL: it has none; a sharded weight is then
 * an error, never its 16-bit copy written as if it were the fp32 value). */
int checkpoint_write_hub_from(const char *dir, model *m, const recipe *r, const char *base_dir,
                              const run_summary *summary, const checkpoint_values *values, ct_error *err);

/* Builds a folder atomically: fill writes the content into a fresh temporary folder
 * ("<dir>.tmp-<pid>"), which is fsynced and then swapped in for dir. */
typedef int (*checkpoint_fill_fn)(const char *tmp_dir, void *ctx, ct_error *err);
int checkpoint_write_folder(const char *dir, checkpoint_fill_fn fill, void *ctx, ct_error *err);

/* Copies the base's tokenizer files, generation_config.json and chat_template.jinja (those
 * that exist) into dir. */
int checkpoint_copy_base_files(const char *dir, const char *base_dir, ct_error *err);

/* Writes only README.md (the model card) into an existing folder. */
int checkpoint_write_card(const char *dir, const model *m, const recipe *r, const char *base_dir,
                          const run_summary *summary, ct_error *err);

/* The base model's name: the Hugging Face id from the base config's "_name_or_path" when it
 * holds one (owner/name, not a local path), else, for the card (for_loading false), the
 * base folder's name, or, for adapter_config.json (for_loading true), base_dir as given so
 * that peft can find the base. out is "" when nothing is known. */
void checkpoint_base_model_id(const model *m, const char *base_dir, bool for_loading, char *out,
                              size_t size);

#endif
