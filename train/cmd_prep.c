/* ctune prep: the command line, the tokenizer and its special ids, and the synthetic tasks;
 * JSONL input (docs/data.md) is tokenized by prep_rounds.c, over MPI ranks when launched by
 * mpirun. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "train/cli.h"
#include "train/data.h"
#include "train/dist.h"
#include "train/jsonfile.h"
#include "train/prep_internal.h"
#include "train/synth.h"

static void prep_usage(FILE *out) {
    fprintf(out,
            "usage: ctune prep --tokenizer PATH [options] INPUT.jsonl|- -o OUT.h5\n"
            "       ctune prep --tokenizer PATH --synthetic TASK --examples N [options] -o OUT.h5\n"
            "\n"
            "Tokenizes a JSON Lines file into a ctune HDF5 dataset (format: docs/data.md).\n"
            "Each line is {\"text\": ...} (loss on every token) or {\"prompt\": ..., \"completion\": ...}\n"
            "(loss on the completion only) or {\"messages\": [{\"role\": ..., \"content\": ...}, ...]}\n"
            "(a chat, rendered with --template; loss on the assistant turns only); an eos token\n"
            "ends every document. The output file appears only if every line was good (or\n"
            "--skip-bad was given).\n"
            "\n"
            "Under mpirun (mpirun -np N ctune prep ...) the ranks share the lines of an input\n"
            "file and rank 0 writes the same bytes a single process would.\n"
            "\n"
            "  --tokenizer PATH      tokenizer.json, or a model folder holding one\n"
            "  --format F            text | prompt-completion | chat | auto (default auto: per line)\n"
            "  --template T          chat template: chatml | llama3 (default: the one the\n"
            "                        tokenizer_config.json chat_template uses, if built in)\n"
            "  --train-on-inputs     chat: loss on every token, not only the assistant turns\n"
            "  --bos-id N            prepend token N to every document (-1: never). Default: the\n"
            "                        BOS the tokenizer's post-processor adds, if any\n"
            "  --eos-id N            end-of-document token. Default: eos_token of the folder's\n"
            "                        tokenizer_config.json, else eos_token_id of its config.json\n"
            "  --pad-id N            recorded padding token (default: from the same files, or none)\n"
            "  --val-ratio R         put a share R (0 <= R < 1) of the documents into --val-output,\n"
            "                        chosen by a hash of each document's tokens keyed by --val-seed\n"
            "  --val-seed S          key of the split (default 0)\n"
            "  --val-output VAL.h5   the validation dataset to write (with --val-ratio)\n"
            "  --skip-bad            skip malformed lines (reported and counted) instead of failing\n"
            "  --threads N           tokenizer threads per rank (default: OMP_NUM_THREADS, else the\n"
            "                        node's cores shared among its ranks)\n"
            "  -o, --output OUT.h5   the dataset to write\n"
            "\n"
            "synthetic tasks (prompt + answer, loss on the answer):\n"
            "  --synthetic TASK      addition (\"12+345=\" -> \"357\") or reversal (\"rev abc=\" -> \"cba\")\n"
            "  --examples N          number of examples\n"
            "  --digits D            operand digits / half the string length (default 3)\n"
            "  --seed S              seed (default 0)\n"
            "  --split train|eval    disjoint problem sets for training and evaluation (default train)\n");
}

/* Usage messages come from rank 0 only under mpirun (every rank parses the same arguments). */
static void say(bool quiet, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(bool quiet, const char *fmt, ...) {
    if (quiet) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

static int parse_ll(const char *flag, const char *text, long long min, long long *out, bool quiet) {
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (!*text || *end || errno || v < min) {
        say(quiet, "ctune prep: %s: '%s' is not an integer >= %lld\n", flag, text, min);
        return -1;
    }
    *out = v;
    return 0;
}

/* Returns 0 to run, 1 after --help, 2 on a usage error. */
static int parse_args(int argc, char **argv, prep_options *o, bool quiet) {
    memset(o, 0, sizeof *o);
    o->digits = 3;
    o->split = "train";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes_value = a[0] == '-' && a[1] && strcmp(a, "--help") && strcmp(a, "-h") &&
                           strcmp(a, "--skip-bad") && strcmp(a, "--train-on-inputs");
        if (takes_value && !v) {
            say(quiet, "ctune prep: %s needs a value\n", a);
            return 2;
        }
        int bad = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            if (!quiet) prep_usage(stdout);
            return 1;
        } else if (!strcmp(a, "--skip-bad")) o->skip_bad = true;
        else if (!strcmp(a, "--train-on-inputs")) o->train_on_inputs = true;
        else if (!strcmp(a, "--template")) o->template_name = v;
        else if (!strcmp(a, "--val-output")) o->val_output = v;
        else if (!strcmp(a, "--val-seed")) bad = parse_ll(a, v, 0, &o->val_seed, quiet);
        else if (!strcmp(a, "--val-ratio")) {
            char *end;
            o->val_ratio = strtod(v, &end);
            if (!*v || *end || !(o->val_ratio >= 0.0 && o->val_ratio < 1.0)) {
                say(quiet, "ctune prep: --val-ratio: '%s' is not a number in [0, 1)\n", v);
                return 2;
            }
        }
        else if (!strcmp(a, "--tokenizer")) o->tokenizer_arg = v;
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) o->output = v;
        else if (!strcmp(a, "--synthetic")) o->synthetic = v;
        else if (!strcmp(a, "--split")) o->split = v;
        else if (!strcmp(a, "--bos-id")) bad = parse_ll(a, v, -1, &o->bos_id, quiet), o->have_bos = true;
        else if (!strcmp(a, "--eos-id")) bad = parse_ll(a, v, 0, &o->eos_id, quiet), o->have_eos = true;
        else if (!strcmp(a, "--pad-id")) bad = parse_ll(a, v, -1, &o->pad_id, quiet), o->have_pad = true;
        else if (!strcmp(a, "--examples")) bad = parse_ll(a, v, 1, &o->examples, quiet);
        else if (!strcmp(a, "--digits")) bad = parse_ll(a, v, 1, &o->digits, quiet);
        else if (!strcmp(a, "--seed")) bad = parse_ll(a, v, 0, &o->seed, quiet);
        else if (!strcmp(a, "--threads")) bad = parse_ll(a, v, 1, &o->threads, quiet);
        else if (!strcmp(a, "--format")) {
            if (!strcmp(v, "text")) o->format = FORMAT_TEXT;
            else if (!strcmp(v, "prompt-completion")) o->format = FORMAT_PROMPT_COMPLETION;
            else if (!strcmp(v, "chat")) o->format = FORMAT_CHAT;
            else if (!strcmp(v, "auto")) o->format = FORMAT_AUTO;
            else {
                say(quiet, "ctune prep: --format: '%s' is not supported (expected text, "
                        "prompt-completion, chat or auto)\n", v);
                return 2;
            }
        } else if (a[0] == '-' && a[1]) {
            say(quiet, "ctune prep: unknown option '%s' (see ctune prep --help)\n", a);
            return 2;
        } else if (!o->input) {
            o->input = a;
            continue;
        } else {
            say(quiet, "ctune prep: unexpected argument '%s' (one input file only)\n", a);
            return 2;
        }
        if (bad) return 2;
        if (takes_value) i++;
    }
    const char *problem = NULL;
    if (!o->tokenizer_arg) problem = "--tokenizer is required";
    else if (!o->output) problem = "-o OUT.h5 is required";
    else if (o->synthetic && o->input) problem = "give either --synthetic or an input file, not both";
    else if (o->synthetic && !o->examples) problem = "--synthetic needs --examples N";
    else if (!o->synthetic && !o->input) problem = "an input .jsonl file is required";
    else if (strcmp(o->split, "train") && strcmp(o->split, "eval")) problem = "--split must be train or eval";
    else if ((o->val_ratio > 0) != (o->val_output != NULL)) problem = "--val-ratio R > 0 and --val-output go together";
    else if (o->val_output && o->synthetic) problem = "--val-ratio is for input files (synthetic tasks have --split)";
    else if (o->val_output && !strcmp(o->val_output, o->output)) problem = "--val-output must differ from -o";
    if (problem) {
        say(quiet, "ctune prep: %s\n\n", problem);
        if (!quiet) prep_usage(stderr);
        return 2;
    }
    return 0;
}

/* ---------------------------------------------------------------- special token ids */

/* An optional file: absent or unreadable means "no ids from here". */
static cJSON *load_json_file(const char *path) {
    cJSON *root;
    ct_error ignored;
    jsonfile_read(path, &root, &ignored);
    return root;
}

/* tokenizer_config.json's "<role>_token" (a string or {"content": ...}) as an id. */
static int id_from_tokenizer_config(const cJSON *config, const tokenizer *tok, const char *role) {
    char key[32];
    snprintf(key, sizeof key, "%s_token", role);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(config, key);
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    return cJSON_IsString(v) ? tokenizer_token_to_id(tok, v->valuestring) : -1;
}

/* config.json's "<role>_token_id" (an int, or a list whose first entry is used). */
static int id_from_model_config(const cJSON *config, const char *role) {
    char key[32];
    snprintf(key, sizeof key, "%s_token_id", role);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(config, key);
    if (cJSON_IsArray(v)) v = v->child;
    return cJSON_IsNumber(v) && v->valuedouble >= 0 ? (int)v->valuedouble : -1;
}

static int resolve_special_ids(const prep_options *o, const char *model_dir, const tokenizer *tok,
                               special_ids *ids, ct_error *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", model_dir);
    cJSON *tcfg = load_json_file(path);
    snprintf(path, sizeof path, "%s/config.json", model_dir);
    cJSON *mcfg = load_json_file(path);
    int from_files[2];
    const char *roles[2] = {"eos", "pad"};
    for (int r = 0; r < 2; r++) {
        from_files[r] = id_from_tokenizer_config(tcfg, tok, roles[r]);
        if (from_files[r] < 0) from_files[r] = id_from_model_config(mcfg, roles[r]);
    }
    cJSON_Delete(tcfg);
    cJSON_Delete(mcfg);
    ids->bos = o->have_bos ? (int)o->bos_id : tokenizer_bos_id(tok);
    ids->eos = o->have_eos ? (int)o->eos_id : from_files[0];
    ids->pad = o->have_pad ? (int)o->pad_id : from_files[1];
    int vocab = tokenizer_vocab_size(tok);
    if (ids->eos < 0)
        return ct_fail(err, "no eos token: pass --eos-id N (none found in %s/tokenizer_config.json "
                       "or config.json)", model_dir);
    const int values[3] = {ids->bos, ids->eos, ids->pad};
    const char *names[3] = {"bos", "eos", "pad"};
    for (int i = 0; i < 3; i++)
        if (values[i] >= vocab)
            return ct_fail(err, "%s id %d is outside the tokenizer's vocabulary [0, %d)", names[i],
                           values[i], vocab);
    return 0;
}

/* ---------------------------------------------------------------- entry point */

/* PATH may be tokenizer.json or a model folder; the folder is where the config files are. */
static void locate_tokenizer(const char *arg, char *file, size_t file_size, char *dir, size_t dir_size) {
    struct stat st;
    if (stat(arg, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(file, file_size, "%s/tokenizer.json", arg);
        snprintf(dir, dir_size, "%s", arg);
        return;
    }
    snprintf(file, file_size, "%s", arg);
    snprintf(dir, dir_size, "%s", arg);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    else snprintf(dir, dir_size, ".");
}

/* A launcher (mpirun, mpiexec, srun) leaves its marks in the environment. Without one there
 * is one rank and MPI is not started at all: a plain `ctune prep` stays quick, and the unit
 * tests can call cmd_prep many times in one process (MPI cannot start twice). */
static bool launched_by_mpi(void) {
    const char *size = getenv("OMPI_COMM_WORLD_SIZE");
    if (!size) size = getenv("PMI_SIZE");
    if (size) return atoi(size) > 1;
    return getenv("PMIX_RANK") != NULL;
}

static void print_result(const prep_options *o, const prep_stats *st, double secs) {
    printf("wrote %s in %.2f s", o->output, secs);
    if (!o->synthetic)
        printf(" (%ld documents, %lld tokens, %.0f tokens/s; %ld malformed lines skipped)", st->documents,
               st->tokens, secs > 0 ? (double)st->tokens / secs : 0.0, st->skipped);
    printf("\n");
    if (o->val_output)
        printf("validation split (ratio %g, seed %lld): %ld documents, %lld tokens -> %s\n", o->val_ratio,
               o->val_seed, st->val_documents, st->val_tokens, o->val_output);
}

/* Everything after the arguments, on every rank; returns the rank-local status. */
static int prep_main(const prep_options *o, const dist *d, prep_run *run, ct_error *err) {
    clock_gettime(CLOCK_MONOTONIC, &run->t0);
    char file[4096], dir[4096];
    locate_tokenizer(o->tokenizer_arg, file, sizeof file, dir, sizeof dir);
    tokenizer *tok = NULL;
    special_ids sp;
    chat_template tmpl;
    bool have_template = false;
    int status = tokenizer_load(&tok, file, err) || resolve_special_ids(o, dir, tok, &sp, err) ||
                 chat_template_resolve(o->template_name, dir, tok, &tmpl, &have_template, err) ? -1 : 0;
    status = prep_agree(d, status, err);
    if (!status && o->synthetic && d->rank == 0) {
        synth_split split = strcmp(o->split, "eval") == 0 ? SYNTH_EVAL : SYNTH_TRAIN;
        status = synth_write_dataset_ex(o->output, tok, o->synthetic, (int)o->digits, (uint64_t)o->seed, split,
                                        o->examples, sp.bos, sp.eos, sp.pad, err);
    } else if (!status && !o->synthetic) {
        dataset_tokenizer_info info = {.vocab_size = tokenizer_vocab_size(tok),
                                       .bos_id = sp.bos, .eos_id = sp.eos, .pad_id = sp.pad};
        snprintf(info.fingerprint, sizeof info.fingerprint, "%s", tokenizer_fingerprint(tok));
        snprintf(info.name, sizeof info.name, "%.255s", file);
        run->o = o;
        run->tok = tok;
        run->sp = &sp;
        run->tmpl = have_template ? &tmpl : NULL;
        run->threads = o->threads > 0 ? (int)o->threads : dist_threads_per_rank(d);
        run->progress = d->rank == 0 && isatty(STDERR_FILENO);
        status = prep_input(run, d, &info, err);
    }
    tokenizer_free(tok);
    return status;
}

int cmd_prep(int argc, char **argv) {
    ct_error err = {{0}};
    dist d = {.rank = 0, .world_size = 1, .local_rank = 0, .local_size = 1};
    bool mpi = launched_by_mpi();
    if (mpi && dist_init(&d, &argc, &argv, &err)) {
        fprintf(stderr, "ctune prep: %s\n", err.msg);
        return 1;
    }
    prep_options o;
    int parsed = parse_args(argc, argv, &o, d.rank != 0);
    int rc = parsed == 1 ? 0 : 2;
    if (!parsed) {
        prep_run run = {0};
        int status = prep_agree(&d, prep_main(&o, &d, &run, &err), &err);
        double secs = prep_seconds_since(&run.t0);
        rc = status ? 1 : 0;
        if (d.rank == 0 && status) {
            fprintf(stderr, "ctune prep: %s\n", err.msg);
            fprintf(stderr, "ctune prep: no output written%s\n",
                    run.st.line_error ? " (--skip-bad skips malformed lines)" : "");
        } else if (d.rank == 0) {
            print_result(&o, &run.st, secs);
            const char *outputs[2] = {o.output, o.val_output};
            for (int i = 0; i < 2 && outputs[i] && !rc; i++)
                if (dataset_print_summary(outputs[i], stdout, &err)) {
                    fprintf(stderr, "ctune prep: reading back %s: %s\n", outputs[i], err.msg);
                    rc = 1;
                }
        }
    }
    if (mpi) dist_finalize(&d);
    return rc;
}
