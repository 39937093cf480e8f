/* ctune eval --model DIR [--adapter DIR] --data FILE.h5 [options]
 * ctune eval --model DIR [--adapter DIR] --ids 1,2,3 --logits-out FILE.json */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/cli.h"
#include "train/fsutil.h"
#include "train/textbuf.h"
#include "train/trainer.h"

static void eval_usage(FILE *out) {
    fprintf(out,
            "usage: ctune eval --model DIR [--adapter DIR] --data FILE.h5 [options]\n"
            "       ctune eval --run RUN_DIR [options]\n"
            "       ctune eval --model DIR [--adapter DIR] --ids 1,2,3 --logits-out FILE.json\n"
            "       mpirun -np N ctune eval ...\n"
            "\n"
            "Mean token loss of a model (plus an optional PEFT LoRA adapter) on a ctune dataset,\n"
            "in dataset order, and the exact-match accuracy of greedy answers with --accuracy.\n"
            "The loss is the same bits on any number of ranks and equals a run's final eval_loss\n"
            "for the same --seq-len, --micro-batch, --precision and device.\n"
            "\n");
    inference_options_usage(out);
    fprintf(out,
            "  --seq-len N          sequence length (default 256, or the run's)\n"
            "  --micro-batch N      sequences per forward pass (default 8, or the run's)\n"
            "  --max-batches N      evaluate at most N micro-batches (default all, or the run's)\n"
            "  --accuracy           also measure answer accuracy (prompt = tokens before the loss;\n"
            "                       on with --run for a synthetic task's evaluation data, as the run did)\n"
            "Prints one JSON object: {\"eval_loss\", \"eval_tokens\"[, \"eval_accuracy\"]}.\n"
            "\n"
            "  --ids I,J,...        instead of a dataset: one sequence of token ids (no BOS added)\n"
            "  --logits-out FILE    with --ids: write {\"ids\": [...], \"logits\": [[vocab floats]\n"
            "                       per position]} (no dropout; '-' = stdout), to compare with\n"
            "                       another implementation's logits\n");
}

static int parse_count(const char *flag, const char *text, int min, int *out) {
    char *end;
    long v = strtol(text, &end, 10);
    if (!*text || *end || v < min || v > 1 << 24) {
        fprintf(stderr, "ctune eval: %s: '%s' is not an integer in [%d, %d]\n", flag, text, min, 1 << 24);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* "1,2,3" -> ids. Range against the vocabulary is checked once the model is loaded. */
static int parse_ids(const char *text, int32_t **ids, int *n, ct_error *err) {
    size_t cap = 1;
    for (const char *c = text; *c; c++) cap += *c == ',';
    *ids = malloc(cap * sizeof **ids);
    if (!*ids) return ct_fail(err, "--ids: out of memory");
    *n = 0;
    const char *p = text;
    for (;;) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        /* strtol skips leading blanks; an item must start with a digit or a minus sign. */
        bool number = end != p && (*p == '-' || (*p >= '0' && *p <= '9')) && (*end == ',' || !*end);
        if (!number || errno || v < 0 || v > INT32_MAX) {
            int len = (int)strcspn(p, ",");
            int offset = (int)(p - text);
            if (!*text) return ct_fail(err, "--ids: empty; expected comma-separated token ids like 1,2,3");
            if (number)
                return ct_fail(err, "--ids: item %d at character %d ('%.*s') is not a token id (%s)", *n + 1,
                               offset, len, p, v < 0 ? "negative" : "too large");
            if (len == 0) return ct_fail(err, "--ids: item %d at character %d is empty", *n + 1, offset);
            return ct_fail(err, "--ids: item %d at character %d ('%.*s') is not an integer", *n + 1, offset,
                           len, p);
        }
        (*ids)[(*n)++] = (int32_t)v;
        if (!*end) return 0;
        p = end + 1;
    }
}

/* Logits at every position of one sequence (one forward pass). */
static int write_sequence_logits(model *m, const int32_t *ids, int n, const char *out_path,
                                 ct_error *err) {
    const int vocab = m->cfg.vocab_size;
    for (int t = 0; t < n; t++)
        if (ids[t] >= vocab)
            return ct_fail(err, "--ids: item %d is %d, outside the model's vocabulary [0, %d)", t + 1,
                           (int)ids[t], vocab);
    float *logits = malloc((size_t)n * (size_t)vocab * sizeof *logits);
    if (!logits) return ct_fail(err, "out of memory for %d x %d logits", n, vocab);
    int status = model_logits(m, ids, n, 0, logits, err);
    if (!status) status = inference_check(m->k, err);
    textbuf json = {0};
    textbuf_puts(&json, "{\"ids\": [");
    for (int t = 0; t < n; t++) textbuf_printf(&json, "%s%d", t ? ", " : "", (int)ids[t]);
    textbuf_puts(&json, "], \"logits\": [");
    for (int t = 0; t < n && !status; t++) {
        const float *row = logits + (size_t)t * vocab;
        textbuf_puts(&json, t ? ",\n  [" : "\n  [");
        for (int v = 0; v < vocab; v++) {
            const char *sep = v ? ", " : "";
            /* Python's json reads these spellings of the non-finite values. */
            if (isnan(row[v])) textbuf_printf(&json, "%sNaN", sep);
            else if (isinf(row[v])) textbuf_printf(&json, "%s%sInfinity", sep, row[v] < 0 ? "-" : "");
            else textbuf_printf(&json, "%s%.9g", sep, (double)row[v]);
        }
        textbuf_puts(&json, "]");
    }
    textbuf_puts(&json, "]}\n");
    if (!status && json.failed) status = ct_fail(err, "out of memory");
    if (!status) {
        if (!strcmp(out_path, "-")) {
            if (fwrite(json.data, 1, json.len, stdout) != json.len || fflush(stdout))
                status = ct_fail(err, "writing the logits to stdout failed");
        } else if (write_file_atomic(out_path, json.data, json.len, err)) {
            status = -1;
        }
    }
    textbuf_free(&json);
    free(logits);
    return status;
}

/* --ids mode: one sequence's logits, on one process (no dataset, nothing to split). */
static int eval_logits(const inference_source *source, const char *ids_text, const char *out_path) {
    ct_error err = {{0}};
    int32_t *ids = NULL;
    int n = 0;
    model m;
    bool have_model = false;
    int status = parse_ids(ids_text, &ids, &n, &err);
    const kernels *k = NULL;
    if (!status) status = inference_backend(source, 0, &k, &err);
    if (!status) status = load_model_for_inference(&m, source, k, &err);
    have_model = !status;
    if (!status) status = write_sequence_logits(&m, ids, n, out_path, &err);
    if (status) fprintf(stderr, "ctune eval: %s\n", err.msg);
    if (have_model) model_free(&m);
    free(ids);
    return status ? 1 : 0;
}

int cmd_eval(int argc, char **argv) {
    inference_source source = {0};
    const char *data_path = NULL;
    const char *ids_text = NULL, *logits_out = NULL;
    int seq_len = -1, micro = -1, max_batches = -1; /* -1: not given */
    bool accuracy = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_value = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            eval_usage(stdout);
            return 0;
        }
        const int shared = inference_option("eval", argc, argv, &i, &source);
        if (shared < 0) return 2;
        if (shared) continue;
        if (!strcmp(a, "--data") && has_value) data_path = argv[++i];
        else if (!strcmp(a, "--ids") && has_value) ids_text = argv[++i];
        else if (!strcmp(a, "--logits-out") && has_value) logits_out = argv[++i];
        else if (!strcmp(a, "--seq-len") && has_value) {
            if (parse_count(a, argv[++i], 2, &seq_len)) return 2;
        } else if (!strcmp(a, "--micro-batch") && has_value) {
            if (parse_count(a, argv[++i], 1, &micro)) return 2;
        } else if (!strcmp(a, "--max-batches") && has_value) {
            if (parse_count(a, argv[++i], 0, &max_batches)) return 2;
        } else if (!strcmp(a, "--accuracy")) accuracy = true;
        else {
            fprintf(stderr, "ctune eval: unexpected argument '%s'\n\n", a);
            eval_usage(stderr);
            return 2;
        }
    }
    ct_error err = {{0}};
    run_eval_settings from_run = {.seq_len = 256, .micro_batch = 8, .max_batches = 0};
    if (inference_apply_run(&source, &from_run, &err)) {
        fprintf(stderr, "ctune eval: %s\n", err.msg);
        return 1;
    }
    if (seq_len < 0) seq_len = from_run.seq_len;
    if (micro < 0) micro = from_run.micro_batch;
    if (max_batches < 0) max_batches = from_run.max_batches;
    if (ids_text || logits_out) {
        if (!ids_text || !logits_out) {
            fprintf(stderr, "ctune eval: --ids and --logits-out go together\n");
            return 2;
        }
        if (data_path || accuracy) {
            fprintf(stderr, "ctune eval: --ids computes logits; it does not take --data or --accuracy\n");
            return 2;
        }
        if (!source.model_dir) {
            eval_usage(stderr);
            return 2;
        }
        return eval_logits(&source, ids_text, logits_out);
    }
    if (!data_path && from_run.data[0]) {
        data_path = from_run.data;
        accuracy |= from_run.accuracy;
    }
    if (!source.model_dir || !data_path) {
        if (source.run_dir && !data_path)
            fprintf(stderr, "ctune eval: --run %s had no evaluation data; pass --data\n", source.run_dir);
        else eval_usage(stderr);
        return 2;
    }
    dist d;
    if (dist_init(&d, &argc, &argv, &err)) {
        fprintf(stderr, "ctune eval: %s\n", err.msg);
        return 1;
    }
    model m;
    dataset ds;
    bool have_model = false, have_data = false;
    const kernels *k = NULL;
    int status = inference_backend(&source, d.local_rank, &k, &err);
    if (!status) status = load_model_for_inference(&m, &source, k, &err);
    have_model = status == 0;
    if (!status) status = dataset_open(&ds, data_path, &err);
    have_data = have_model && status == 0;
    if (!status) status = model_reserve(&m, micro, seq_len, &err);
    status = dist_agree(&d, status, &err);
    double loss = NAN, acc = NAN;
    long long tokens = 0;
    if (!status) status = evaluate_loss(&m, &ds, &d, micro, seq_len, max_batches, &loss, &tokens, &err);
    if (!status && accuracy) status = evaluate_accuracy(&m, &ds, &d, 0, &acc, &err);
    if (have_model) status = dist_agree(&d, status ? status : inference_check(k, &err), &err);
    if (d.rank == 0) {
        if (status) fprintf(stderr, "ctune eval: %s\n", err.msg);
        else if (accuracy)
            printf("{\"eval_loss\": %.17g, \"eval_tokens\": %lld, \"eval_accuracy\": %.17g}\n", loss, tokens, acc);
        else printf("{\"eval_loss\": %.17g, \"eval_tokens\": %lld}\n", loss, tokens);
    }
    if (have_data) dataset_close(&ds);
    if (have_model) model_free(&m);
    dist_finalize(&d);
    return status ? 1 : 0;
}
