/* ctune init --preset NAME -o DIR [--seed N] [--force] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/bootstrap.h"
#include "train/cli.h"
#include "train/fsutil.h"

static void init_usage(FILE *out) {
    fprintf(out,
            "usage: ctune init --preset NAME -o DIR [--seed N] [--force]\n"
            "\n"
            "Writes a randomly initialised Llama-architecture model as a Hugging Face folder:\n"
            "config.json, model.safetensors, tokenizer.json (byte-level), tokenizer_config.json,\n"
            "special_tokens_map.json, generation_config.json. Deterministic from the seed.\n"
            "\n"
            "presets: tiny (0.8M parameters, the default job's model), bench-20m (benchmarks)\n"
            "  --seed N   initialisation seed (default 0)\n"
            "  --force    overwrite an existing model folder\n");
}

static int parse_seed(const char *text, unsigned long long *out) {
    char *end;
    *out = strtoull(text, &end, 10);
    return (*text && !*end && text[0] != '-') ? 0 : -1;
}

int cmd_init(int argc, char **argv) {
    const char *preset = NULL, *out_dir = NULL;
    unsigned long long seed = 0;
    bool force = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            init_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--preset") && i + 1 < argc) preset = argv[++i];
        else if ((!strcmp(a, "-o") || !strcmp(a, "--output")) && i + 1 < argc) out_dir = argv[++i];
        else if (!strcmp(a, "--seed") && i + 1 < argc) {
            if (parse_seed(argv[++i], &seed)) {
                fprintf(stderr, "ctune init: --seed: '%s' is not a non-negative integer\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(a, "--force")) force = true;
        else {
            fprintf(stderr, "ctune init: unexpected argument '%s'\n\n", a);
            init_usage(stderr);
            return 2;
        }
    }
    if (!preset || !out_dir) {
        init_usage(stderr);
        return 2;
    }
    char config[4096];
    snprintf(config, sizeof config, "%s/config.json", out_dir);
    if (path_exists(config) && !force) {
        fprintf(stderr, "ctune init: %s already holds a model (use --force to overwrite)\n", out_dir);
        return 1;
    }
    ct_error err = {{0}};
    if (bootstrap_model(out_dir, preset, seed, &err)) {
        fprintf(stderr, "ctune init: %s\n", err.msg);
        return 1;
    }
    printf("wrote %s (preset %s, seed %llu)\n", out_dir, preset, seed);
    return 0;
}
