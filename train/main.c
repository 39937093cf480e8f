/* ctune: one binary, git-style subcommands. */
#include <stdio.h>
#include <string.h>

#include "kernels/kernels.h"
#include "train/cli.h"

static void print_usage(FILE *out) {
    fprintf(out,
            "usage: ctune <command> [options]\n"
            "\n"
            "Fine-tunes Llama-family models (LoRA or full) from a YAML recipe and writes\n"
            "checkpoints that transformers and peft load unchanged.\n"
            "\n"
            "commands:\n"
            "  train     RECIPE.yaml [key=value ...]  train (under mpirun for data parallelism)\n"
            "  init      --preset tiny -o DIR          write a randomly initialised model folder\n"
            "  prep      --tokenizer T IN.jsonl -o OUT.h5  tokenize data into a ctune dataset\n"
            "  generate  --model DIR [--adapter DIR] --prompt TEXT   sample from a model\n"
            "  eval      --model DIR [--adapter DIR] --data FILE.h5   loss (and accuracy) on a dataset\n"
            "  merge     ADAPTER --base DIR -o OUT     merge a LoRA adapter into its base (full model)\n"
            "  inspect   FILE                          show a safetensors file or an HDF5 dataset\n"
            "  sweep     SWEEP.yaml [--slurm]          run a grid/random sweep of recipes (or a Slurm job array)\n"
            "  report    RUN_DIR... [-o PREFIX]        compare runs: table (Markdown, CSV) and loss curves (PNG)\n"
            "\n"
            "  ctune <command> --help   options of a command\n"
            "  ctune --version          the version\n");
}

int main(int argc, char **argv) {
    kernels_cpu_tune_blas(); /* the run's banner names the kernels in use */
    if (argc < 2) {
        print_usage(stderr);
        return 2;
    }
    const char *command = argv[1];
    if (!strcmp(command, "--help") || !strcmp(command, "-h") || !strcmp(command, "help")) {
        print_usage(stdout);
        return 0;
    }
    if (!strcmp(command, "--version") || !strcmp(command, "version")) {
        printf("ctune %s\n", CTUNE_VERSION);
        return 0;
    }
    static const struct {
        const char *name;
        int (*run)(int, char **);
    } commands[] = {
        {"train", cmd_train},       {"init", cmd_init},       {"prep", cmd_prep},
        {"generate", cmd_generate}, {"inspect", cmd_inspect}, {"eval", cmd_eval},
        {"sweep", cmd_sweep},       {"report", cmd_report},   {"merge", cmd_merge},
    };
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(command, commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "ctune: unknown command '%s'\n\n", command);
    print_usage(stderr);
    return 2;
}
