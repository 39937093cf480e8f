/* train_state: the training state that makes a resume exact on any world size — step,
 * sampler position, optimizer counters and, for every trainable parameter BY NAME, its fp32
 * values and AdamW moments — stored beside the hub files of a checkpoint folder:
 *
 *   <output_dir>/checkpoints/step-000200/        hub folder (checkpoint.h)
 *     state/rank-00000-of-00004.safetensors      one part per rank, written in parallel
 *     state/rank-0000N-of-00004.safetensors
 *     state/meta.json                            written LAST: the completion marker
 *
 * Each rank writes the elements [shard_begin, shard_end) of the flat trainable range (the
 * trainable parameters in model order, as optim/adamw.h lays out m and v) that it owns, as
 * tensors named "<parameter>/param[a:b]", "<parameter>/exp_avg[a:b]" and
 * "<parameter>/exp_avg_sq[a:b]" (a, b: element offsets inside the parameter); each tensor's
 * 64-bit checksum is in the part's metadata under the tensor's name. After every part is
 * fsynced, rank 0 writes meta.json atomically; a folder without it never counts. Loading
 * reads, from whichever parts hold them, the whole of every trainable parameter and the
 * moments of the caller's shard, so the reader's world size and ZeRO stage are free.
 *
 * ctune's randomness (sampler order, dropout masks, initialisation) is a pure function of
 * (seed, sample index), so the seed and the sampler position are the whole RNG state.
 * Does not own: the hub files (checkpoint.h), how the trainer shards the optimizer (optim/),
 * when checkpoints are taken. Format reference: docs/checkpoints.md, "Training state". */
#ifndef CTUNE_TRAIN_STATE_H
#define CTUNE_TRAIN_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "train/dist.h"
#include "train/error.h"
#include "train/model.h"
#include "train/recipe.h"

#define TRAIN_STATE_VERSION 1
#define TRAIN_STATE_MAX_KEYS 16

/* A recipe key that must keep its value across a resume, as canonical text. */
typedef struct train_state_key {
    char name[32];
    char value[RECIPE_PATH_MAX];
} train_state_key;

typedef struct train_state_meta {
    int version;                 /* TRAIN_STATE_VERSION */
    long step;                   /* optimizer steps completed; the next one is step + 1 */
    long optimizer_step;         /* AdamW's step count (bias correction); differs from step
                                  * when fp16 overflow skipped steps */
    long long next_sample;       /* sampler position: global index of the next sample */
    long long tokens_seen;       /* loss tokens trained on so far */
    long long seed;              /* the recipe's train.seed (also among the fixed keys) */
    bool loss_scaling;           /* the run that wrote it scaled its loss (fp16-mixed) */
    double loss_scale;           /* fp16-mixed dynamic loss scale; 1 otherwise */
    long loss_scale_good_steps;  /* steps since the scale last changed */
    double wall_seconds;         /* training time spent before this checkpoint */
    int world_size;              /* of the run that wrote it (informational) */
    int zero_stage;              /* of the run that wrote it (informational) */
    size_t trainable_numel;      /* length of the flat trainable range */
    int n_keys;                  /* recipe keys that must not change (train_state_set_recipe) */
    train_state_key keys[TRAIN_STATE_MAX_KEYS];
} train_state_meta;

/* What one rank wrote: its element range and the byte size of its part file. */
typedef struct train_state_part {
    size_t begin, end;
    long long bytes;
} train_state_part;

/* Zeroes meta and sets version, loss_scale 1. */
void train_state_meta_init(train_state_meta *meta);

/* Records the keys that must not change across a resume: model.path, method, the LoRA
 * settings (with method lora), data.train, data.seq_len, train.global_batch_size and
 * train.seed; also sets meta->seed. Everything else (max_steps, the schedule, lr, world size,
 * micro batch, ZeRO stage, precision, device) may change. */
void train_state_set_recipe(train_state_meta *meta, const recipe *r);

/* Compares the keys recorded in meta with recipe r; the error names every key that differs
 * with both values ("<what>: the recipe differs from the one the checkpoint was written with
 * in 1 key ... (lora.r: checkpoint '8', recipe '16'); ..."). what names the checkpoint. */
int train_state_check_recipe(const train_state_meta *meta, const recipe *r, const char *what,
                             ct_error *err);

/* "<output_dir>/checkpoints/step-000200" (six digits at least). */
int train_state_checkpoint_dir(const char *output_dir, long step, char *out, size_t size,
                               ct_error *err);

/* An even split of [0, numel) over world_size ranks (the first numel % world_size ranks get
 * one more element), for runs that do not shard the optimizer (ZeRO-0) but still write in
 * parallel. */
void train_state_even_shard(size_t numel, int rank, int world_size, size_t *begin, size_t *end);

/* ---- writing ----
 * train_state_save is the collective: rank 0 resets <dir>/state, every rank writes its part,
 * rank 0 commits after all parts are durable. Call it after the hub folder at
 * checkpoint_dir is in place (checkpoint_write_hub replaces a folder as a whole, so state
 * written before it would be lost). meta's world_size and trainable_numel are taken from d
 * and m; the other fields are the caller's (train_state_set_recipe must have been called).
 * exp_avg and exp_avg_sq are backend memory (m->k) holding the caller's shard: element 0 is
 * flat index shard_begin. The ranks' shards must partition [0, trainable_numel) (commit
 * checks). Returns 0 on every rank, or -1 on every rank with the lowest failing rank's
 * message. */
int train_state_save(const char *checkpoint_dir, const train_state_meta *meta, const model *m,
                     const float *exp_avg, const float *exp_avg_sq, size_t shard_begin,
                     size_t shard_end, const dist *d, ct_error *err);

/* The three stages of train_state_save, usable one by one (tests simulate several ranks in
 * one process with them). prepare: removes <dir>/state and creates it empty (one process).
 * write_part: writes state/rank-<rank>-of-<world_size>.safetensors and fills part.
 * commit: checks that the parts partition [0, meta->trainable_numel), that each file has
 * its recorded size and that meta holds the recipe keys, then writes state/meta.json
 * atomically with world_size = n_parts (one process, after all parts are written). */
int train_state_prepare(const char *checkpoint_dir, ct_error *err);
int train_state_write_part(const char *checkpoint_dir, const model *m, const float *exp_avg,
                           const float *exp_avg_sq, size_t shard_begin, size_t shard_end,
                           int rank, int world_size, train_state_part *part, ct_error *err);
int train_state_commit(const char *checkpoint_dir, const train_state_meta *meta,
                       const train_state_part *parts, int n_parts, ct_error *err);

/* ---- reading ---- */

/* True when <dir>/state/meta.json exists (the checkpoint was committed). */
bool train_state_is_complete(const char *checkpoint_dir);

/* The newest complete checkpoint under <output_dir>/checkpoints (by step number, folders
 * named step-N; incomplete ones and temporary folders are ignored). dir is "" and *step -1
 * when there is none (also when the checkpoints folder does not exist). step may be NULL. */
int train_state_find_latest(const char *output_dir, char *dir, size_t size, long *step,
                            ct_error *err);

/* Reads and validates <dir>/state/meta.json (no tensor is read). */
int train_state_read_meta(const char *checkpoint_dir, train_state_meta *meta, ct_error *err);

/* Reads meta, then fills every trainable parameter of m completely and the caller's shard
 * [shard_begin, shard_end) of the moments (backend memory, element 0 = flat index
 * shard_begin; both may be NULL when the shard is empty), from whichever parts hold them.
 * Everything read (names, ranges, coverage, sizes, checksums) is checked before the first
 * value is copied, so a bad checkpoint leaves m and the moments unchanged. Does not check
 * the recipe: call train_state_check_recipe on meta. */
int train_state_load(const char *checkpoint_dir, train_state_meta *meta, model *m,
                     float *exp_avg, float *exp_avg_sq, size_t shard_begin, size_t shard_end,
                     ct_error *err);

/* ---- housekeeping ---- */

/* Keeps the newest keep_last (at least 1) complete checkpoints under
 * <output_dir>/checkpoints and removes older complete ones, and incomplete step folders
 * older than the newest complete one (leftovers of a crash). Never touches the newest
 * complete checkpoint or anything newer. One process (rank 0), after a commit. */
int train_state_prune(const char *output_dir, int keep_last, ct_error *err);

/* The 64-bit checksum of a tensor's bytes stored in the parts' metadata (16 hex digits). */
uint64_t train_state_checksum(const void *data, size_t size);

#endif
