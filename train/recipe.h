/* recipe: the YAML recipe that is the whole truth of a run, parsed with libyaml into a
 * typed, validated struct, with command-line overrides (key.sub=value) and a writer for
 * the resolved recipe.
 *
 * Strict: an unknown key, a wrong type or an out-of-range value is an error naming the
 * file, line and key ("recipe.yaml:12: unknown key 'optim.lrr' (did you mean 'optim.lr'?)").
 * Every key, its type, default and meaning is listed in docs/recipes.md.
 * Does not own: checking that paths exist or that the batch sizes fit the world size
 * (recipe_grad_accum_steps does the latter once the rank count is known). */
#ifndef CTUNE_RECIPE_H
#define CTUNE_RECIPE_H

#include <stdbool.h>
#include <stdio.h>

#include "train/error.h"

#define RECIPE_PATH_MAX 1024
#define RECIPE_MAX_TARGETS 16

typedef enum { METHOD_LORA, METHOD_FULL } recipe_method;
typedef enum { SCHEDULE_CONSTANT, SCHEDULE_LINEAR, SCHEDULE_COSINE } recipe_schedule;
typedef enum { PRECISION_FP32, PRECISION_BF16_MIXED, PRECISION_FP16_MIXED } recipe_precision;
typedef enum { DEVICE_AUTO, DEVICE_CPU, DEVICE_CUDA } recipe_device;
typedef enum { DIST_BACKEND_AUTO, DIST_BACKEND_MPI, DIST_BACKEND_NCCL } recipe_dist_backend;
typedef enum { BASE_QUANT_NONE, BASE_QUANT_NF4 } recipe_base_quant;

typedef struct recipe {
    char source[RECIPE_PATH_MAX]; /* file it came from, for messages */
    char name[256];               /* run name; default: the recipe file's stem */

    struct {
        char path[RECIPE_PATH_MAX]; /* Hugging Face model folder (required) */
        char init_preset[64];       /* if set and path has no config.json: create it (e.g. "tiny") */
        long long init_seed;        /* seed for that creation (default 0) */
    } model;

    recipe_method method; /* lora (default) | full */

    struct {
        int r;                 /* rank, default 8, 1..4096 */
        double alpha;          /* default 16 */
        double dropout;        /* default 0.0, in [0, 1) */
        bool use_rslora;       /* scaling alpha/sqrt(r) instead of alpha/r; default false */
        bool use_dora;         /* weight-decomposed LoRA (peft's use_dora); default false */
        recipe_base_quant quantize_base; /* none (default) | nf4: QLoRA's 4-bit frozen base */
        int n_targets;         /* target_modules: names from q_proj k_proj v_proj o_proj */
        char targets[RECIPE_MAX_TARGETS][32]; /* gate_proj up_proj down_proj, or "all-linear" */
    } lora;                    /* default targets: q_proj, v_proj (peft's default for Llama) */

    struct {
        char train[RECIPE_PATH_MAX]; /* HDF5 dataset (required) */
        char eval[RECIPE_PATH_MAX];  /* optional HDF5 dataset; "" = none */
        int seq_len;                 /* default 256, 8..1048576 */
        /* If set and data.train does not exist, ctune generates the built-in synthetic task. */
        char synthetic_task[32];     /* "" | "addition" | "reversal" */
        int synthetic_train_examples; /* default 20000 */
        int synthetic_eval_examples;  /* default 256 */
        int synthetic_digits;         /* default 3 (addition operands / reversal length) */
        long long synthetic_seed;     /* default 1234 */
        bool pack;                    /* pack documents into sequences (document-masked attention) */
    } data;

    struct {
        int micro_batch_size;   /* per rank, default 8 */
        int global_batch_size;  /* sequences per optimizer step, default 32 */
        int max_steps;          /* default 100 */
        long long seed;         /* default 1234 */
        int eval_every;         /* steps between evaluations; 0 = only at the end; default 0 */
        int eval_max_batches;   /* cap on eval batches per evaluation; 0 = whole set; default 0 */
        int log_every;          /* steps between progress lines on rank 0; default 10 */
        bool activation_checkpointing; /* default false */
        bool tensorboard;       /* metrics also as TensorBoard events; default false */
    } train;

    struct {
        double lr;              /* peak learning rate, default 1e-3, > 0 */
        double weight_decay;    /* default 0.0 */
        double beta1, beta2;    /* default 0.9, 0.999 */
        double eps;             /* default 1e-8 */
        double grad_clip;       /* max global grad norm; 0 disables; default 1.0 */
        recipe_schedule schedule; /* constant | linear | cosine (default) */
        int warmup_steps;       /* default 0 */
        double min_lr_ratio;    /* floor of the decay as a fraction of lr, default 0.0 */
        double loss_scale_init; /* fp16-mixed: first dynamic loss scale, default 65536 */
        int loss_scale_growth_interval; /* fp16-mixed: good steps before the scale doubles, 2000 */
    } optim;

    recipe_precision precision; /* fp32 (default) | bf16-mixed | fp16-mixed */
    recipe_device device;       /* auto (default) | cpu | cuda */

    struct {
        int zero_stage;                /* 0 (default) | 1 | 2 | 3 */
        recipe_dist_backend backend;   /* auto (default) | mpi | nccl */
        double timeout_s;              /* a collective taking longer aborts the job; default 1800 */
    } distributed;

    struct {
        char output_dir[RECIPE_PATH_MAX]; /* run directory, default "runs/<name>" */
        int every;                        /* steps between checkpoints; 0 = final only */
        int keep_last;                    /* default 2 */
        char license[64];                 /* model card license, default "apache-2.0" */
        long long max_shard_bytes;        /* full-model output: shard beyond this size (5e9) */
        char resume[RECIPE_PATH_MAX];     /* "none" (default) | "auto" | a checkpoint folder */
    } checkpoint;
} recipe;

/* Fills every field with its default (paths empty). */
void recipe_defaults(recipe *r);

/* Parses a YAML file over the defaults, then validates. */
int recipe_load(recipe *r, const char *path, ct_error *err);

/* Parses YAML text (source names it in messages) over the current values, then validates. */
int recipe_load_string(recipe *r, const char *yaml_text, const char *source, ct_error *err);

/* recipe_load, then the overrides in order, then one validation: a recipe may leave a
 * required key (model.path...) to the command line, and overrides that only make sense
 * together (micro and global batch size) are checked once, together. */
int recipe_load_with_overrides(recipe *r, const char *path, char *const *overrides,
                               int n_overrides, ct_error *err);

/* Applies "dotted.key=value" (value parsed as YAML scalar or flow sequence, e.g.
 * lora.target_modules=[q_proj,v_proj]); errors name "override 'x=y'". Validates after. */
int recipe_apply_override(recipe *r, const char *assignment, ct_error *err);

/* Cross-field checks (required keys present, lora fields only meaningful with method lora...). */
int recipe_validate(const recipe *r, ct_error *err);

/* Writes the fully resolved recipe as YAML, every key, loadable by recipe_load. */
int recipe_write(const recipe *r, FILE *out, ct_error *err);

/* Writes the key reference (markdown tables: key, type, default, range, meaning) from the
 * same schema the parser uses; docs/recipes.md embeds this text verbatim (a test checks). */
int recipe_write_reference(FILE *out, ct_error *err);

/* Gradient accumulation steps for a world of world_size ranks; fails when
 * micro_batch_size * world_size does not divide global_batch_size. */
int recipe_grad_accum_steps(const recipe *r, int world_size, int *steps, ct_error *err);

/* Canonical names, for messages and the resolved recipe. */
const char *recipe_method_name(recipe_method m);
const char *recipe_schedule_name(recipe_schedule s);
const char *recipe_precision_name(recipe_precision p);
const char *recipe_device_name(recipe_device d);
const char *recipe_dist_backend_name(recipe_dist_backend b);

#endif
