/* ctune eval --model DIR [--adapter DIR] --data FILE.h5 [options] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/cli.h"
#include "train/trainer.h"

static void eval_usage(FILE *out) {
    fprintf(out,
            "usage: ctune eval --model DIR [--adapter DIR] --data FILE.h5 [options]\n"
            "       mpirun -np N ctune eval ...\n"
            "\n"
            "Mean token loss of a model (plus an optional PEFT LoRA adapter) on a ctune dataset,\n"
            "in dataset order, and the exact-match accuracy of greedy answers with --accuracy.\n"
            "The loss is the same bits on any number of ranks and equals a run's final eval_loss\n"
            "for the same --seq-len and --micro-batch.\n"
            "\n"
            "  --seq-len N       sequence length (default 256)\n"
            "  --micro-batch N   sequences per forward pass (default 8)\n"
            "  --max-batches N   evaluate at most N micro-batches (default all)\n"
            "  --accuracy        also measure answer accuracy (prompt = tokens before the loss)\n"
            "Prints one JSON object: {\"eval_loss\", \"eval_tokens\"[, \"eval_accuracy\"]}.\n");
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

int cmd_eval(int argc, char **argv) {
    const char *model_dir = NULL, *adapter_dir = NULL, *data_path = NULL;
    int seq_len = 256, micro = 8, max_batches = 0;
    bool accuracy = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_value = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            eval_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--model") && has_value) model_dir = argv[++i];
        else if (!strcmp(a, "--adapter") && has_value) adapter_dir = argv[++i];
        else if (!strcmp(a, "--data") && has_value) data_path = argv[++i];
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
    if (!model_dir || !data_path) {
        eval_usage(stderr);
        return 2;
    }
    ct_error err = {{0}};
    dist d;
    if (dist_init(&d, &argc, &argv, &err)) {
        fprintf(stderr, "ctune eval: %s\n", err.msg);
        return 1;
    }
    model m;
    dataset ds;
    bool have_model = false, have_data = false;
    int status = load_model_for_inference(&m, model_dir, adapter_dir, kernels_cpu(), &err);
    have_model = status == 0;
    if (!status) status = dataset_open(&ds, data_path, &err);
    have_data = have_model && status == 0;
    if (!status) status = model_reserve(&m, micro, seq_len, &err);
    status = dist_agree(&d, status, &err);
    double loss = NAN, acc = NAN;
    long long tokens = 0;
    if (!status) status = evaluate_loss(&m, &ds, &d, micro, seq_len, max_batches, &loss, &tokens, &err);
    if (!status && accuracy) status = evaluate_accuracy(&m, &ds, &d, 0, &acc, &err);
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
