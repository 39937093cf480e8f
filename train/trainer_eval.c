/* The evaluation and inference helpers of trainer.h (loss and answer accuracy over a
 * dataset, split over ranks; loading a model for inference), apart from the step loop. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/trainer.h"

int argmax_logits(const float *logits, int vocab) {
    int best = 0;
    for (int i = 1; i < vocab; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
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
