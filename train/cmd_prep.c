/* ctune prep: JSONL (or a synthetic task) -> a ctune HDF5 token dataset (docs/data.md).
 * Lines are read and parsed in order, tokenized in parallel batches (OpenMP), and written in
 * order, so the output does not depend on the thread count. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "train/chat_template.h"
#include "train/cli.h"
#include "train/data.h"
#include "train/jsonfile.h"
#include "train/synth.h"
#include "train/tokenizer.h"

#define BATCH_LINES 2048
#define BATCH_BYTES ((size_t)32 << 20)
#define MAX_REPORTED_SKIPS 10

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
            "  --threads N           tokenizer threads (default: OMP_NUM_THREADS or all cores)\n"
            "  -o, --output OUT.h5   the dataset to write\n"
            "\n"
            "synthetic tasks (prompt + answer, loss on the answer):\n"
            "  --synthetic TASK      addition (\"12+345=\" -> \"357\") or reversal (\"rev abc=\" -> \"cba\")\n"
            "  --examples N          number of examples\n"
            "  --digits D            operand digits / half the string length (default 3)\n"
            "  --seed S              seed (default 0)\n"
            "  --split train|eval    disjoint problem sets for training and evaluation (default train)\n");
}

typedef enum { FORMAT_AUTO, FORMAT_TEXT, FORMAT_PROMPT_COMPLETION, FORMAT_CHAT } prep_format;

typedef struct prep_options {
    const char *tokenizer_arg, *input, *output, *synthetic, *split, *template_name, *val_output;
    double val_ratio;
    long long val_seed;
    prep_format format;
    bool have_bos, have_eos, have_pad, skip_bad, train_on_inputs;
    long long bos_id, eos_id, pad_id, examples, digits, seed, threads;
} prep_options;

static int parse_ll(const char *flag, const char *text, long long min, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (!*text || *end || errno || v < min) {
        fprintf(stderr, "ctune prep: %s: '%s' is not an integer >= %lld\n", flag, text, min);
        return -1;
    }
    *out = v;
    return 0;
}

/* Returns 0 to run, 1 after --help, 2 on a usage error. */
static int parse_args(int argc, char **argv, prep_options *o) {
    memset(o, 0, sizeof *o);
    o->digits = 3;
    o->split = "train";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes_value = a[0] == '-' && a[1] && strcmp(a, "--help") && strcmp(a, "-h") &&
                           strcmp(a, "--skip-bad") && strcmp(a, "--train-on-inputs");
        if (takes_value && !v) {
            fprintf(stderr, "ctune prep: %s needs a value\n", a);
            return 2;
        }
        int bad = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            prep_usage(stdout);
            return 1;
        } else if (!strcmp(a, "--skip-bad")) o->skip_bad = true;
        else if (!strcmp(a, "--train-on-inputs")) o->train_on_inputs = true;
        else if (!strcmp(a, "--template")) o->template_name = v;
        else if (!strcmp(a, "--val-output")) o->val_output = v;
        else if (!strcmp(a, "--val-seed")) bad = parse_ll(a, v, 0, &o->val_seed);
        else if (!strcmp(a, "--val-ratio")) {
            char *end;
            o->val_ratio = strtod(v, &end);
            if (!*v || *end || !(o->val_ratio >= 0.0 && o->val_ratio < 1.0)) {
                fprintf(stderr, "ctune prep: --val-ratio: '%s' is not a number in [0, 1)\n", v);
                return 2;
            }
        }
        else if (!strcmp(a, "--tokenizer")) o->tokenizer_arg = v;
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) o->output = v;
        else if (!strcmp(a, "--synthetic")) o->synthetic = v;
        else if (!strcmp(a, "--split")) o->split = v;
        else if (!strcmp(a, "--bos-id")) bad = parse_ll(a, v, -1, &o->bos_id), o->have_bos = true;
        else if (!strcmp(a, "--eos-id")) bad = parse_ll(a, v, 0, &o->eos_id), o->have_eos = true;
        else if (!strcmp(a, "--pad-id")) bad = parse_ll(a, v, -1, &o->pad_id), o->have_pad = true;
        else if (!strcmp(a, "--examples")) bad = parse_ll(a, v, 1, &o->examples);
        else if (!strcmp(a, "--digits")) bad = parse_ll(a, v, 1, &o->digits);
        else if (!strcmp(a, "--seed")) bad = parse_ll(a, v, 0, &o->seed);
        else if (!strcmp(a, "--threads")) bad = parse_ll(a, v, 1, &o->threads);
        else if (!strcmp(a, "--format")) {
            if (!strcmp(v, "text")) o->format = FORMAT_TEXT;
            else if (!strcmp(v, "prompt-completion")) o->format = FORMAT_PROMPT_COMPLETION;
            else if (!strcmp(v, "chat")) o->format = FORMAT_CHAT;
            else if (!strcmp(v, "auto")) o->format = FORMAT_AUTO;
            else {
                fprintf(stderr, "ctune prep: --format: '%s' is not supported (expected text, "
                        "prompt-completion, chat or auto)\n", v);
                return 2;
            }
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "ctune prep: unknown option '%s' (see ctune prep --help)\n", a);
            return 2;
        } else if (!o->input) {
            o->input = a;
            continue;
        } else {
            fprintf(stderr, "ctune prep: unexpected argument '%s' (one input file only)\n", a);
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
        fprintf(stderr, "ctune prep: %s\n\n", problem);
        prep_usage(stderr);
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

typedef struct special_ids { int bos, eos, pad; } special_ids;

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

/* --template, else the built-in template that tokenizer_config.json's chat_template uses (when
 * its markers are tokens of this tokenizer); *have false when there is none. */
static int resolve_template(const prep_options *o, const char *model_dir, const tokenizer *tok,
                            chat_template *t, bool *have, ct_error *err) {
    chat_template_kind kind;
    *have = false;
    if (o->template_name) {
        if (chat_template_parse(o->template_name, &kind, err) || chat_template_init(t, kind, tok, err))
            return ct_error_prefix(err, "--template");
        *have = true;
        return 0;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", model_dir);
    cJSON *tcfg = load_json_file(path);
    const cJSON *jinja = cJSON_GetObjectItemCaseSensitive(tcfg, "chat_template");
    ct_error ignored;
    if (cJSON_IsString(jinja) && chat_template_detect(jinja->valuestring, &kind) == 0 &&
        chat_template_init(t, kind, tok, &ignored) == 0)
        *have = true;
    cJSON_Delete(tcfg);
    return 0;
}

/* ---------------------------------------------------------------- JSONL */

typedef struct prep_job {
    long line;
    char *first, *second;    /* text, or prompt + completion */
    chat_message *messages;  /* a chat (strings owned by the job) */
    int n_messages;
    int32_t *ids;
    uint8_t *mask;
    size_t n;
    int rc;
    ct_error err;
} prep_job;

static void job_clear(prep_job *j) {
    for (int i = 0; i < j->n_messages; i++) {
        free((char *)j->messages[i].role);
        free((char *)j->messages[i].content);
    }
    free(j->messages);
    free(j->first);
    free(j->second);
    free(j->ids);
    free(j->mask);
    memset(j, 0, sizeof *j);
}

/* {"messages": [{"role": R, "content": C}, ...]} into job->messages. */
static int parse_messages(const cJSON *messages, prep_job *job) {
    if (!messages) return ct_fail(&job->err, "missing \"messages\"");
    if (!cJSON_IsArray(messages) || !messages->child)
        return ct_fail(&job->err, "\"messages\" must be a non-empty array");
    int n = cJSON_GetArraySize(messages);
    job->messages = calloc((size_t)n, sizeof *job->messages);
    if (!job->messages) return ct_fail(&job->err, "out of memory");
    int i = 0;
    for (const cJSON *m = messages->child; m; m = m->next, i++) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!cJSON_IsObject(m) || !cJSON_IsString(role) || !cJSON_IsString(content))
            return ct_fail(&job->err, "messages[%d]: expected {\"role\": string, \"content\": string}", i);
        job->messages[i].role = strdup(role->valuestring);
        job->messages[i].content = strdup(content->valuestring);
        job->n_messages = i + 1;
        if (!job->messages[i].role || !job->messages[i].content) return ct_fail(&job->err, "out of memory");
    }
    return 0;
}

/* Parses one line into the job; 1 = blank line, -1 = malformed (job->err says why). */
static int parse_line(char *line, size_t len, prep_format format, prep_job *job) {
    while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
    size_t start = 0;
    if (job->line == 1 && len >= 3 && !memcmp(line, "\xef\xbb\xbf", 3)) start = 3; /* UTF-8 BOM */
    size_t k = start;
    while (k < len && (line[k] == ' ' || line[k] == '\t')) k++;
    if (k == len) return 1;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(line + start, len - start, &end, false);
    if (!root)
        return ct_fail(&job->err, "column %zu: invalid JSON",
                       (size_t)(end ? end - (line + start) : 0) + 1 + start);
    size_t rest = end ? (size_t)(end - line) : len;
    while (rest < len && (line[rest] == ' ' || line[rest] == '\t')) rest++;
    if (rest < len) {
        cJSON_Delete(root);
        return ct_fail(&job->err, "column %zu: unexpected text after the JSON value (one object per line)",
                       rest + 1);
    }
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(root, "text");
    const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    const cJSON *completion = cJSON_GetObjectItemCaseSensitive(root, "completion");
    const cJSON *messages = cJSON_GetObjectItemCaseSensitive(root, "messages");
    int rc = 0;
    bool as_text = format == FORMAT_TEXT || (format == FORMAT_AUTO && text);
    bool as_chat = format == FORMAT_CHAT || (format == FORMAT_AUTO && !text && messages);
    if (!cJSON_IsObject(root)) {
        rc = ct_fail(&job->err, "expected a JSON object");
    } else if (as_chat) {
        rc = parse_messages(messages, job);
    } else if (as_text) {
        if (!cJSON_IsString(text))
            rc = ct_fail(&job->err, text ? "\"text\" must be a string" : "missing \"text\"");
        else if (!(job->first = strdup(text->valuestring)))
            rc = ct_fail(&job->err, "out of memory");
    } else if (format == FORMAT_AUTO && !prompt && !completion) {
        rc = ct_fail(&job->err, "expected a \"text\" field, \"prompt\" and \"completion\", or \"messages\"");
    } else if (!cJSON_IsString(prompt) || !cJSON_IsString(completion)) {
        const char *which = !cJSON_IsString(prompt) ? "prompt" : "completion";
        bool present = !cJSON_IsString(prompt) ? prompt != NULL : completion != NULL;
        rc = ct_fail(&job->err, present ? "\"%s\" must be a string" : "missing \"%s\"", which);
    } else if (!(job->first = strdup(prompt->valuestring)) ||
               !(job->second = strdup(completion->valuestring))) {
        rc = ct_fail(&job->err, "out of memory");
    }
    cJSON_Delete(root);
    return rc;
}

/* A chat: [bos (chatml only)] the template's rendering [eos unless it already ends with it];
 * the eos shares the loss of the last turn's end marker (1 after an assistant turn). */
static int encode_chat(const tokenizer *tok, const special_ids *sp, const chat_template *tmpl,
                       bool train_on_inputs, prep_job *job) {
    if (!tmpl) return ct_fail(&job->err, "a chat line needs a template: pass --template chatml|llama3");
    int32_t *ids = NULL;
    uint8_t *mask = NULL;
    size_t n = 0;
    if (chat_template_encode(tmpl, tok, job->messages, job->n_messages, train_on_inputs, &ids, &mask,
                             &n, &job->err))
        return -1;
    bool bos = tmpl->kind == CHAT_TEMPLATE_CHATML && sp->bos >= 0;
    bool eos = ids[n - 1] != sp->eos;
    job->ids = malloc((n + 2) * sizeof *job->ids);
    job->mask = malloc(n + 2);
    if (!job->ids || !job->mask) {
        free(ids);
        free(mask);
        return ct_fail(&job->err, "out of memory");
    }
    size_t k = 0;
    if (bos) job->ids[k] = sp->bos, job->mask[k++] = 0;
    for (size_t i = 0; i < n; i++) job->ids[k] = ids[i], job->mask[k++] = mask[i];
    uint8_t last_turn_loss = 0;
    for (size_t i = n; i-- > 0;)
        if (ids[i] == tmpl->turn_end) {
            last_turn_loss = mask[i];
            break;
        }
    if (eos) job->ids[k] = sp->eos, job->mask[k++] = last_turn_loss;
    job->n = k;
    free(ids);
    free(mask);
    return 0;
}

/* [bos] first second eos; loss on everything after bos for text, on second + eos otherwise. */
static int encode_job(const tokenizer *tok, const special_ids *sp, prep_job *job) {
    int32_t *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    if (tokenizer_encode(tok, job->first, strlen(job->first), false, &a, &na, &job->err))
        return ct_error_prefix(&job->err, "%s", job->second ? "\"prompt\"" : "\"text\"");
    if (job->second && tokenizer_encode(tok, job->second, strlen(job->second), false, &b, &nb, &job->err)) {
        free(a);
        return ct_error_prefix(&job->err, "\"completion\"");
    }
    size_t cap = na + nb + 2, n = 0;
    job->ids = malloc(cap * sizeof *job->ids);
    job->mask = malloc(cap);
    if (!job->ids || !job->mask) {
        free(a);
        free(b);
        return ct_fail(&job->err, "out of memory");
    }
    if (sp->bos >= 0) job->ids[n] = sp->bos, job->mask[n++] = 0;
    for (size_t i = 0; i < na; i++) job->ids[n] = a[i], job->mask[n++] = job->second ? 0 : 1;
    for (size_t i = 0; i < nb; i++) job->ids[n] = b[i], job->mask[n++] = 1;
    job->ids[n] = sp->eos;
    job->mask[n++] = 1;
    job->n = n;
    free(a);
    free(b);
    return 0;
}

typedef struct prep_stats {
    long documents, skipped, val_documents;
    long long tokens, val_tokens;
    bool line_error;         /* the failure was a bad input line (--skip-bad would skip it) */
} prep_stats;

/* Tokenizes the batch in parallel, then writes (or skips) its documents in input order. */
static int run_batch(const prep_options *o, const tokenizer *tok, const special_ids *sp,
                     const chat_template *tmpl, prep_job *jobs, int n, dataset_writer *w,
                     dataset_writer *val_w, prep_stats *st, ct_error *err) {
#ifdef _OPENMP
    int threads = o->threads > 0 ? (int)o->threads : omp_get_max_threads();
#pragma omp parallel for schedule(dynamic, 16) num_threads(threads)
#endif
    for (int i = 0; i < n; i++)
        if (jobs[i].rc == 0)
            jobs[i].rc = jobs[i].messages ? encode_chat(tok, sp, tmpl, o->train_on_inputs, &jobs[i])
                                          : encode_job(tok, sp, &jobs[i]);
    for (int i = 0; i < n; i++) {
        prep_job *j = &jobs[i];
        bool val = j->rc == 0 && val_w && data_in_validation(j->ids, j->n, (uint64_t)o->val_seed, o->val_ratio);
        if (j->rc == 0 && dataset_writer_add(val ? val_w : w, j->ids, j->mask, j->n, &j->err) == 0) {
            st->documents++;
            st->tokens += (long long)j->n;
            st->val_documents += val;
            st->val_tokens += val ? (long long)j->n : 0;
            continue;
        }
        if (!o->skip_bad) {
            st->line_error = true;
            return ct_fail(err, "%s:%ld: %s", o->input, j->line, j->err.msg);
        }
        if (st->skipped++ < MAX_REPORTED_SKIPS)
            fprintf(stderr, "ctune prep: skipping %s:%ld: %s\n", o->input, j->line, j->err.msg);
    }
    return 0;
}

static int prep_jsonl(const prep_options *o, const tokenizer *tok, const special_ids *sp,
                      const chat_template *tmpl, dataset_writer *w, dataset_writer *val_w,
                      prep_stats *st, ct_error *err) {
    bool from_stdin = strcmp(o->input, "-") == 0;
    FILE *in = from_stdin ? stdin : fopen(o->input, "rb");
    if (!in) return ct_fail(err, "%s: cannot open: %s", o->input, strerror(errno));
    prep_job *jobs = calloc(BATCH_LINES, sizeof *jobs);
    char *line = NULL;
    size_t line_cap = 0, batch_bytes = 0;
    int n = 0, rc = jobs ? 0 : ct_fail(err, "out of memory");
    long line_no = 0;
    ssize_t got;
    while (!rc && (got = getline(&line, &line_cap, in)) >= 0) {
        prep_job *j = &jobs[n];
        j->line = ++line_no;
        int parsed = parse_line(line, (size_t)got, o->format, j);
        if (parsed == 1) {
            job_clear(j);
            continue;
        }
        j->rc = parsed;
        batch_bytes += (size_t)got;
        if (++n == BATCH_LINES || batch_bytes >= BATCH_BYTES) {
            rc = run_batch(o, tok, sp, tmpl, jobs, n, w, val_w, st, err);
            for (int i = 0; i < n; i++) job_clear(&jobs[i]);
            n = 0;
            batch_bytes = 0;
        }
    }
    if (!rc && ferror(in)) rc = ct_fail(err, "%s: read error after line %ld", o->input, line_no);
    if (!rc && n) rc = run_batch(o, tok, sp, tmpl, jobs, n, w, val_w, st, err);
    for (int i = 0; jobs && i < n; i++) job_clear(&jobs[i]);
    if (!rc && st->documents == 0)
        rc = ct_fail(err, "%s: no documents (%ld lines, %ld skipped)", o->input, line_no, st->skipped);
    if (!rc && val_w && (st->val_documents == 0 || st->val_documents == st->documents))
        rc = ct_fail(err, "%s: --val-ratio %g leaves the %s split empty (%ld documents)", o->input,
                     o->val_ratio, st->val_documents ? "training" : "validation", st->documents);
    free(jobs);
    free(line);
    if (!from_stdin) fclose(in);
    return rc;
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

static double seconds_since(const struct timespec *t0) {
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0->tv_nsec);
}

int cmd_prep(int argc, char **argv) {
    prep_options o;
    int parsed = parse_args(argc, argv, &o);
    if (parsed) return parsed == 1 ? 0 : 2;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char file[4096], dir[4096];
    locate_tokenizer(o.tokenizer_arg, file, sizeof file, dir, sizeof dir);
    ct_error err = {{0}};
    tokenizer *tok = NULL;
    special_ids sp;
    chat_template tmpl;
    bool have_template = false;
    if (tokenizer_load(&tok, file, &err) || resolve_special_ids(&o, dir, tok, &sp, &err) ||
        resolve_template(&o, dir, tok, &tmpl, &have_template, &err)) {
        fprintf(stderr, "ctune prep: %s\n", err.msg);
        tokenizer_free(tok);
        return 1;
    }
    int rc;
    prep_stats st = {0};
    if (o.synthetic) {
        synth_split split = strcmp(o.split, "eval") == 0 ? SYNTH_EVAL : SYNTH_TRAIN;
        rc = synth_write_dataset_ex(o.output, tok, o.synthetic, (int)o.digits, (uint64_t)o.seed, split,
                                    o.examples, sp.bos, sp.eos, sp.pad, &err);
    } else {
        dataset_tokenizer_info info = {.vocab_size = tokenizer_vocab_size(tok),
                                       .bos_id = sp.bos, .eos_id = sp.eos, .pad_id = sp.pad};
        snprintf(info.fingerprint, sizeof info.fingerprint, "%s", tokenizer_fingerprint(tok));
        snprintf(info.name, sizeof info.name, "%.255s", file);
        dataset_writer *w = NULL, *val_w = NULL;
        rc = dataset_writer_open(&w, o.output, &info, &err);
        if (!rc && o.val_output) rc = dataset_writer_open(&val_w, o.val_output, &info, &err);
        if (!rc) rc = prep_jsonl(&o, tok, &sp, have_template ? &tmpl : NULL, w, val_w, &st, &err);
        if (rc) {
            if (w) dataset_writer_abort(w);
            if (val_w) dataset_writer_abort(val_w);
        } else {
            /* Both files or neither: a failed second finish removes the first. */
            if (val_w && dataset_writer_finish(val_w, &err)) {
                rc = -1;
                dataset_writer_abort(w);
            } else if (dataset_writer_finish(w, &err)) {
                rc = -1;
                if (val_w) remove(o.val_output);
            }
        }
    }
    tokenizer_free(tok);
    if (rc) {
        fprintf(stderr, "ctune prep: %s\n", err.msg);
        fprintf(stderr, "ctune prep: no output written%s\n",
                st.line_error ? " (--skip-bad skips malformed lines)" : "");
        return 1;
    }
    double secs = seconds_since(&t0);
    printf("wrote %s in %.2f s", o.output, secs);
    if (!o.synthetic)
        printf(" (%ld documents, %lld tokens, %.0f tokens/s; %ld malformed lines skipped)", st.documents,
               st.tokens, secs > 0 ? (double)st.tokens / secs : 0.0, st.skipped);
    printf("\n");
    if (o.val_output)
        printf("validation split (ratio %g, seed %lld): %ld documents, %lld tokens -> %s\n", o.val_ratio,
               o.val_seed, st.val_documents, st.val_tokens, o.val_output);
    const char *outputs[2] = {o.output, o.val_output};
    for (int i = 0; i < 2 && outputs[i]; i++)
        if (dataset_print_summary(outputs[i], stdout, &err)) {
            fprintf(stderr, "ctune prep: reading back %s: %s\n", outputs[i], err.msg);
            return 1;
        }
    return 0;
}
