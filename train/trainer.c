#include "train/trainer.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "optim/adamw.h"
#include "optim/clip.h"
#include "optim/schedule.h"
#include "train/bootstrap.h"
#include "train/fsutil.h"
#include "train/metrics.h"
#include "train/tokenizer.h"

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int argmax_logits(const float *logits, int vocab) {
    int best = 0;
    for (int i = 1; i < vocab; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

/* Precision other than fp32 needs the CUDA backend; device auto falls back to the CPU. */
static int select_backend(const recipe *r, const kernels **k, ct_error *err) {
    bool needs_gpu = r->precision != PRECISION_FP32;
    if (r->device == DEVICE_CPU) {
        if (needs_gpu)
            return ct_fail(err, "%s: precision '%s' needs a CUDA GPU; use precision: fp32 with device: cpu",
                           r->source, recipe_precision_name(r->precision));
        *k = kernels_cpu();
        return 0;
    }
    ct_error cuda_err;
    if (kernels_cuda(k, &cuda_err) == 0) return 0;
    if (r->device == DEVICE_CUDA || needs_gpu)
        return ct_fail(err, "%s: the recipe asks for a GPU (device: %s, precision: %s) but none can be used: %s",
                       r->source, recipe_device_name(r->device), recipe_precision_name(r->precision),
                       cuda_err.msg);
    *k = kernels_cpu();
    return 0;
}

static int lora_from_recipe(const recipe *r, lora_settings *s, ct_error *err) {
    memset(s, 0, sizeof *s);
    s->r = r->lora.r;
    s->alpha = (float)r->lora.alpha;
    s->dropout = (float)r->lora.dropout;
    s->use_rslora = r->lora.use_rslora;
    const char *names[RECIPE_MAX_TARGETS];
    for (int i = 0; i < r->lora.n_targets; i++) names[i] = r->lora.targets[i];
    if (lora_parse_targets(s, names, r->lora.n_targets, err))
        return ct_error_prefix(err, "%s: lora.target_modules", r->source);
    return 0;
}

int load_model_for_inference(model *m, const char *model_dir, const char *adapter_dir,
                             const kernels *k, ct_error *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", model_dir);
    model_config cfg;
    if (model_config_load(&cfg, path, err)) return -1;
    lora_settings lora;
    if (adapter_dir && lora_read_config(adapter_dir, &lora, err)) {
        model_config_free(&cfg);
        return -1;
    }
    int status = model_create(m, &cfg, adapter_dir ? &lora : NULL, k, err);
    model_config_free(&cfg);
    if (status) return -1;
    if (model_load_weights(m, model_dir, err) || (adapter_dir && lora_load_adapter(m, adapter_dir, err))) {
        model_free(m);
        return -1;
    }
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

int evaluate_loss(model *m, const dataset *ds, const dist *d, int micro_batch, int seq_len,
                  int max_batches, double *mean_loss, long long *tokens, ct_error *err) {
    long long n_batches = (ds->n_docs + micro_batch - 1) / micro_batch;
    if (max_batches > 0 && n_batches > max_batches) n_batches = max_batches;
    size_t n = (size_t)micro_batch * (size_t)seq_len;
    int32_t *ids = malloc(n * sizeof *ids), *targets = malloc(n * sizeof *targets),
            *positions = malloc(n * sizeof *positions);
    /* Per-batch sums, summed in batch order after the reduction: the result is the same
     * bits on any number of ranks. */
    double *sums = calloc(2 * (size_t)n_batches + 2, sizeof *sums);
    int status = (ids && targets && positions && sums) ? 0 : ct_fail(err, "out of memory for evaluation");
    for (long long b = d->rank; status == 0 && b < n_batches; b += d->world_size) {
        int rows = micro_batch;
        if ((b + 1) * micro_batch > ds->n_docs) rows = (int)(ds->n_docs - b * micro_batch);
        data_fill_batch(ds, 0, false, b * micro_batch, rows, seq_len, ids, targets, positions);
        model_batch batch = {ids, targets, positions, NULL, rows, seq_len};
        long count = 0;
        status = model_step(m, &batch, false, 0.0f, 0, &sums[2 * b], &count, err);
        sums[2 * b + 1] = (double)count;
    }
    free(ids);
    free(targets);
    free(positions);
    if (dist_agree(d, status, err) || dist_sum_doubles(d, sums, 2 * (size_t)n_batches, err)) {
        free(sums);
        return -1;
    }
    double loss_sum = 0, count = 0;
    for (long long b = 0; b < n_batches; b++) {
        loss_sum += sums[2 * b];
        count += sums[2 * b + 1];
    }
    free(sums);
    *mean_loss = count > 0 ? loss_sum / count : NAN;
    if (tokens) *tokens = (long long)count;
    return 0;
}

int evaluate_accuracy(model *m, const dataset *ds, const dist *d, int max_examples,
                      double *accuracy, ct_error *err) {
    long long n_docs = ds->n_docs;
    if (max_examples > 0 && n_docs > max_examples) n_docs = max_examples;
    int vocab = m->cfg.vocab_size;
    float *logits = malloc((size_t)vocab * sizeof *logits);
    int32_t *seq = NULL;
    size_t seq_cap = 0;
    double counts[2] = {0, 0}; /* correct, total */
    int status = logits ? 0 : ct_fail(err, "out of memory for logits");
    for (long long doc = d->rank; status == 0 && doc < n_docs; doc += d->world_size) {
        int64_t begin = ds->doc_offsets[doc], end = ds->doc_offsets[doc + 1];
        int64_t prompt_len = 0;
        while (begin + prompt_len < end && !ds->loss_mask[begin + prompt_len]) prompt_len++;
        int64_t length = end - begin;
        if (prompt_len == 0 || prompt_len == length) continue; /* no prompt/answer split */
        if ((size_t)length > seq_cap) {
            seq_cap = (size_t)length;
            int32_t *grown = realloc(seq, seq_cap * sizeof *seq);
            if (!grown) {
                status = ct_fail(err, "out of memory");
                break;
            }
            seq = grown;
        }
        memcpy(seq, ds->tokens + begin, (size_t)prompt_len * sizeof *seq);
        bool correct = true;
        for (int64_t t = prompt_len; t < length && status == 0; t++) {
            status = model_last_logits(m, seq, (int)t, logits, err);
            int next = argmax_logits(logits, vocab);
            if (next != ds->tokens[begin + t]) {
                correct = false;
                break;
            }
            seq[t] = next;
        }
        counts[0] += correct ? 1 : 0;
        counts[1] += 1;
    }
    free(logits);
    free(seq);
    if (dist_agree(d, status, err)) return -1;
    if (dist_sum_doubles(d, counts, 2, err)) return -1;
    *accuracy = counts[1] > 0 ? counts[0] / counts[1] : NAN;
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
    adamw_state opt;
    bool opt_ready;
    metrics_log metrics;
    char base_dir[4096];
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
    if (!status) status = model_create(&x->m, &cfg, r->method == METHOD_LORA ? &lora : NULL, x->k, err);
    model_config_free(&cfg);
    if (status) return -1;
    x->model_ready = true;
    if (model_load_weights(&x->m, r->model.path, err)) return -1;
    if (x->m.has_lora) model_init_lora(&x->m, (uint64_t)r->train.seed);
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

static void print_plan(const run *x, bool dry_run) {
    const recipe *r = x->r;
    size_t total = model_count_params(&x->m, false), trainable = model_count_params(&x->m, true);
    size_t param_bytes = total * sizeof(float), grad_bytes = trainable * sizeof(float);
    size_t optim_bytes = 2 * trainable * sizeof(float);
    size_t act_bytes = model_activation_bytes(&x->m.cfg, x->m.has_lora ? &x->m.lora : NULL,
                                              r->train.micro_batch_size, r->data.seq_len);
    if (dry_run) {
        ct_error err;
        printf("# resolved recipe\n");
        recipe_write(r, stdout, &err);
        printf("\n");
    }
    printf("ctune: %s on %d rank(s), backend %s, %d thread(s) per rank\n",
           r->method == METHOD_LORA ? "LoRA" : "full fine-tuning", x->d->world_size, x->k->name,
           dist_threads_per_rank(x->d));
    printf("  parameters: %zu total, %zu trainable (%.3f%%)\n", total, trainable,
           total ? 100.0 * (double)trainable / (double)total : 0.0);
    printf("  batch: global %d = micro %d x ranks %d x accumulation %d; seq_len %d\n",
           r->train.global_batch_size, r->train.micro_batch_size, x->d->world_size, x->accum_steps,
           r->data.seq_len);
    printf("  data: %s (%lld documents, %lld tokens)", r->data.train, (long long)x->train.n_docs,
           (long long)x->train.n_tokens);
    if (x->eval_open) printf("; eval %s (%lld documents)", r->data.eval, (long long)x->eval.n_docs);
    printf("\n");
    double mib = 1024.0 * 1024.0;
    printf("  memory per rank (estimate): weights %.1f MiB, gradients %.1f MiB, optimizer %.1f MiB, "
           "activations %.1f MiB, total %.1f MiB\n",
           (double)param_bytes / mib, (double)grad_bytes / mib, (double)optim_bytes / mib,
           (double)act_bytes / mib, (double)(param_bytes + grad_bytes + optim_bytes + act_bytes) / mib);
}

/* Numbers with %.17g so that a saved eval loss can be compared bit for bit. */
static void json_number(char *out, size_t size, double value) {
    if (isfinite(value)) snprintf(out, size, "%.17g", value);
    else snprintf(out, size, "null");
}

static int write_summary_json(const char *dir, const run_summary *s, ct_error *err) {
    char train_loss[32], eval_loss[32], accuracy[32], tok_s[32], wall[32], text[1024];
    json_number(train_loss, sizeof train_loss, s->train_loss);
    json_number(eval_loss, sizeof eval_loss, s->eval_loss);
    json_number(accuracy, sizeof accuracy, s->eval_accuracy);
    json_number(tok_s, sizeof tok_s, s->tokens_per_second);
    json_number(wall, sizeof wall, s->wall_seconds);
    int len = snprintf(text, sizeof text,
                       "{\n  \"steps\": %d,\n  \"train_loss\": %s,\n  \"eval_loss\": %s,\n"
                       "  \"eval_accuracy\": %s,\n  \"tokens_seen\": %lld,\n  \"tokens_per_second\": %s,\n"
                       "  \"wall_seconds\": %s,\n  \"world_size\": %d\n}\n",
                       s->steps, train_loss, eval_loss, accuracy, s->tokens_seen, tok_s, wall, s->world_size);
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

/* Periodic hub folders under checkpoints/, pruned to keep_last. */
static int write_periodic_checkpoint(run *x, int step, const run_summary *s, ct_error *err) {
    const recipe *r = x->r;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/checkpoints/step-%06d", r->checkpoint.output_dir, step);
    if (checkpoint_write_hub(dir, &x->m, r, x->base_dir, s, err)) return -1;
    int old_step = step - r->checkpoint.every * r->checkpoint.keep_last;
    if (r->checkpoint.keep_last > 0 && old_step > 0) {
        snprintf(dir, sizeof dir, "%s/checkpoints/step-%06d", r->checkpoint.output_dir, old_step);
        if (remove_tree(dir, err)) return -1;
    }
    return 0;
}

static void format_duration(double seconds, char *out, size_t size) {
    long s = (long)(seconds + 0.5);
    if (s >= 3600) snprintf(out, size, "%ldh%02ldm", s / 3600, (s / 60) % 60);
    else if (s >= 60) snprintf(out, size, "%ldm%02lds", s / 60, s % 60);
    else snprintf(out, size, "%lds", s);
}

static int train_loop(run *x, run_summary *summary, ct_error *err) {
    const recipe *r = x->r;
    const dist *d = x->d;
    const int micro = r->train.micro_batch_size, seq = r->data.seq_len;
    const size_t micro_tokens = (size_t)micro * (size_t)seq;
    const long long global_batch = r->train.global_batch_size;
    lr_schedule schedule = lr_schedule_from_recipe(r);
    adamw_hparams hp = {r->optim.beta1, r->optim.beta2, r->optim.eps, r->optim.weight_decay};
    double start = now_seconds(), last_log = start;
    long long tokens_seen = 0, processed_since_log = 0;
    double last_loss = NAN, eval_loss = NAN;
    for (int step = 0; step < r->train.max_steps; step++) {
        /* This rank's samples of the global batch: micro-batch a holds global samples
         * step*G + (a*world + rank)*micro + [0, micro). */
        long long local_tokens = 0;
        for (int a = 0; a < x->accum_steps; a++) {
            long long first = step * global_batch + ((long long)a * d->world_size + d->rank) * micro;
            size_t o = (size_t)a * micro_tokens;
            data_fill_batch(&x->train, (uint64_t)r->train.seed, true, first, micro, seq, x->ids + o,
                            x->targets + o, x->positions + o);
            for (size_t t = 0; t < micro_tokens; t++) local_tokens += x->targets[o + t] >= 0;
        }
        /* Loss = sum over the global batch / its loss tokens: the scale must be global. */
        long long global_tokens = local_tokens;
        if (dist_sum_longs(d, &global_tokens, 1, err)) return -1;
        float grad_scale = global_tokens > 0 ? 1.0f / (float)global_tokens : 0.0f;
        model_zero_grads(&x->m);
        double loss_sum = 0;
        int status = 0;
        for (int a = 0; a < x->accum_steps && status == 0; a++) {
            size_t o = (size_t)a * micro_tokens;
            model_batch batch = {x->ids + o, x->targets + o, x->positions + o, NULL, micro, seq};
            long long first = step * global_batch + ((long long)a * d->world_size + d->rank) * micro;
            uint64_t dropout_seed = (uint64_t)r->train.seed * 0x9E3779B97F4A7C15ull ^ (uint64_t)first;
            double part = 0;
            long count = 0;
            status = model_step(&x->m, &batch, true, grad_scale, dropout_seed, &part, &count, err);
            loss_sum += part;
        }
        if (dist_agree(d, status, err)) return -1;
        if (dist_sum_floats(d, x->m.grad_arena, x->m.grad_numel, err)) return -1;
        if (dist_sum_doubles(d, &loss_sum, 1, err)) return -1;
        double grad_norm = grad_clip(&x->m, r->optim.grad_clip);
        double lr = lr_at_step(&schedule, step);
        adamw_step(&x->opt, &x->m, &hp, lr);

        last_loss = global_tokens > 0 ? loss_sum / (double)global_tokens : NAN;
        tokens_seen += global_tokens;
        processed_since_log += (long long)micro_tokens * x->accum_steps * d->world_size;
        double now = now_seconds();
        double tok_s = processed_since_log / (now - last_log > 1e-9 ? now - last_log : 1e-9);
        if (d->rank == 0) metrics_step(&x->metrics, step + 1, last_loss, lr, grad_norm, global_tokens, tok_s, now - start);
        bool log_now = (step + 1) % r->train.log_every == 0 || step == 0 || step + 1 == r->train.max_steps;
        if (d->rank == 0 && log_now) {
            char eta[32];
            format_duration((now - start) / (step + 1) * (r->train.max_steps - step - 1), eta, sizeof eta);
            printf("step %*d/%d | loss %.4f | lr %.3e | grad_norm %.3f | %.0f tok/s | eta %s\n",
                   (int)snprintf(NULL, 0, "%d", r->train.max_steps), step + 1, r->train.max_steps,
                   last_loss, lr, grad_norm, tok_s, eta);
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
            }
        }
        if (r->checkpoint.every > 0 && (step + 1) % r->checkpoint.every == 0 && step + 1 < r->train.max_steps) {
            run_summary s = {.steps = step + 1, .train_loss = last_loss, .eval_loss = eval_loss,
                             .eval_accuracy = NAN, .tokens_seen = tokens_seen, .world_size = d->world_size,
                             .wall_seconds = now - start};
            status = d->rank == 0 ? write_periodic_checkpoint(x, step + 1, &s, err) : 0;
            if (dist_agree(d, status, err)) return -1;
        }
    }
    double wall = now_seconds() - start;
    *summary = (run_summary){.steps = r->train.max_steps, .train_loss = last_loss, .eval_loss = NAN,
                             .eval_accuracy = NAN, .tokens_seen = tokens_seen, .world_size = d->world_size,
                             .wall_seconds = wall};
    double processed = (double)r->train.max_steps * (double)global_batch * seq;
    summary->tokens_per_second = wall > 0 ? processed / wall : 0;
    return 0;
}

static void close_run(run *x) {
    if (x->opt_ready) adamw_free(&x->opt);
    if (x->model_ready) model_free(&x->m);
    if (x->train_open) dataset_close(&x->train);
    if (x->eval_open) dataset_close(&x->eval);
    free(x->ids);
    free(x->targets);
    free(x->positions);
    if (x->metrics.file) metrics_close(&x->metrics);
}

int trainer_run(const recipe *r, const dist *d, bool dry_run, run_summary *summary, ct_error *err) {
    run x;
    memset(&x, 0, sizeof x);
    x.r = r;
    x.d = d;
    snprintf(x.base_dir, sizeof x.base_dir, "%s", r->model.path);
    int threads = dist_threads_per_rank(d);
    omp_set_num_threads(threads);
    openblas_set_num_threads(threads);

    int status = select_backend(r, &x.k, err);
    if (!status && r->distributed.zero_stage != 0)
        status = ct_fail(err, "%s: distributed.zero_stage %d is not available yet (only 0: replicated optimizer state)",
                         r->source, r->distributed.zero_stage);
    if (!status && r->distributed.backend == DIST_BACKEND_NCCL)
        status = ct_fail(err, "%s: distributed.backend nccl needs the CUDA backend, which is not available yet", r->source);
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
    if (dry_run) {
        close_run(&x);
        return 0;
    }

    size_t batch_tokens = (size_t)x.accum_steps * r->train.micro_batch_size * r->data.seq_len;
    x.ids = malloc(batch_tokens * sizeof *x.ids);
    x.targets = malloc(batch_tokens * sizeof *x.targets);
    x.positions = malloc(batch_tokens * sizeof *x.positions);
    if (!x.ids || !x.targets || !x.positions) status = ct_fail(err, "out of memory for %zu batch tokens", batch_tokens);
    if (!status) status = model_reserve(&x.m, r->train.micro_batch_size, r->data.seq_len, err);
    if (!status) status = adamw_create(&x.opt, &x.m, err);
    x.opt_ready = status == 0;
    if (!status && d->rank == 0) {
        char path[4096];
        status = make_dirs(r->checkpoint.output_dir, err);
        if (!status) status = write_resolved_recipe(&x, err);
        snprintf(path, sizeof path, "%s/metrics.jsonl", r->checkpoint.output_dir);
        if (!status) status = metrics_open(&x.metrics, path, err);
    }
    if (dist_agree(d, status, err)) {
        close_run(&x);
        return -1;
    }

    run_summary s;
    status = train_loop(&x, &s, err);
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
        }
    }
    if (!status && d->rank == 0) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/final", r->checkpoint.output_dir);
        status = checkpoint_write_hub(dir, &x.m, r, x.base_dir, &s, err);
        if (!status) status = write_summary_json(r->checkpoint.output_dir, &s, err);
        if (!status) {
            char wall[32];
            format_duration(s.wall_seconds, wall, sizeof wall);
            printf("done: %d steps in %s (%.0f tok/s); final train loss %.4f; wrote %s\n", s.steps, wall,
                   s.tokens_per_second, s.train_loss, dir);
        }
    }
    status = dist_agree(d, status, err);
    if (!status && summary) *summary = s;
    close_run(&x);
    return status;
}
