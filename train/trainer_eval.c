/* The evaluation and inference helpers of trainer.h (loss and answer accuracy over a
 * dataset, split over ranks; choosing a backend; loading a model for inference), apart from
 * the step loop. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_status.h"
#include "kernels/nf4.h"
#include "train/fsutil.h"
#include "train/sampling.h"
#include "train/trainer.h"

model_precision model_precision_of(recipe_precision p) {
    return p == PRECISION_BF16_MIXED ? MODEL_BF16_MIXED : p == PRECISION_FP16_MIXED ? MODEL_FP16_MIXED : MODEL_FP32;
}

/* device auto takes the GPU when one can be used and falls back to the CPU; every precision
 * runs on both (mixed precision on the CPU rounds as the GPU does, to check, not to be fast). */
int backend_for_device(recipe_device device, int local_rank, const kernels **k, char *memory_key, size_t key_size,
                       ct_error *why) {
    const char *shadow = getenv("CTUNE_TEST_SHADOW_MEMORY");
    snprintf(memory_key, key_size, "host");
    if (shadow && !strcmp(shadow, "1")) { /* test hook: GPU-like memory on the CPU */
        *k = kernels_shadow();
        return 0;
    }
    if (device == DEVICE_CPU) {
        *k = kernels_cpu();
        return 0;
    }
    char bus_id[64];
    if (kernels_cuda_bind_rank(local_rank, bus_id, sizeof bus_id, why) == 0 && kernels_cuda(k, why) == 0) {
        snprintf(memory_key, key_size, "cuda:%s", bus_id);
        return 0;
    }
    if (device == DEVICE_CUDA) return -1;
    *k = kernels_cpu();
    return 0;
}

static const char *const precision_names[] = {"fp32", "bf16-mixed", "fp16-mixed"};
static const char *const device_names[] = {"auto", "cpu", "cuda"};

/* The index of text in names[n], or -1 after saying on stderr what was expected. */
static int choice_of(const char *command, const char *flag, const char *text, const char *const *names, int n) {
    for (int i = 0; i < n; i++)
        if (!strcmp(text, names[i])) return i;
    fprintf(stderr, "ctune %s: %s '%s': expected ", command, flag, text);
    for (int i = 0; i < n; i++) fprintf(stderr, "%s%s", names[i], i + 2 < n ? ", " : i + 1 < n ? " or " : "\n");
    return -1;
}

void inference_options_usage(FILE *out) {
    fputs("  --run DIR            a training run's folder: its recipe.resolved.yaml gives the model,\n"
          "                       adapter (DIR/final), precision, device, --quantize-base and, for\n"
          "                       eval, the data and batch shape of the run's final evaluation;\n"
          "                       flags given as well take precedence\n"
          "  --model DIR          a Hugging Face model folder\n"
          "  --adapter DIR        plus a PEFT LoRA/DoRA adapter folder (e.g. a run's final/)\n"
          "  --precision P        fp32 (default), bf16-mixed or fp16-mixed: 16-bit GEMMs as a run in\n"
          "                       that precision computes them, so its own evaluations come out the same\n"
          "  --device D           auto (default: the GPU when one can be used), cpu or cuda\n"
          "  --quantize-base nf4  read the base as a QLoRA run (lora.quantize_base: nf4) held it: the\n"
          "                       layers' Linear weights replaced by their NF4 read-back, the weights\n"
          "                       its adapter was trained on\n",
          out);
}

int inference_option(const char *command, int argc, char **argv, int *i, inference_source *src) {
    const char *flag = argv[*i];
    if (*i + 1 >= argc) return 0;
    const char *value = argv[*i + 1];
    int choice = 0;
    if (!strcmp(flag, "--model")) src->model_dir = value;
    else if (!strcmp(flag, "--run")) src->run_dir = value;
    else if (!strcmp(flag, "--adapter")) src->adapter_dir = value;
    else if (!strcmp(flag, "--quantize-base")) {
        static const char *const nf4[] = {"nf4"};
        if (choice_of(command, flag, value, nf4, 1) < 0) return -1;
        src->nf4_base = true;
    } else if (!strcmp(flag, "--precision")) {
        if ((choice = choice_of(command, flag, value, precision_names, 3)) < 0) return -1;
        src->precision = model_precision_of((recipe_precision)choice);
        src->precision_given = true;
    } else if (!strcmp(flag, "--device")) {
        if ((choice = choice_of(command, flag, value, device_names, 3)) < 0) return -1;
        src->device = (recipe_device)choice;
        src->device_given = true;
    } else return 0;
    *i += 1;
    return 1;
}

int inference_apply_run(inference_source *src, run_eval_settings *eval, ct_error *err) {
    if (!src->run_dir) return 0;
    char path[RECIPE_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/recipe.resolved.yaml", src->run_dir);
    if (!path_exists(path))
        return ct_fail(err, "--run %s: no recipe.resolved.yaml (not a run folder, or the run never started)",
                       src->run_dir);
    recipe *r = malloc(sizeof *r);
    if (!r) return ct_fail(err, "out of memory for a recipe");
    if (recipe_load(r, path, err)) {
        free(r);
        return ct_error_prefix(err, "--run %s", src->run_dir);
    }
    snprintf(src->run_final, sizeof src->run_final, "%s/final", src->run_dir);
    snprintf(src->run_base, sizeof src->run_base, "%s", r->model.path);
    const bool lora = r->method == METHOD_LORA;
    int status = path_is_dir(src->run_final) ? 0
                 : ct_fail(err, "--run %s: no final/ folder (the run has not finished); name a checkpoint "
                                "with --%s %s/checkpoints/step-N",
                           src->run_dir, lora ? "adapter" : "model", src->run_dir);
    if (!status) {
        if (lora) {
            if (!src->model_dir) src->model_dir = src->run_base;
            if (!src->adapter_dir) src->adapter_dir = src->run_final;
            src->nf4_base |= r->lora.quantize_base == BASE_QUANT_NF4;
        } else if (!src->model_dir) {
            src->model_dir = src->run_final;
        }
        if (!src->precision_given) src->precision = model_precision_of(r->precision);
        if (!src->device_given) src->device = r->device;
        if (eval) {
            snprintf(eval->data, sizeof eval->data, "%s", r->data.eval);
            eval->seq_len = r->data.seq_len;
            eval->micro_batch = r->train.micro_batch_size;
            eval->max_batches = r->train.eval_max_batches;
            eval->accuracy = r->data.synthetic_task[0] != 0;
        }
    }
    free(r);
    return status;
}

int inference_backend(const inference_source *src, int local_rank, const kernels **k, ct_error *err) {
    char memory_key[80];
    ct_error why;
    if (backend_for_device(src->device, local_rank, k, memory_key, sizeof memory_key, &why))
        return ct_fail(err, "--device cuda asks for a GPU but none can be used: %s (--device auto falls back "
                            "to the CPU)", why.msg);
    return 0;
}

int inference_check(const kernels *k, ct_error *err) {
    return strcmp(k->name, "cuda") ? 0 : kernels_cuda_status(err);
}

/* --quantize-base nf4: every weight QLoRA holds in 4 bits (model_nf4_quantizes) replaced by
 * its NF4 read-back in fp32, the weights a QLoRA run's adapter was trained on (as ctune merge
 * --quantize-base nf4 merges into). */
static int read_back_nf4_base(model *m, ct_error *err) {
    size_t largest = 0;
    for (int i = 0; i < m->n_params; i++)
        if (model_nf4_quantizes(m->params[i].name, m->params[i].ndim) && m->params[i].numel > largest)
            largest = m->params[i].numel;
    float *host = malloc(largest * sizeof *host + 1);
    uint8_t *codes = malloc(nf4_code_bytes(largest) + 1);
    float *absmax = malloc(nf4_block_count(largest) * sizeof *absmax + 1);
    int status = host && codes && absmax ? 0 : ct_fail(err, "out of memory reading the base back from NF4");
    for (int i = 0; !status && i < m->n_params; i++) {
        model_param *p = &m->params[i];
        if (!model_nf4_quantizes(p->name, p->ndim)) continue;
        model_param_download(m, p, host);
        const size_t bad = nf4_read_back(host, p->numel, codes, absmax);
        if (bad < p->numel)
            status = nf4_non_finite_error(err, p->name, (double)host[bad], bad);
        else model_param_upload(m, p, host);
    }
    free(host);
    free(codes);
    free(absmax);
    if (!status) model_weights_changed(m, false);
    return status;
}

int load_model_for_inference(model *m, const inference_source *src, const kernels *k, ct_error *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", src->model_dir);
    model_config cfg;
    if (model_config_load(&cfg, path, err)) return -1;
    lora_settings lora;
    if (src->adapter_dir && lora_read_config(src->adapter_dir, &lora, err)) {
        model_config_free(&cfg);
        return -1;
    }
    /* Built as a run builds it: in mixed precision a LoRA base is held only in 16 bits, and a
     * QLoRA base only as its NF4 codes, read back a layer at a time (model.nf4_base), so the
     * memory is the run's and its evaluations come out the same bits. In fp32 the base is
     * read back to fp32 once (read_back_nf4_base); so is a 4-bit base with no adapter, which
     * the 4-bit layout has nothing to train for. */
    const bool mixed = src->precision != MODEL_FP32;
    const bool nf4_layout = src->nf4_base && mixed && src->adapter_dir;
    const model_layout layout = {.precision = src->nf4_base && !nf4_layout ? MODEL_FP32 : src->precision,
                                 .nf4_base = nf4_layout};
    int status = model_create_as(m, &cfg, src->adapter_dir ? &lora : NULL, k, &layout, err);
    model_config_free(&cfg);
    if (status) return -1;
    if (model_load_weights(m, src->model_dir, err) || (src->nf4_base && !nf4_layout && read_back_nf4_base(m, err)) ||
        (src->adapter_dir && lora_load_adapter(m, src->adapter_dir, err)) ||
        (m->precision != src->precision && model_set_precision(m, src->precision, err))) {
        model_free(m);
        return -1;
    }
    return 0;
}

/* At ZeRO 3 every forward pass gathers the layers' weights from all ranks, so the ranks go
 * through an evaluation in rounds of one forward each, a rank with nothing left joining the
 * others' gathers (model_pass_weights). Each round starts with the agreement that every rank
 * got through the last one, so a failure stops them all in the same round. */
static bool forwards_are_collective(const model *m) { return m->gather_layers; }

int evaluate_loss(model *m, const dataset *ds, const dist *d, int micro_batch, int seq_len,
                  int max_batches, double *mean_loss, long long *tokens, ct_error *err) {
    long long n_batches = (ds->n_docs + micro_batch - 1) / micro_batch;
    if (max_batches > 0 && n_batches > max_batches) n_batches = max_batches;
    const bool synced = forwards_are_collective(m);
    size_t n = (size_t)micro_batch * (size_t)seq_len;
    int32_t *ids = malloc(n * sizeof *ids), *targets = malloc(n * sizeof *targets),
            *positions = malloc(n * sizeof *positions);
    /* Per-batch sums, summed in batch order after the reduction: the result is the same
     * bits on any number of ranks. */
    double *sums = calloc(2 * (size_t)n_batches + 2, sizeof *sums);
    int status = (ids && targets && positions && sums) ? 0 : ct_fail(err, "out of memory for evaluation");
    bool stopped = false; /* every rank learnt of a failure in a round's agreement */
    for (long long round = 0; round * d->world_size < n_batches; round++) {
        if (synced && dist_agree(d, status, err)) {
            stopped = true;
            break;
        }
        if (status) break;
        const long long b = round * d->world_size + d->rank;
        if (b >= n_batches) { /* only the last round leaves ranks without a batch */
            if (synced) status = model_pass_weights(m, err);
            continue;
        }
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
    if (stopped || dist_agree(d, status, err) || dist_sum_doubles(d, sums, 2 * (size_t)n_batches, err)) {
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

/* One rank's way through its share of the answers (documents rank, rank + world, ...): the
 * document it is generating, and how far. */
typedef struct answer_walk {
    const dataset *ds;
    long long doc, n_docs;
    int stride;
    bool in_doc;          /* a forward is due: the answer's token t */
    int64_t begin, length, t, prompt_len;
    int32_t *seq;         /* the prompt and what was generated so far */
    size_t seq_cap;
} answer_walk;

/* Moves to the next document with a prompt/answer split (none left: in_doc stays false). */
static int walk_next_doc(answer_walk *w, ct_error *err) {
    for (; !w->in_doc && w->doc < w->n_docs; w->doc += w->stride) {
        const dataset *ds = w->ds;
        int64_t begin = ds->doc_offsets[w->doc], end = ds->doc_offsets[w->doc + 1];
        int64_t prompt_len = 0;
        while (begin + prompt_len < end && !ds->loss_mask[begin + prompt_len]) prompt_len++;
        if (prompt_len == 0 || prompt_len == end - begin) continue; /* no prompt/answer split */
        if ((size_t)(end - begin) > w->seq_cap) {
            int32_t *grown = realloc(w->seq, (size_t)(end - begin) * sizeof *grown);
            if (!grown) return ct_fail(err, "out of memory");
            w->seq = grown;
            w->seq_cap = (size_t)(end - begin);
        }
        memcpy(w->seq, ds->tokens + begin, (size_t)prompt_len * sizeof *w->seq);
        w->begin = begin, w->length = end - begin, w->t = w->prompt_len = prompt_len;
        w->in_doc = true;
        return 0;
    }
    return 0;
}

int evaluate_accuracy(model *m, const dataset *ds, const dist *d, int max_examples,
                      double *accuracy, ct_error *err) {
    long long n_docs = ds->n_docs;
    if (max_examples > 0 && n_docs > max_examples) n_docs = max_examples;
    const int vocab = m->cfg.vocab_size;
    const bool synced = forwards_are_collective(m);
    float *logits = malloc((size_t)vocab * sizeof *logits);
    answer_walk w = {.ds = ds, .doc = d->rank, .n_docs = n_docs, .stride = d->world_size};
    double counts[2] = {0, 0}; /* correct, total */
    int status = logits ? 0 : ct_fail(err, "out of memory for logits");
    bool stopped = false;
    for (;;) { /* one forward per round: greedy decoding until the first wrong token */
        if (!status) status = walk_next_doc(&w, err);
        long long active = w.in_doc && !status;
        if (synced && (dist_agree(d, status, err) || dist_sum_longs(d, &active, 1, err))) {
            stopped = true;
            break;
        }
        if (!active) break;
        if (!w.in_doc) {
            status = model_pass_weights(m, err);
            continue;
        }
        /* the prompt once, then each predicted token on the KV cache */
        const bool fresh = w.t == w.prompt_len;
        if (fresh) status = model_cache_reserve(m, (int)w.length, err);
        if (!status) status = model_cache_append(m, w.seq + (fresh ? 0 : w.t - 1), fresh ? (int)w.t : 1, logits, err);
        if (status) continue;
        const int next = argmax_logits(logits, vocab);
        const bool right = next == ds->tokens[w.begin + w.t];
        w.seq[w.t++] = next;
        if (!right || w.t == w.length) {
            counts[0] += right ? 1 : 0;
            counts[1] += 1;
            w.in_doc = false;
            w.doc += w.stride;
        }
    }
    free(logits);
    free(w.seq);
    model_cache_release(m); /* not held through the training steps that follow */
    if (stopped || dist_agree(d, status, err)) return -1;
    if (dist_sum_doubles(d, counts, 2, err)) return -1;
    *accuracy = counts[1] > 0 ? counts[0] / counts[1] : NAN;
    return 0;
}
