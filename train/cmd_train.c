/* ctune train RECIPE.yaml [key=value ...] [--dry-run] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/cli.h"
#include "train/dist.h"
#include "train/recipe.h"
#include "train/trainer.h"

static void train_usage(FILE *out) {
    fprintf(out,
            "usage: ctune train RECIPE.yaml [key=value ...] [--dry-run]\n"
            "       mpirun -np N ctune train RECIPE.yaml ...\n"
            "\n"
            "Trains as the recipe says (keys: docs/recipes.md). key=value overrides a recipe key,\n"
            "e.g. optim.lr=1e-4 lora.r=8 lora.target_modules=[q_proj,v_proj].\n"
            "Writes <checkpoint.output_dir>/: recipe.resolved.yaml, metrics.jsonl, summary.json,\n"
            "checkpoints/step-N/ (hub folder + state/ for resume) and final/ (hub folders\n"
            "peft/transformers load as they are). checkpoint.resume=auto continues a run from its\n"
            "newest complete checkpoint, on any number of ranks. SIGTERM or SIGUSR1 writes a\n"
            "checkpoint and exits with status 75 (for Slurm --requeue).\n"
            "\n"
            "  --dry-run   print the resolved recipe, parameter counts and a memory estimate; exit\n"
            "  --help      this text\n");
}

int cmd_train(int argc, char **argv) {
    const char *recipe_path = NULL;
    bool dry_run = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            train_usage(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--dry-run")) dry_run = true;
        else if (!strchr(argv[i], '=') && !recipe_path) recipe_path = argv[i];
        else if (!strchr(argv[i], '=')) {
            fprintf(stderr, "ctune train: unexpected argument '%s' (overrides look like key=value)\n", argv[i]);
            return 2;
        }
    }
    if (!recipe_path) {
        train_usage(stderr);
        return 2;
    }
    ct_error err = {{0}};
    dist d;
    if (dist_init(&d, &argc, &argv, &err)) {
        fprintf(stderr, "ctune train: %s\n", err.msg);
        return 1;
    }
    char **overrides = calloc((size_t)argc, sizeof *overrides);
    int n_overrides = 0;
    for (int i = 1; i < argc; i++)
        if (strchr(argv[i], '=')) overrides[n_overrides++] = argv[i];
    recipe r;
    int status = overrides ? recipe_load_with_overrides(&r, recipe_path, overrides, n_overrides, &err)
                           : ct_fail(&err, "out of memory");
    free(overrides);
    /* Every rank read the same files, but agree anyway so one message is printed. */
    if (dist_agree(&d, status, &err) == 0) status = trainer_run(&r, &d, dry_run, NULL, &err);
    else status = -1;
    if (status == TRAINER_PREEMPTED) {
        dist_finalize(&d);
        return CTUNE_EXIT_PREEMPTED;
    }
    if (status && d.rank == 0) fprintf(stderr, "ctune train: error: %s\n", err.msg);
    dist_finalize(&d);
    return status ? 1 : 0;
}
