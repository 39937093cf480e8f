/* trainer: the training run — builds the model and data from a recipe, runs the
 * data-parallel step loop (gradient accumulation up to the recipe's global batch, loss
 * normalised by the loss tokens of the whole global batch), evaluates, logs metrics and
 * writes hub-ready checkpoints. Also the evaluation helpers that generate and tests reuse.
 * Does not own: parsing the command line (cmd_train.c), file formats (checkpoint.h). */
#ifndef CTUNE_TRAINER_H
#define CTUNE_TRAINER_H

#include <stdbool.h>
#include <stdio.h>

#include "train/checkpoint.h"
#include "train/data.h"
#include "train/dist.h"
#include "train/error.h"
#include "train/model.h"
#include "train/recipe.h"

/* trainer_run's return value when SIGTERM/SIGUSR1 stopped the run after writing a checkpoint
 * (ctune train then exits with CTUNE_EXIT_PREEMPTED so a requeued job resumes). */
#define TRAINER_PREEMPTED 1
#define CTUNE_EXIT_PREEMPTED 75

/* Runs the recipe on the ranks of d. With dry_run, rank 0 prints the resolved recipe,
 * parameter counts and a per-rank memory estimate, and nothing is trained.
 * summary (may be NULL) receives the final numbers. Collective: every rank calls it. */
int trainer_run(const recipe *r, const dist *d, bool dry_run, run_summary *summary, ct_error *err);

/* Mean token loss over (up to max_batches micro-batches of) ds, in dataset order, split over
 * ranks; *tokens = loss tokens counted. Collective. */
int evaluate_loss(model *m, const dataset *ds, const dist *d, int micro_batch, int seq_len,
                  int max_batches, double *mean_loss, long long *tokens, ct_error *err);

/* Exact-match accuracy of greedy completions: for each document (up to max_examples), the
 * tokens before the first loss token are the prompt, the loss tokens the answer. Collective. */
int evaluate_accuracy(model *m, const dataset *ds, const dist *d, int max_examples,
                      double *accuracy, ct_error *err);

/* The model precision a recipe's precision names. */
model_precision model_precision_of(recipe_precision p);

/* The backend for device on this node-local rank: the CPU's, or the GPU the rank is bound to
 * (device auto falls back to the CPU when none can be used). memory_key[key_size] names the
 * memory it allocates from ("host", or "cuda:" and the GPU's PCI bus id). Fails only for
 * DEVICE_CUDA without a usable GPU, with the reason in *why. Test hook: CTUNE_TEST_SHADOW_MEMORY=1
 * gives kernels_shadow(). */
int backend_for_device(recipe_device device, int local_rank, const kernels **k, char *memory_key, size_t key_size,
                       ct_error *why);

/* What ctune eval / generate load and run: a model folder, optionally a PEFT adapter folder,
 * whether the base is read as QLoRA held it (nf4_base: the decoder layers' Linear weights
 * replaced by their NF4 read-back, kernels/nf4.h, as a lora.quantize_base: nf4 run trained its
 * adapter on), the precision of the GEMMs and the device. Zero-initialised: fp32, device auto. */
typedef struct inference_source {
    const char *model_dir;
    const char *adapter_dir; /* NULL: none */
    bool nf4_base;
    model_precision precision;
    recipe_device device;
    /* --run DIR: a training run's folder, whose recipe.resolved.yaml supplies what the flags
     * did not give (inference_apply_run); the given ones say which flags were passed. */
    const char *run_dir;
    bool precision_given, device_given;
    char run_base[RECIPE_PATH_MAX], run_final[RECIPE_PATH_MAX + 8]; /* storage for the paths */
} inference_source;

/* What a run's own final evaluation used (--run), for ctune eval to default to. */
typedef struct run_eval_settings {
    char data[RECIPE_PATH_MAX]; /* data.eval; "" when the run had none */
    int seq_len, micro_batch, max_batches;
    bool accuracy;              /* a synthetic task: the run measured answer accuracy too */
} run_eval_settings;

/* The options the commands that load an inference_source share: --model, --adapter,
 * --quantize-base nf4, --precision fp32|bf16-mixed|fp16-mixed, --device auto|cpu|cuda. If
 * argv[*i] is one of them with a value, stores it, steps *i past the value and returns 1;
 * returns 0 for anything else, and -1 (said on stderr, "ctune COMMAND: ...") for a bad value. */
int inference_option(const char *command, int argc, char **argv, int *i, inference_source *src);
/* Their --help lines. */
void inference_options_usage(FILE *out);

/* With src->run_dir: reads the run's recipe.resolved.yaml and fills in what was not given:
 * the base (model.path) and the adapter (the run's final/), or for full fine-tuning the
 * model (final/); --quantize-base nf4 for a QLoRA run; the precision and device; and in
 * *eval (may be NULL) the evaluation the run ended with. No-op without run_dir. */
int inference_apply_run(inference_source *src, run_eval_settings *eval, ct_error *err);

/* The backend src->device names for this node-local rank (a clear error for --device cuda
 * without a usable GPU). */
int inference_backend(const inference_source *src, int local_rank, const kernels **k, ct_error *err);

/* Loads src for inference on backend k, in src->precision. */
int load_model_for_inference(model *m, const inference_source *src, const kernels *k, ct_error *err);

/* Waits for a GPU backend and returns its first error since the last check (kernels are
 * asynchronous; kernels_cuda_status); 0 on the CPU. Call before trusting results. */
int inference_check(const kernels *k, ct_error *err);

#endif
