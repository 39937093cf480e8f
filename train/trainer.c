#include "train/trainer.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cuda/cuda_status.h"
#include "kernels/nf4.h"
#include "kernels/profile.h"
#include "optim/adamw.h"
#include "optim/loss_scale.h"
#include "optim/schedule.h"
#include "optim/zero.h"
#include "train/bootstrap.h"
#include "train/clock.h"
#include "train/fsutil.h"
#include "train/metrics.h"
#include "train/tokenizer.h"
#include "train/train_state.h"
#include "train/units.h"

/* The backend the recipe's device names, and which memory it allocates from (memory_key:
 * "host", or "cuda:" and the GPU's PCI bus id), to count the node's ranks that share it
 * (check_memory). */
static int select_backend(const recipe *r, const dist *d, const kernels **k, char *memory_key, size_t key_size,
                          ct_error *err) {
    ct_error why;
    if (backend_for_device(r->device, d->local_rank, k, memory_key, key_size, &why))
        return ct_fail(err, "%s: the recipe asks for a GPU (device: cuda) but none can be used: %s "
                            "(device: auto falls back to the CPU)",
                       r->source, why.msg);
    return 0;
}

static int lora_from_recipe(const recipe *r, lora_settings *s, ct_error *err) {
    memset(s, 0, sizeof *s);
    s->r = r->lora.r;
    s->alpha = (float)r->lora.alpha;
    s->dropout = (float)r->lora.dropout;
    s->use_rslora = r->lora.use_rslora;
    s->use_dora = r->lora.use_dora;
    const char *names[RECIPE_MAX_TARGETS];
    for (int i = 0; i < r->lora.n_targets; i++) names[i] = r->lora.targets[i];
    if (lora_parse_targets(s, names, r->lora.n_targets, err))
        return ct_error_prefix(err, "%s: lora.target_modules", r->source);
    return 0;
}

/* The dataset must have been made with the model's tokenizer (when the model has one). */
static int check_dataset_tokenizer(const dataset *ds, const char *model_dir, ct_error *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", model_dir);
    if (!path_exists(path)) return 0;
    tokenizer *tok;
    if (tokenizer_load(&tok, path, err)) return -1;
    int status = 0;
    if (strcmp(tokenizer_fingerprint(tok), ds->tokenizer.fingerprint) != 0)
        status = ct_fail(err,
                         "%s was tokenized with tokenizer %s (%s) but the model's %s has fingerprint %s; "
                         "re-run ctune prep with the model's tokenizer",
                         ds->path, ds->tokenizer.fingerprint, ds->tokenizer.name, path,
                         tokenizer_fingerprint(tok));
    tokenizer_free(tok);
    return status;
}

/* Test hook (docs/distributed.md): CTUNE_TEST_FAIL_RANK=R CTUNE_TEST_FAIL_STEP=S make rank R
 * fail at step S (1-based), or, with CTUNE_TEST_FAIL_SLEEP_S=N, sleep N seconds there
 * instead, so that tests can show that one rank's failure or hang stops the whole job. */
typedef struct test_hook {
    int rank, step;
    double sleep_s;
    int kill_at_checkpoint; /* CTUNE_TEST_KILL_AT_CHECKPOINT=S: rank 0 SIGKILLs itself while
                             * writing the checkpoint of step S (hub folder written, state not) */
    int fail_fetch;         /* CTUNE_TEST_FAIL_FETCH=N: rank 0's N-th fetch of a sharded weight
                             * for a hub folder fails (the others are serving) */
} test_hook;

static test_hook test_hook_from_env(void) {
    test_hook h = {-1, -1, 0, -1, -1};
    const char *kill_step = getenv("CTUNE_TEST_KILL_AT_CHECKPOINT");
    if (kill_step) h.kill_at_checkpoint = atoi(kill_step);
    const char *fetch = getenv("CTUNE_TEST_FAIL_FETCH");
    if (fetch) h.fail_fetch = atoi(fetch);
    const char *rank = getenv("CTUNE_TEST_FAIL_RANK"), *step = getenv("CTUNE_TEST_FAIL_STEP");
    const char *sleep_s = getenv("CTUNE_TEST_FAIL_SLEEP_S");
    if (rank && step) {
        h.rank = atoi(rank);
        h.step = atoi(step);
        h.sleep_s = sleep_s ? atof(sleep_s) : 0;
    }
    return h;
}

static int apply_test_hook(const test_hook *h, const dist *d, int step, ct_error *err) {
    if (h->rank != d->rank || h->step != step) return 0;
    if (h->sleep_s <= 0)
        return ct_fail(err, "test hook CTUNE_TEST_FAIL_RANK=%d CTUNE_TEST_FAIL_STEP=%d: simulated failure",
                       h->rank, h->step);
    fprintf(stderr, "ctune: rank %d: test hook: sleeping %g s at step %d\n", d->rank, h->sleep_s, step);
    struct timespec ts = {(time_t)h->sleep_s, (long)((h->sleep_s - (double)(time_t)h->sleep_s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0) {
    }
    return 0;
}

/* Everything a run holds between set-up and the end. */
typedef struct run {
    const recipe *r;
    const dist *d;
    const kernels *k;
    model m;
    bool model_ready;
    dataset train, eval;
    bool train_open, eval_open;
    int accum_steps;
    int32_t *ids, *targets, *positions; /* accum_steps micro-batches of this rank */
    int32_t *doc_ids;                   /* same shape; only with data.pack */
    int pack_docs_per_row;              /* data_pack_docs_per_row, when packing */
    double *micro_losses;               /* loss sum of each micro-batch of the global batch */
    double *local_losses;               /* this rank's micro-batches' loss sums, in order */
    zero_optimizer opt;
    loss_scaler scaler;        /* fp16-mixed dynamic loss scale (identity otherwise) */
    int start_step;            /* first step to run (> 0 after a resume) */
    long long resumed_tokens;  /* loss tokens seen before the resume */
    double resumed_wall;       /* wall seconds spent before the resume */
    char resumed_from[4096];
    bool preempted;            /* the loop stopped early on SIGTERM/SIGUSR1 */
    bool opt_ready;
    bool profiling;            /* CTUNE_PROFILE=1: x.k is kernels/profile.h's timing wrapper */
    char memory_key[80];       /* the memory x.k allocates from: "host" or "cuda:<PCI bus id>" */
    test_hook hook;
    metrics_log metrics;
    char base_dir[4096];
    bool micro_agreed;         /* ZeRO 2, 3: the ranks agreed on the current micro-batch already
                                * (true outside the micro-batches) */
} run;

static int prepare_inputs(run *x, ct_error *err) {
    const recipe *r = x->r;
    int status = 0;
    char config_path[4096];
    snprintf(config_path, sizeof config_path, "%s/config.json", r->model.path);
    if (x->d->rank == 0) {
        if (!path_exists(config_path) && r->model.init_preset[0]) {
            printf("ctune: creating model '%s' at %s (preset, seed %lld)\n", r->model.init_preset,
                   r->model.path, r->model.init_seed);
            status = bootstrap_model(r->model.path, r->model.init_preset, (uint64_t)r->model.init_seed, err);
        }
        if (!status && r->data.synthetic_task[0] && !path_exists(r->data.train))
            printf("ctune: generating the synthetic '%s' task into %s\n", r->data.synthetic_task, r->data.train);
        if (!status) status = bootstrap_synthetic_data(r, err);
    }
    return dist_agree(x->d, status, err);
}

static int build_model(run *x, ct_error *err) {
    const recipe *r = x->r;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", r->model.path);
    model_config cfg;
    if (model_config_load(&cfg, path, err)) return -1;
    lora_settings lora;
    int status = 0;
    if (r->method == METHOD_LORA) status = lora_from_recipe(r, &lora, err);
    /* At ZeRO 1 and 2 in mixed precision a rank keeps fp32 values only for the weights its
     * shard updates (optim/zero.h), decided before anything is allocated. */
    const lora_settings *adapters = r->method == METHOD_LORA ? &lora : NULL;
    const model_precision precision = model_precision_of(r->precision);
    model_shard shard, *sharding = NULL;
    if (!status && zero_shards_weights(r->distributed.zero_stage, precision)) {
        const size_t trainable = model_trainable_numel(&cfg, adapters, err);
        if (trainable == 0) status = -1; /* the config's error */
        shard = zero_shard_of(trainable, x->d->world_size, x->d->rank);
        sharding = &shard;
    }
    /* At ZeRO 2 each layer's gradients go to the shard as soon as they are final: the
     * backward holds two layers' worth, not the whole gradient (model_layout); at ZeRO 3 the
     * layers' 16-bit weights are gathered from the shards likewise, two layers at a time. */
    const int stage = r->distributed.zero_stage;
    const model_layout layout = {.precision = precision,
                                 .shard = sharding,
                                 .grad_buckets = stage >= 2,
                                 .gather_layers = stage == 3,
                                 .nf4_base = r->method == METHOD_LORA && r->lora.quantize_base == BASE_QUANT_NF4};
    if (!status) status = model_create_as(&x->m, &cfg, adapters, x->k, &layout, err);
    model_config_free(&cfg);
    if (status) return -1;
    x->model_ready = true;
    if (model_load_weights(&x->m, r->model.path, err)) return -1;
    if (x->m.has_lora) model_init_lora(&x->m, (uint64_t)r->train.seed);
    if (model_init_dora(&x->m, err)) return -1;
    return 0;
}

static int open_data(run *x, ct_error *err) {
    const recipe *r = x->r;
    if (dataset_open(&x->train, r->data.train, err)) return -1;
    x->train_open = true;
    if (check_dataset_tokenizer(&x->train, r->model.path, err)) return -1;
    if (r->data.eval[0]) {
        if (dataset_open(&x->eval, r->data.eval, err)) return -1;
        x->eval_open = true;
        if (check_dataset_tokenizer(&x->eval, r->model.path, err)) return -1;
    }
    if (x->train.n_docs == 0) return ct_fail(err, "%s holds no documents", r->data.train);
    return 0;
}

/* The estimate's two parts, as print_memory shows them and check_memory tests them: one micro
 * batch's activations (with or without per-layer checkpointing), and a rank's ZeRO share of
 * the parameters, gradients, optimizer state and communication scratch. */
static size_t activation_bytes(const run *x, bool checkpointing) {
    return model_activation_bytes(&x->m.cfg, x->m.has_lora ? &x->m.lora : NULL, x->r->train.micro_batch_size,
                                  x->r->data.seq_len, checkpointing, x->m.precision);
}

/* What the backend's kernels allocate for themselves beyond the activations: within a step,
 * released after each call (the attention backward's copies and, on a GPU, its stored dS),
 * and kept once allocated (a GPU's workspace for the 16-bit products). */
static size_t kernel_scratch_bytes(const run *x) {
    const model_config *c = &x->m.cfg;
    const bool half = x->m.precision != MODEL_FP32;
    size_t bytes = half ? x->k->half_workspace_bytes : 0;
    size_t transient = 0; /* one call's at a time: the largest */
    if (x->k->attention_scratch_bytes)
        transient = x->k->attention_scratch_bytes(half, x->r->train.micro_batch_size, x->r->data.seq_len,
                                                  c->num_attention_heads, c->num_key_value_heads, c->head_dim);
    if (x->m.has_lora && x->m.lora.use_dora && !x->k->host_memory) {
        const int T = x->r->train.micro_batch_size * x->r->data.seq_len;
        const int widest = c->intermediate_size > c->hidden_size ? c->intermediate_size : c->hidden_size;
        const size_t dora = DORA_GRAD_SCRATCH_BYTES(T, widest > c->num_attention_heads * c->head_dim
                                                           ? widest : c->num_attention_heads * c->head_dim);
        if (dora > transient) transient = dora;
    }
    return bytes + transient;
}

/* Gradient values the backward writes into: all, or with buckets two layers' and the rest's. */
static size_t backward_grad_numel(const run *x, size_t trainable) {
    return x->m.grad_buckets ? x->m.grad_held_numel : trainable;
}

static void rank_zero_memory(const run *x, size_t trainable, int rank, zero_memory *mem) {
    const int stage = x->r->distributed.zero_stage, world = x->d->world_size;
    zero_memory_estimate(stage, x->m.weight_numel, trainable, world, rank, x->accum_steps, mem);
    mem->grad_bytes = mem->grad_bytes - trainable * sizeof(float) + backward_grad_numel(x, trainable) * sizeof(float);
    /* sharded fp32 weights: the rank keeps the values of its shard (and every other weight) */
    if (zero_shards_weights(stage, x->m.precision)) {
        const model_shard shard = zero_shard_of(trainable, world, rank);
        mem->param_bytes = model_fp32_numel(&x->m, &shard) * sizeof(float);
    }
}

/* A rank's estimate by kind (print_memory's line); returns the total. */
static size_t rank_estimate(const run *x, size_t trainable, size_t act_bytes, int rank, zero_memory *mem,
                            size_t *params) {
    rank_zero_memory(x, trainable, rank, mem);
    /* fp32 values held (a mixed-precision LoRA base only in 16 bits) plus 16-bit copies, and
     * a 4-bit base's codes */
    *params = mem->param_bytes + x->m.half_numel * sizeof(uint16_t) + x->m.nf4_bytes;
    return *params + mem->grad_bytes + mem->optim_bytes + act_bytes + kernel_scratch_bytes(x) + mem->comm_bytes;
}

/* The part of a rank's estimate that its backend's memory_held counts: the buffers (parameters,
 * gradients, optimizer state, activations) and, on a GPU, the kernels' scratch from its pool;
 * a host backend's kernel scratch and the collectives' staging are plain host allocations. */
static size_t rank_estimate_held(const run *x, int rank) {
    const size_t trainable = model_count_params(&x->m, true);
    zero_memory mem;
    size_t params, total = rank_estimate(x, trainable, activation_bytes(x, x->r->train.activation_checkpointing),
                                         rank, &mem, &params);
    return total - mem.comm_bytes - (x->k->host_memory ? kernel_scratch_bytes(x) : 0);
}

/* One line per rank (the first and last few on big worlds): parse-friendly exact bytes. */
static void print_memory(const run *x, size_t trainable, size_t act_bytes) {
    const size_t scratch = kernel_scratch_bytes(x);
    const recipe *r = x->r;
    const int world = x->d->world_size, stage = r->distributed.zero_stage;
    printf("  ZeRO stage %d: %s%s; micro-batches %s\n", stage,
           stage == 0 ? "AdamW state replicated on every rank"
           : stage == 1 ? "AdamW state sharded over ranks"
                        : "AdamW state and reduced gradients sharded over ranks",
           x->m.gather_layers ? ", fp32 weight matrices too; the layers' 16-bit copies gathered layer by layer"
           : model_weights_sharded(&x->m) ? ", fp32 weight matrices too (ranks exchange their 16-bit copies)" : "",
           stage >= 2 ? "interleaved over ranks (j = a x ranks + rank)" : "in contiguous blocks per rank");
    printf("  memory per rank (estimate, bytes):\n");
    for (int rank = 0; rank < world; rank++) {
        if (world > 8 && rank == 4) printf("    ...\n");
        if (world > 8 && rank >= 4 && rank < world - 4) continue;
        zero_memory mem;
        size_t params, sum = rank_estimate(x, trainable, act_bytes, rank, &mem, &params);
        printf("    rank %d: parameters %zu, gradients %zu, optimizer state %zu, activations %zu, "
               "kernel scratch %zu, communication %zu, total %zu (%.1f MiB); updates %zu of %zu trainable values\n",
               rank, params, mem.grad_bytes, mem.optim_bytes, act_bytes, scratch, mem.comm_bytes, sum,
               (double)sum / (1024.0 * 1024.0), mem.shard_numel, trainable);
    }
}

static void print_plan(const run *x, bool dry_run) {
    const recipe *r = x->r;
    size_t total = model_count_params(&x->m, false), trainable = model_count_params(&x->m, true);
    size_t act_bytes = activation_bytes(x, r->train.activation_checkpointing);
    if (dry_run) {
        ct_error err;
        printf("# resolved recipe\n");
        recipe_write(r, stdout, &err);
        printf("\n");
    }
    char blas[64] = ""; /* which OpenBLAS kernels (kernels_cpu_tune_blas) the CPU runs */
    if (x->k->host_memory) snprintf(blas, sizeof blas, " (OpenBLAS %s kernels)", openblas_get_corename());
    printf("ctune: %s on %d rank(s), backend %s%s, %d thread(s) per rank\n",
           r->method == METHOD_LORA ? "LoRA" : "full fine-tuning", x->d->world_size, x->k->name, blas,
           dist_threads_per_rank(x->d));
    printf("  parameters: %zu total, %zu trainable (%.3f%%)\n", total, trainable,
           total ? 100.0 * (double)trainable / (double)total : 0.0);
    if (r->precision != PRECISION_FP32) {
        printf("  precision: %s: matrix products on %s copies (%zu weights), fp32 master weights, "
               "gradients and optimizer state",
               recipe_precision_name(r->precision), r->precision == PRECISION_FP16_MIXED ? "fp16" : "bf16",
               x->m.half_numel);
        if (r->precision == PRECISION_FP16_MIXED)
            printf("; dynamic loss scale from %g, doubled after %d good steps", r->optim.loss_scale_init,
                   r->optim.loss_scale_growth_interval);
        if (!strcmp(x->k->name, "cpu")) printf(" (emulated on the CPU: slower than fp32)");
        printf("\n");
    }
    if (x->m.nf4_base) {
        size_t quantized = 0;
        for (int i = 0; i < x->m.n_params; i++) quantized += x->m.params[i].quantized ? x->m.params[i].numel : 0;
        printf("  base: the layers' %zu Linear weights in 4 bits (NF4, absmax per %d: %zu bytes), read back into "
               "16 bits one layer at a time\n",
               quantized, NF4_BLOCK, x->m.nf4_bytes);
    }
    printf("  batch: global %d = micro %d x ranks %d x accumulation %d; seq_len %d\n",
           r->train.global_batch_size, r->train.micro_batch_size, x->d->world_size, x->accum_steps,
           r->data.seq_len);
    printf("  data: %s (%lld documents, %lld tokens)", r->data.train, (long long)x->train.n_docs,
           (long long)x->train.n_tokens);
    if (x->eval_open) printf("; eval %s (%lld documents)", r->data.eval, (long long)x->eval.n_docs);
    if (r->data.pack)
        printf("; packed, up to %d documents per row", data_pack_docs_per_row(&x->train, r->data.seq_len));
    printf("\n");
    print_memory(x, trainable, act_bytes);
}

static double gib(size_t bytes) { return (double)bytes / (1024.0 * 1024.0 * 1024.0); }


/* Before the step buffers are allocated (the weights and their gradients already are): the
 * rest of this rank's estimate (print_memory) against what its backend can still allocate,
 * shared with the node's other ranks on the same memory. Over: an error that names the
 * numbers and what would shrink them, instead of an out-of-memory minutes later (or a host
 * killed by the kernel's OOM killer). The dry run prints the verdict and goes on. */
static int check_memory(const run *x, bool dry_run, ct_error *err) {
    const recipe *r = x->r;
    size_t free_bytes = 0, total_bytes = 0;
    /* every rank first (a collective): the node's ranks on the same memory, counted by the
     * GPU's bus id rather than from rank numbers, so that one GPU per task under Slurm
     * (each rank sees one device, index 0) counts each GPU's rank once */
    int sharers = 1;
    if (dist_count_same_key(x->d, x->memory_key, &sharers, err)) return -1;
    if (!x->k->memory_info || x->k->memory_info(&free_bytes, &total_bytes) != 0) {
        if (x->d->rank == 0) printf("  memory check: the %s backend cannot tell its free memory; not checked\n", x->k->name);
        return 0;
    }
    const size_t trainable = model_count_params(&x->m, true);
    zero_memory mem;
    rank_zero_memory(x, trainable, x->d->rank, &mem);
    /* the collectives' scratch is host memory: it competes with a host backend's buffers */
    const bool host = x->k->host_memory;
    const size_t act = activation_bytes(x, r->train.activation_checkpointing), scratch = kernel_scratch_bytes(x);
    /* the backward's own gradient output (grad_arena or the buckets) exists already */
    const size_t sums = mem.grad_bytes - backward_grad_numel(x, trainable) * sizeof(float);
    const size_t need = sums + mem.optim_bytes + act + scratch + (host ? mem.comm_bytes : 0);
    const bool fits = need <= free_bytes / (size_t)sharers;
    char shared[96] = "";
    if (sharers > 1) snprintf(shared, sizeof shared, ", shared by %d ranks of this node", sharers);
    if (x->d->rank == 0)
        printf("  memory check (rank 0): %.2f GiB more needed, %.2f GiB free of %.2f on the %s backend%s: %s\n",
               gib(need), gib(free_bytes), gib(total_bytes), x->k->name, shared,
               fits ? "fits" : "does NOT fit");
    if (fits || dry_run) return 0;
    char hint[256] = "";
    if (!r->train.activation_checkpointing) {
        const size_t ckpt = activation_bytes(x, true);
        snprintf(hint, sizeof hint, "train.activation_checkpointing: true (activations %.2f -> %.2f GiB), ", gib(act),
                 gib(ckpt));
    }
    char scratch_part[64] = "";
    if (scratch) snprintf(scratch_part, sizeof scratch_part, ", kernel scratch %.2f", gib(scratch));
    return ct_fail(err, "%s: not enough memory on rank %d's %s backend: the run needs %.2f GiB more (gradient sums "
                        "%.2f, optimizer state %.2f, activations %.2f%s%s) and %.2f GiB of %.2f are free%s. Try %sa "
                        "smaller train.micro_batch_size or data.seq_len, %sor more ranks with distributed.zero_stage "
                        "1, 2 or 3",
                   r->source, x->d->rank, x->k->name, gib(need), gib(sums), gib(mem.optim_bytes), gib(act),
                   scratch_part, host && mem.comm_bytes ? ", communication scratch" : "", gib(free_bytes),
                   gib(total_bytes),
                   sharers > 1 ? " (for all the node's ranks on it)" : "", hint,
                   r->method == METHOD_LORA ? "" : "method: lora, ");
}

/* Numbers with %.17g so that a saved eval loss can be compared bit for bit. */
static void json_number(char *out, size_t size, double value) {
    if (isfinite(value)) snprintf(out, size, "%.17g", value);
    else snprintf(out, size, "null");
}

/* The most memory x's backend held so far; -1 where it cannot tell. */
static long long backend_peak_bytes(const kernels *k) {
    size_t now = 0, peak = 0;
    if (!k->memory_held) return -1;
    k->memory_held(&now, &peak);
    return (long long)peak;
}

/* The run's peak: the largest of the ranks' (each fills its own slot of a block of ranks, the
 * others add 0; blocks on the stack, so no rank can fail before the sums and leave the others
 * waiting), and rank 0 prints it beside that rank's estimate. Collective. */
static int gather_peak_memory(const run *x, run_summary *s, ct_error *err) {
    enum { BLOCK = 64 };
    const int world = x->d->world_size;
    const long long mine = backend_peak_bytes(x->k);
    s->peak_memory_bytes = -1;
    s->peak_memory_rank = 0;
    for (int first = 0; first < world; first += BLOCK) {
        long long peaks[BLOCK] = {0};
        const int n = world - first < BLOCK ? world - first : BLOCK;
        if (x->d->rank >= first && x->d->rank < first + n) peaks[x->d->rank - first] = mine;
        if (dist_sum_longs(x->d, peaks, (size_t)n, err)) return -1;
        for (int i = 0; i < n; i++)
            if (peaks[i] > s->peak_memory_bytes) {
                s->peak_memory_bytes = peaks[i];
                s->peak_memory_rank = first + i;
            }
    }
    if (x->d->rank != 0 || s->peak_memory_bytes < 0) return 0;
    char held[32], estimate[32];
    units_format_bytes((unsigned long long)s->peak_memory_bytes, held, sizeof held);
    units_format_bytes(rank_estimate_held(x, s->peak_memory_rank), estimate, sizeof estimate);
    printf("peak memory: %s held on rank %d's %s backend (estimate %s)\n", held, s->peak_memory_rank, x->k->name,
           estimate);
    return 0;
}

static int write_summary_json(const char *dir, const run_summary *s, ct_error *err) {
    char train_loss[32], eval_loss[32], accuracy[32], tok_s[32], wall[32], text[1024];
    json_number(train_loss, sizeof train_loss, s->train_loss);
    json_number(eval_loss, sizeof eval_loss, s->eval_loss);
    json_number(accuracy, sizeof accuracy, s->eval_accuracy);
    json_number(tok_s, sizeof tok_s, s->tokens_per_second);
    json_number(wall, sizeof wall, s->wall_seconds);
    char peak[32] = "null";
    if (s->peak_memory_bytes >= 0) snprintf(peak, sizeof peak, "%lld", s->peak_memory_bytes);
    int len = snprintf(text, sizeof text,
                       "{\n  \"steps\": %d,\n  \"train_loss\": %s,\n  \"eval_loss\": %s,\n"
                       "  \"eval_accuracy\": %s,\n  \"tokens_seen\": %lld,\n  \"tokens_per_second\": %s,\n"
                       "  \"wall_seconds\": %s,\n  \"world_size\": %d,\n  \"peak_memory_bytes\": %s,\n"
                       "  \"peak_memory_rank\": %d\n}\n",
                       s->steps, train_loss, eval_loss, accuracy, s->tokens_seen, tok_s, wall, s->world_size, peak,
                       s->peak_memory_rank);
    char path[4096];
    snprintf(path, sizeof path, "%s/summary.json", dir);
    return write_file_atomic(path, text, (size_t)len, err);
}

static int write_resolved_recipe(const run *x, ct_error *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/recipe.resolved.yaml", x->r->checkpoint.output_dir);
    FILE *f = fopen(path, "w");
    if (!f) return ct_fail(err, "cannot write %s", path);
    int status = recipe_write(x->r, f, err);
    if (fclose(f) != 0 && !status) status = ct_fail(err, "cannot write %s", path);
    return status;
}

/* TensorBoard's event file for this run's steps, the recipe (as recipe.resolved.yaml) its first event. */
static int open_tensorboard(run *x, const char *dir, ct_error *err) {
    char *yaml = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&yaml, &size);
    if (!f) return ct_fail(err, "out of memory");
    int status = recipe_write(x->r, f, err);
    if (fclose(f) != 0 && !status) status = ct_fail(err, "out of memory");
    if (!status) status = metrics_open_tensorboard(&x->metrics, dir, x->start_step + 1, yaml, err);
    free(yaml);
    return status;
}

/* Pre-emption (SIGTERM, or SIGUSR1 that Slurm sends before a time limit) only sets this flag;
 * the step loop reads it between steps, on every rank together, then checkpoints and exits.
 * A signal handler can reach nothing else: this is the trainer's one process-wide variable. */
static volatile sig_atomic_t preempt_signal = 0;
static void on_preempt(int sig) { preempt_signal = sig; }

static int fetch_sharded(void *ctx, int index, float *host, ct_error *err) {
    run *x = ctx;
    if (--x->hook.fail_fetch == 0)
        return ct_fail(err, "test hook CTUNE_TEST_FAIL_FETCH: simulated failure fetching %s", x->m.params[index].name);
    return zero_fetch_param(&x->opt, &x->m, index, host, err);
}

/* Rank 0 writes the hub folder; where the fp32 weights are sharded, the other ranks serve
 * their slices of each tensor meanwhile. This rank's status, before any agreement. */
static int write_hub(run *x, const char *dir, const run_summary *s, ct_error *err) {
    const bool rank0 = x->d->rank == 0;
    if (!model_weights_sharded(&x->m)) return rank0 ? checkpoint_write_hub(dir, &x->m, x->r, x->base_dir, s, err) : 0;
    if (!rank0) return zero_serve_fetches(&x->opt, &x->m, err);
    const checkpoint_values values = {fetch_sharded, x};
    int status = checkpoint_write_hub_from(dir, &x->m, x->r, x->base_dir, s, &values, err);
    ct_error ended = {{0}};
    if (zero_end_fetches(&x->opt, &ended) && !status) {
        *err = ended;
        status = -1;
    }
    return status;
}

/* A checkpoint at step: the hub folder (rank 0), then the training state (every rank writes
 * its own part; complete only when rank 0 commits), then pruning to keep_last. */
static int write_checkpoint(run *x, int step, const run_summary *s, ct_error *err) {
    const recipe *r = x->r;
    const dist *d = x->d;
    char dir[4096];
    if (train_state_checkpoint_dir(r->checkpoint.output_dir, step, dir, sizeof dir, err)) return -1;
    int status = write_hub(x, dir, s, err);
    if (dist_agree(d, status, err)) return -1;
    if (x->hook.kill_at_checkpoint == step && d->rank == 0) raise(SIGKILL);
    train_state_meta meta;
    train_state_meta_init(&meta);
    train_state_set_recipe(&meta, r);
    meta.step = step;
    meta.optimizer_step = x->opt.adam.step;
    meta.next_sample = (long long)step * r->train.global_batch_size;
    meta.tokens_seen = s->tokens_seen;
    meta.seed = r->train.seed;
    meta.wall_seconds = s->wall_seconds;
    meta.zero_stage = x->opt.stage;
    meta.loss_scaling = x->scaler.enabled;
    meta.loss_scale = x->scaler.scale;
    meta.loss_scale_good_steps = x->scaler.good_steps;
    /* ZeRO-0 replicates the moments: each rank still writes an even slice, in parallel. */
    size_t begin = x->opt.begin, end = x->opt.end;
    float *exp_avg = x->opt.adam.m, *exp_avg_sq = x->opt.adam.v;
    if (x->opt.stage == 0) {
        train_state_even_shard(x->opt.numel, d->rank, d->world_size, &begin, &end);
        exp_avg += begin;
        exp_avg_sq += begin;
    }
    if (train_state_save(dir, &meta, &x->m, exp_avg, exp_avg_sq, begin, end, d, err)) return -1;
    status = d->rank == 0 ? train_state_prune(r->checkpoint.output_dir, r->checkpoint.keep_last, err) : 0;
    return dist_agree(d, status, err);
}

/* checkpoint.resume: none | auto (newest complete checkpoint, if any) | a checkpoint folder.
 * Fills the trainable parameters, this rank's AdamW moments and the step to continue from;
 * the sampler and dropout are functions of (seed, step, index), so nothing else is needed. */
static int resume_run(run *x, ct_error *err) {
    const recipe *r = x->r;
    const char *how = r->checkpoint.resume;
    if (!how[0] || !strcmp(how, "none")) return 0;
    char dir[4096];
    if (!strcmp(how, "auto")) {
        long step = -1;
        if (train_state_find_latest(r->checkpoint.output_dir, dir, sizeof dir, &step, err)) return -1;
        if (step < 0) return 0; /* nothing to resume: a fresh start */
    } else {
        snprintf(dir, sizeof dir, "%s", how);
    }
    train_state_meta meta;
    if (train_state_read_meta(dir, &meta, err)) return -1;
    if (train_state_check_recipe(&meta, r, dir, err)) return -1;
    bool replicated = x->opt.stage == 0;
    if (train_state_load(dir, &meta, &x->m, x->opt.adam.m, x->opt.adam.v, replicated ? 0 : x->opt.begin,
                         replicated ? x->opt.numel : x->opt.end, err))
        return -1;
    x->opt.adam.step = meta.optimizer_step;
    model_weights_changed(&x->m, true);
    /* fp16 continues the checkpoint's loss scale; after an fp32/bf16 checkpoint the recipe's
     * first scale applies. */
    if (x->scaler.enabled && meta.loss_scaling) {
        x->scaler.scale = meta.loss_scale;
        x->scaler.good_steps = meta.loss_scale_good_steps;
    }
    x->start_step = (int)meta.step;
    x->resumed_tokens = meta.tokens_seen;
    x->resumed_wall = meta.wall_seconds;
    snprintf(x->resumed_from, sizeof x->resumed_from, "%s", dir);
    return 0;
}

/* Forward and backward of this rank's a-th micro-batch of the step into the zeroed gradient
 * buffer; its per-token losses stay in the model's loss slot a until the step's end
 * (model_collect_losses). */
static int micro_batch_step(run *x, int step, int a, float grad_scale, ct_error *err) {
    const recipe *r = x->r;
    const int micro = r->train.micro_batch_size, seq = r->data.seq_len;
    if (a == 0 && apply_test_hook(&x->hook, x->d, step + 1, err)) return -1;
    size_t o = (size_t)a * micro * seq;
    model_batch batch = {x->ids + o, x->targets + o, x->positions + o,
                         x->doc_ids ? x->doc_ids + o : NULL, micro, seq};
    long long j = zero_micro_batch_index(&x->opt, a);
    long long first = step * (long long)r->train.global_batch_size + j * micro;
    /* A function of (seed, step, j) only: the same mask on any number of ranks. */
    uint64_t dropout_seed = (uint64_t)r->train.seed * 0x9E3779B97F4A7C15ull ^ (uint64_t)first;
    long count = 0;
    model_zero_grads(&x->m);
    return model_step_queued(&x->m, &batch, grad_scale, dropout_seed, a, &count, err);
}

/* model_step's callbacks at ZeRO 2 and 3 make collective calls, so before a micro-batch's
 * first one the ranks agree that each got this far; a rank that failed earlier in the
 * micro-batch (a bad batch, a test hook) takes part in that agreement from train_loop
 * instead. */
static int agree_on_micro_batch(run *x, ct_error *err) {
    if (x->micro_agreed) return 0;
    x->micro_agreed = true;
    return dist_agree(x->d, 0, err);
}

/* With gradient buckets (ZeRO 2, 3): a layer's gradients are final. */
static int layer_grads_ready(void *ctx, model *m, int layer, size_t lo, size_t hi, const float *grads,
                             ct_error *err) {
    run *x = ctx;
    if (agree_on_micro_batch(x, err)) return -1;
    return zero_reduce_layer(&x->opt, m, layer, lo, hi, grads, err);
}

/* ZeRO 3: a pass is about to read a layer whose 16-bit weights are not here. */
static int layer_weights_needed(void *ctx, model *m, int layer, ct_error *err) {
    run *x = ctx;
    if (agree_on_micro_batch(x, err)) return -1;
    return zero_gather_layer(&x->opt, m, layer, err);
}

/* Logging to TensorBoard is not worth a run: a failed event write stops it, said once. */
static void warn_metrics(metrics_log *metrics) {
    const char *why = metrics_take_warning(metrics);
    if (why) fprintf(stderr, "ctune: warning: %s; TensorBoard logging stops (metrics.jsonl goes on)\n", why);
}

static int train_loop(run *x, run_summary *summary, ct_error *err) {
    const recipe *r = x->r;
    const dist *d = x->d;
    const int micro = r->train.micro_batch_size, seq = r->data.seq_len;
    const size_t micro_tokens = (size_t)micro * (size_t)seq;
    const long long global_batch = r->train.global_batch_size;
    lr_schedule schedule = lr_schedule_from_recipe(r);
    adamw_hparams hp = {r->optim.beta1, r->optim.beta2, r->optim.eps, r->optim.weight_decay};
    const long long n_micro = (long long)x->accum_steps * d->world_size;
    double start = ct_monotonic_seconds(), last_log = start, profile_start = start;
    long long tokens_seen = x->resumed_tokens, processed_since_log = 0;
    double last_loss = NAN, eval_loss = NAN;
    int steps_done = x->start_step;
    x->preempted = false;
    for (int step = x->start_step; step < r->train.max_steps; step++) {
        /* Micro-batch a of this rank is global micro-batch j (optim/zero.h): samples
         * step*G + j*micro + [0, micro), whatever the number of ranks. */
        long long local_tokens = 0;
        for (int a = 0; a < x->accum_steps; a++) {
            long long first = step * global_batch + zero_micro_batch_index(&x->opt, a) * micro;
            size_t o = (size_t)a * micro_tokens;
            /* Packed: first is the global row index, so rows too are rank-count invariant. */
            if (x->doc_ids)
                data_fill_packed_batch(&x->train, (uint64_t)r->train.seed, x->pack_docs_per_row, first,
                                       micro, seq, x->ids + o, x->targets + o, x->positions + o,
                                       x->doc_ids + o);
            else
                data_fill_batch(&x->train, (uint64_t)r->train.seed, true, first, micro, seq, x->ids + o,
                                x->targets + o, x->positions + o);
            for (size_t t = 0; t < micro_tokens; t++) local_tokens += x->targets[o + t] >= 0;
        }
        /* Loss = sum over the global batch / its loss tokens: the scale must be global. */
        long long global_tokens = local_tokens;
        if (dist_sum_longs(d, &global_tokens, 1, err)) return -1;
        const double loss_scale = x->scaler.scale; /* 1 unless fp16-mixed */
        float grad_scale = global_tokens <= 0 ? 0.0f
                           : x->scaler.enabled ? (float)(loss_scale / (double)global_tokens)
                                               : 1.0f / (float)global_tokens;
        memset(x->micro_losses, 0, (size_t)n_micro * sizeof *x->micro_losses);
        int status = 0;
        for (int a = 0; a < x->accum_steps; a++) {
            x->micro_agreed = false;
            if (!status) status = micro_batch_step(x, step, a, grad_scale, err);
            /* Stages 2 and 3 make collective calls within every micro-batch, so the ranks
             * agree on each: before its first collective (agree_on_micro_batch), or here when
             * this rank failed before it got there. */
            if (x->opt.stage >= 2 && (x->micro_agreed ? status != 0 : dist_agree(d, status, err) != 0)) return -1;
            if (!status && zero_accumulate(&x->opt, &x->m, err)) return -1;
        }
        x->micro_agreed = true; /* an evaluation's collectives need no micro-batch agreement */
        if (x->opt.stage < 2 && dist_agree(d, status, err)) return -1;
        double loss_sum = 0, grad_norm = 0;
        double lr = lr_at_step(&schedule, step);
        bool skipped = false;
        /* One rank: nothing needs the norm on the host before AdamW, so the device decides
         * the clipping (and fp16's skip: an overflow makes AdamW write nothing) and the norm
         * comes back with the losses; the scale for the next step is updated from it below,
         * before that step is queued. Several ranks sum the norm on the host: one more wait. */
        const bool queued = d->world_size == 1;
        if (queued ? zero_step_queued(&x->opt, &x->m, &hp, lr, r->optim.grad_clip, loss_scale,
                                      model_loss_slots_scalar(&x->m), err)
                   : zero_step(&x->opt, &x->m, &hp, lr, r->optim.grad_clip, loss_scale, &grad_norm, &skipped, err))
            return -1;
        /* The losses, fetched once the optimizer is queued: the one download waits for the
         * step's last work, as the next batch's upload would (the host waits once a step, or
         * twice where zero_step waited for the norm, however many micro-batches). */
        model_collect_losses(&x->m, x->accum_steps, x->local_losses, queued ? &grad_norm : NULL);
        if (queued && !isfinite(grad_norm)) {
            skipped = true; /* AdamW changed nothing (fp16: an overflow) */
            zero_step_not_taken(&x->opt);
        }
        for (int a = 0; a < x->accum_steps; a++) x->micro_losses[zero_micro_batch_index(&x->opt, a)] = x->local_losses[a];
        /* One rank wrote each micro-batch's loss and the others add 0: exact in any order;
         * then the sum runs in global micro-batch order, the same on any world size. */
        if (dist_sum_doubles(d, x->micro_losses, (size_t)n_micro, err)) return -1;
        for (long long j = 0; j < n_micro; j++) loss_sum += x->micro_losses[j];
        /* The CUDA table's functions cannot fail visibly: its first error is collected here,
         * once per step, after the download above has synchronised with the device (a
         * kernel's execution error surfaces there), and before a NaN it may have caused is
         * reported as divergence. */
        if (!strcmp(x->k->name, "cuda") && dist_agree(d, kernels_cuda_check(err), err)) return -1;
        /* Every rank has the same norm, so the same decision. */
        if (skipped && !x->scaler.enabled)
            return ct_fail(err, "step %d: the gradient norm is %g: a NaN or infinity in the gradients "
                                "(training diverged; try a lower optim.lr, warmup or optim.grad_clip)",
                           step + 1, grad_norm);
        loss_scaler_update(&x->scaler, skipped ? INFINITY : grad_norm);
        if (loss_scaler_exhausted(&x->scaler))
            return ct_fail(err, "step %d: fp16-mixed overflowed even at loss scale %g: the activations or "
                                "gradients exceed fp16's range (65504); use precision: bf16-mixed",
                           step + 1, loss_scale);

        last_loss = global_tokens > 0 ? loss_sum / (double)global_tokens : NAN;
        tokens_seen += global_tokens;
        processed_since_log += (long long)micro_tokens * x->accum_steps * d->world_size;
        double now = ct_monotonic_seconds();
        double tok_s = processed_since_log / (now - last_log > 1e-9 ? now - last_log : 1e-9);
        if (d->rank == 0) {
            metrics_step(&x->metrics, &(metrics_step_values){.step = step + 1, .loss = last_loss, .lr = lr,
                                                             .grad_norm = grad_norm, .tokens = global_tokens,
                                                             .tokens_per_second = tok_s, .elapsed_seconds = now - start,
                                                             .loss_scale = x->scaler.enabled ? loss_scale : 0.0,
                                                             .skipped = skipped,
                                                             .peak_memory_bytes = backend_peak_bytes(x->k)});
            warn_metrics(&x->metrics);
        }
        bool log_now = (step + 1) % r->train.log_every == 0 || step == 0 || step + 1 == r->train.max_steps;
        if (d->rank == 0 && log_now) {
            char eta[32];
            units_format_duration((now - start) / (step + 1) * (r->train.max_steps - step - 1), false, eta, sizeof eta);
            char scale[64] = "";
            if (x->scaler.enabled)
                snprintf(scale, sizeof scale, " | loss scale %g%s", loss_scale, skipped ? " (overflow: step skipped)" : "");
            char norm[32];
            if (skipped) snprintf(norm, sizeof norm, "overflow");
            else snprintf(norm, sizeof norm, "%.3f", grad_norm);
            printf("step %*d/%d | loss %.4f | lr %.3e | grad_norm %s%s | %.0f tok/s | eta %s\n",
                   (int)snprintf(NULL, 0, "%d", r->train.max_steps), step + 1, r->train.max_steps,
                   last_loss, lr, norm, scale, tok_s, eta);
            fflush(stdout);
        }
        if (log_now) {
            last_log = now;
            processed_since_log = 0;
        }
        bool eval_now = x->eval_open && r->train.eval_every > 0 && (step + 1) % r->train.eval_every == 0 &&
                        step + 1 < r->train.max_steps;
        if (eval_now) {
            long long eval_tokens = 0;
            if (evaluate_loss(&x->m, &x->eval, d, micro, seq, r->train.eval_max_batches, &eval_loss,
                              &eval_tokens, err))
                return -1;
            if (d->rank == 0) {
                printf("eval step %d | eval_loss %.4f\n", step + 1, eval_loss);
                metrics_eval(&x->metrics, step + 1, eval_loss, eval_tokens, NAN);
                warn_metrics(&x->metrics);
            }
        }
        steps_done = step + 1;
        if (x->profiling && step == x->start_step) { /* the first step pays for plans and caches */
            kernels_profile_reset();
            profile_start = ct_monotonic_seconds();
        }
        /* Pre-emption: every rank learns of a signal any rank got, at the same step. */
        long long signalled = preempt_signal != 0;
        if (dist_sum_longs(d, &signalled, 1, err)) return -1;
        bool periodic = r->checkpoint.every > 0 && (step + 1) % r->checkpoint.every == 0 &&
                        step + 1 < r->train.max_steps;
        if (periodic || signalled) {
            run_summary s = {.steps = step + 1, .train_loss = last_loss, .eval_loss = eval_loss,
                             .eval_accuracy = NAN, .tokens_seen = tokens_seen, .world_size = d->world_size,
                             .wall_seconds = x->resumed_wall + now - start};
            if (write_checkpoint(x, step + 1, &s, err)) return -1;
        }
        if (signalled) {
            if (d->rank == 0)
                printf("ctune: pre-empted by a signal at step %d; checkpoint written, resume with "
                       "checkpoint.resume=auto\n", step + 1);
            x->preempted = true;
            break;
        }
    }
    double wall = ct_monotonic_seconds() - start;
    if (x->profiling && d->rank == 0 && steps_done - x->start_step > 1)
        kernels_profile_report(stdout, steps_done - x->start_step - 1, ct_monotonic_seconds() - profile_start);
    *summary = (run_summary){.steps = steps_done, .train_loss = last_loss, .eval_loss = NAN,
                             .eval_accuracy = NAN, .tokens_seen = tokens_seen, .world_size = d->world_size,
                             .wall_seconds = wall};
    double processed = (double)(steps_done - x->start_step) * (double)global_batch * seq;
    summary->tokens_per_second = wall > 0 ? processed / wall : 0;
    return 0;
}

static void close_run(run *x) {
    if (x->opt_ready) zero_free(&x->opt);
    free(x->micro_losses);
    free(x->local_losses);
    if (x->model_ready) model_free(&x->m);
    if (x->train_open) dataset_close(&x->train);
    if (x->eval_open) dataset_close(&x->eval);
    free(x->ids);
    free(x->targets);
    free(x->positions);
    free(x->doc_ids);
    if (x->metrics.file) metrics_close(&x->metrics);
    if (x->profiling) kernels_profile_stop(); /* after every release through the wrapper */
}

int trainer_run(const recipe *r, const dist *d, bool dry_run, run_summary *summary, ct_error *err) {
    run x;
    memset(&x, 0, sizeof x);
    x.r = r;
    x.d = d;
    snprintf(x.base_dir, sizeof x.base_dir, "%s", r->model.path);
    int threads = dist_threads_per_rank(d);
    /* cpu_gemm runs OpenBLAS serially on tiles of its own (kernels/cpu/gemm.c); the OpenMP
     * build of OpenBLAS sets OpenMP's count too, so OpenMP's is set after it. */
    openblas_set_num_threads(1);
    omp_set_num_threads(threads);

    x.hook = test_hook_from_env();
    int status = dist_set_timeout(d, r->distributed.timeout_s, err);
    if (!status) status = select_backend(r, d, &x.k, x.memory_key, sizeof x.memory_key, err);
    const char *profile = getenv("CTUNE_PROFILE");
    if (!status && profile && !strcmp(profile, "1") && !dry_run) {
        status = kernels_profile_start(x.k, &x.k, err);
        x.profiling = status == 0;
    }
    if (!status && r->distributed.backend == DIST_BACKEND_NCCL)
        status = ct_fail(err, "%s: distributed.backend nccl is not available yet: the NCCL back end comes "
                              "with the CUDA kernels; on CPU ranks use distributed.backend: mpi (or auto)",
                         r->source);
    if (dist_agree(d, status, err)) return -1;
    /* Same inputs on every rank, so every rank fails alike: no agreement round needed. */
    if (recipe_grad_accum_steps(r, d->world_size, &x.accum_steps, err)) return -1;
    if (prepare_inputs(&x, err)) return -1;
    status = build_model(&x, err);
    if (!status) status = open_data(&x, err);
    if (!status && r->data.seq_len > x.m.cfg.max_position_embeddings && d->rank == 0)
        printf("ctune: warning: data.seq_len %d exceeds the model's max_position_embeddings %d\n",
               r->data.seq_len, x.m.cfg.max_position_embeddings);
    if (dist_agree(d, status, err)) {
        close_run(&x);
        return -1;
    }
    if (d->rank == 0) print_plan(&x, dry_run);
    status = check_memory(&x, dry_run, err);
    if (dry_run || dist_agree(d, status, err)) {
        close_run(&x);
        return dry_run ? 0 : -1;
    }

    size_t batch_tokens = (size_t)x.accum_steps * r->train.micro_batch_size * r->data.seq_len;
    x.ids = malloc(batch_tokens * sizeof *x.ids);
    x.targets = malloc(batch_tokens * sizeof *x.targets);
    x.positions = malloc(batch_tokens * sizeof *x.positions);
    if (r->data.pack) {
        x.doc_ids = malloc(batch_tokens * sizeof *x.doc_ids);
        x.pack_docs_per_row = data_pack_docs_per_row(&x.train, r->data.seq_len);
    }
    if (!x.ids || !x.targets || !x.positions || (r->data.pack && !x.doc_ids)) status = ct_fail(err, "out of memory for %zu batch tokens", batch_tokens);
    x.m.activation_checkpointing = r->train.activation_checkpointing;
    if (!status) status = model_reserve(&x.m, r->train.micro_batch_size, r->data.seq_len, err);
    if (!status)
        status = model_reserve_loss_slots(&x.m, x.accum_steps, r->train.micro_batch_size * r->data.seq_len, err);
    size_t n_micro = (size_t)x.accum_steps * (size_t)d->world_size;
    x.micro_losses = calloc(n_micro, sizeof *x.micro_losses);
    x.local_losses = calloc((size_t)x.accum_steps, sizeof *x.local_losses);
    if (!status && (!x.micro_losses || !x.local_losses)) status = ct_fail(err, "out of memory");
    if (!status) status = zero_create(&x.opt, &x.m, d, r->distributed.zero_stage, x.accum_steps, err);
    x.opt_ready = status == 0;
    if (x.m.grad_buckets) {
        x.m.grads_ready = layer_grads_ready;
        x.m.grads_ready_ctx = &x;
    }
    if (x.m.gather_layers) {
        x.m.layer_weights = layer_weights_needed;
        x.m.layer_weights_ctx = &x;
    }
    x.micro_agreed = true;
    loss_scaler_init(&x.scaler, r->precision == PRECISION_FP16_MIXED, r->optim.loss_scale_init,
                     r->optim.loss_scale_growth_interval);
    if (!status) status = resume_run(&x, err);
    if (dist_agree(d, status, err)) {
        close_run(&x);
        return -1;
    }
    if (!status && d->rank == 0) {
        char path[4096];
        if (x.resumed_from[0])
            printf("ctune: resumed from %s at step %d of %d\n", x.resumed_from, x.start_step, r->train.max_steps);
        status = make_dirs(r->checkpoint.output_dir, err);
        if (!status) status = write_resolved_recipe(&x, err);
        snprintf(path, sizeof path, "%s/metrics.jsonl", r->checkpoint.output_dir);
        if (!status)
            status = x.resumed_from[0] ? metrics_open_resumed(&x.metrics, path, x.start_step, err)
                                       : metrics_open(&x.metrics, path, err);
        if (!status && r->train.tensorboard) {
            snprintf(path, sizeof path, "%s/tensorboard", r->checkpoint.output_dir);
            status = open_tensorboard(&x, path, err);
        }
    }
    if (dist_agree(d, status, err)) {
        close_run(&x);
        return -1;
    }

    struct sigaction preempt = {.sa_handler = on_preempt};
    sigemptyset(&preempt.sa_mask);
    sigaction(SIGTERM, &preempt, NULL);
    sigaction(SIGUSR1, &preempt, NULL);
    run_summary s;
    status = train_loop(&x, &s, err);
    if (!status && x.preempted) {
        close_run(&x);
        return TRAINER_PREEMPTED;
    }
    s.wall_seconds += x.resumed_wall;
    if (!status && x.eval_open) {
        long long eval_tokens = 0;
        status = evaluate_loss(&x.m, &x.eval, d, r->train.micro_batch_size, r->data.seq_len,
                               r->train.eval_max_batches, &s.eval_loss, &eval_tokens, err);
        if (!status && r->data.synthetic_task[0])
            status = evaluate_accuracy(&x.m, &x.eval, d, 0, &s.eval_accuracy, err);
        if (!status && d->rank == 0) {
            printf("final eval | eval_loss %.4f", s.eval_loss);
            if (!isnan(s.eval_accuracy)) printf(" | answer accuracy %.1f%%", 100.0 * s.eval_accuracy);
            printf("\n");
            metrics_eval(&x.metrics, s.steps, s.eval_loss, eval_tokens, s.eval_accuracy);
            warn_metrics(&x.metrics);
        }
    }
    if (!status) status = dist_agree(d, gather_peak_memory(&x, &s, err), err);
    /* The loop and the evaluations fail on every rank together, with the agreed message; only
     * the final write (rank 0) still needs an agreement. */
    if (!status) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/final", r->checkpoint.output_dir);
        int local = write_hub(&x, dir, &s, err);
        if (d->rank == 0) {
            if (!local) local = write_summary_json(r->checkpoint.output_dir, &s, err);
            if (!local) {
                char wall[32];
                units_format_duration(s.wall_seconds, false, wall, sizeof wall);
                printf("done: %d steps in %s (%.0f tok/s); final train loss %.4f; wrote %s\n", s.steps,
                       wall, s.tokens_per_second, s.train_loss, dir);
            }
        }
        status = dist_agree(d, local, err);
    }
    if (!status && summary) *summary = s;
    close_run(&x);
    return status;
}
