/* ctune generate --model DIR [--adapter DIR] (--prompt TEXT | --chat MESSAGE | --messages FILE) [options] */
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "train/chat_template.h"
#include "train/cli.h"
#include "train/clock.h"
#include "train/jsonfile.h"
#include "train/sampling.h"
#include "train/textbuf.h"
#include "train/fsutil.h"
#include "train/tokenizer.h"
#include "train/trainer.h"

static void generate_usage(FILE *out) {
    fprintf(out,
            "usage: ctune generate --model DIR [--adapter DIR] --prompt TEXT [options]\n"
            "       ctune generate --model DIR [--adapter DIR] --chat MESSAGE [--system TEXT] [options]\n"
            "       ctune generate --model DIR [--adapter DIR] --messages FILE [options]\n"
            "       ctune generate --model DIR [--adapter DIR] --interactive [--system TEXT] [options]\n"
            "       ctune generate --model DIR [--adapter DIR] --prompts FILE.jsonl [-o OUT.jsonl] [options]\n"
            "       ctune generate --run RUN_DIR (--prompt TEXT | --chat MESSAGE | --messages FILE |\n"
            "                      --interactive | --prompts FILE.jsonl) [options]\n"
            "\n"
            "Continues the prompt with the model (plus a PEFT LoRA adapter folder, e.g. a run's\n"
            "final/) and prints the prompt and completion. With --chat, answers MESSAGE as a chat\n"
            "model: the user turn (after an optional system turn) rendered with the chat template\n"
            "ctune prep trains with, then the assistant's header; prints the reply, which ends at the\n"
            "turn's end marker or EOS. --messages FILE answers a whole conversation instead: a JSON\n"
            "array [{\"role\": ..., \"content\": ...}, ...] or an object with that \"messages\" array\n"
            "(a chat line of ctune prep's input), rendered the same way. --interactive holds a\n"
            "conversation: each line read from stdin is a user turn, answered on one output line;\n"
            "the KV cache keeps the conversation, so a turn costs only its own tokens. Ends at EOF.\n"
            "--prompts answers every line of a JSONL file ({\"prompt\": ...} continued as text, or\n"
            "{\"messages\": [...]} answered as a chat; a \"completion\", or a final assistant message,\n"
            "is the reference) with one JSON line each: {\"line\", \"completion\"[, \"label\"]}.\n"
            "\n");
    inference_options_usage(out);
    fprintf(out,
            "  --max-new-tokens N   tokens to generate at most (default 32); stops at EOS\n"
            "  --temperature T      0 = greedy (default); > 0 samples from softmax(logits / T)\n"
            "  --seed N             sampling seed (default 0)\n"
            "  --top-k K            sample among the K most likely tokens only (default 0: all)\n"
            "  --top-p P            ... and among the fewest most likely whose probabilities reach P,\n"
            "                       in (0, 1] (default 1: all); both as transformers applies them\n"
            "  --repetition-penalty R  > 0 (default 1: none): logits of tokens already in the prompt or\n"
            "                       the completion divided by R where positive, multiplied where\n"
            "                       negative, before sampling or greedy (transformers' repetition_penalty)\n"
            "  --no-special         do not add the tokenizer's special tokens (BOS) to the prompt\n"
            "  --template T         with --chat or --messages: chatml or llama3 (default: the one the model's\n"
            "                       tokenizer_config.json chat_template uses, if built in)\n"
            "  --stop TEXT          end the reply where its text first holds TEXT, which is left out\n"
            "                       (up to 8; every mode but --ids)\n"
            "  --ignore-eos         generate all --max-new-tokens tokens, past EOS (benchmarks)\n"
            "  --ids                print the completion's token ids (space-separated) instead of text\n"
            "  --stats              print load, prompt and generation times and tokens/s on stderr\n"
            "  -o FILE              with --prompts: write the JSON lines there (whole, once all are\n"
            "                       done) instead of stdout (as each is done)\n"
            "  --context N          with --interactive: tokens the conversation may hold (default:\n"
            "                       the model's max_position_embeddings, at most 4096)\n");
}

static int parse_number(const char *flag, const char *text, double min, double *out) {
    char *end;
    *out = strtod(text, &end);
    if (!*text || *end || !(*out >= min)) {
        fprintf(stderr, "ctune generate: %s: '%s' is not a number >= %g\n", flag, text, min);
        return -1;
    }
    return 0;
}

/* --messages FILE: the conversation it holds (a messages array, or an object with one). */
static int read_messages(const char *path, chat_message **msgs, int *n_msgs, ct_error *err) {
    cJSON *root = NULL;
    if (jsonfile_read(path, &root, err)) return ct_error_prefix(err, "--messages");
    const cJSON *list = cJSON_IsObject(root) ? cJSON_GetObjectItemCaseSensitive(root, "messages") : root;
    int status = chat_messages_parse(list, msgs, n_msgs, err);
    cJSON_Delete(root);
    if (status) return ct_error_prefix(err, "--messages %s", path);
    return 0;
}

/* The chat template: the one --template names, else the built-in one the model's
 * tokenizer_config.json uses; an error without either. */
static int resolve_template(const char *model_dir, const tokenizer *tok, const char *template_name, chat_template *t,
                            ct_error *err) {
    bool have = false;
    if (chat_template_resolve(template_name, model_dir, tok, t, &have, err)) return -1;
    if (!have)
        return ct_fail(err,
                       "a chat needs a template, and %s/tokenizer_config.json names no built-in one (chatml, "
                       "llama3) whose markers this tokenizer has; pass --template",
                       model_dir);
    return 0;
}

/* --chat / --messages / --interactive / --prompts: the conversation rendered with the chat
 * template, then the assistant's header. As ctune prep renders a chat document, chatml gets
 * the BOS the tokenizer's post-processor adds in front (llama3's template has its own);
 * --no-special leaves it out. */
static int chat_prompt(const chat_template *t, const tokenizer *tok, const chat_message *msgs, int n_msgs,
                       bool add_special, int32_t **ids, size_t *n_ids, ct_error *err) {
    if (chat_template_prompt(t, tok, msgs, n_msgs, ids, n_ids, err)) return -1;
    const int bos = tokenizer_bos_id(tok);
    if (t->kind != CHAT_TEMPLATE_CHATML || !add_special || bos < 0) return 0;
    int32_t *with_bos = realloc(*ids, (*n_ids + 1) * sizeof **ids);
    if (!with_bos) return ct_fail(err, "out of memory");
    memmove(with_bos + 1, with_bos, *n_ids * sizeof *with_bos);
    with_bos[0] = bos;
    *ids = with_bos;
    *n_ids += 1;
    return 0;
}

enum { MAX_STOPS = 8 };

/* The generation loop's state: ids[0, n) is the sequence so far, of which the KV cache holds
 * the first `held`; tokens are sampled into ids up to `capacity`. */
typedef struct decoder {
    model *m;
    const kernels *k;
    sampling how;
    uint64_t rng;
    float *logits;
    scored_token *scratch;
    int32_t *ids;
    size_t n, held, capacity;
    int32_t turn_end; /* a chat reply also ends here; -1 without a chat template */
    bool ignore_eos;
    float repetition_penalty; /* 1: none */
    uint8_t *seen;            /* its scratch [vocab] */
    const tokenizer *tok;     /* decodes the reply for the stop strings */
    const char *stops[MAX_STOPS];
    int n_stops;
    size_t stop_at; /* where the reply's text ends before the stop string found, or SIZE_MAX */
    double first_forward_done; /* when the first append of decode_reply came back */
} decoder;

/* The first stop string in the text of ids[from, n): its byte offset into that text, or
 * SIZE_MAX (also when the text cannot be decoded: the reply goes on). */
static size_t find_stop(const decoder *d, size_t from) {
    char *text = NULL;
    size_t len = 0, at = SIZE_MAX;
    ct_error ignored;
    if (tokenizer_decode(d->tok, d->ids + from, d->n - from, true, &text, &len, &ignored)) return SIZE_MAX;
    for (int i = 0; i < d->n_stops; i++) {
        const char *hit = strstr(text, d->stops[i]);
        if (hit && (size_t)(hit - text) < at) at = (size_t)(hit - text);
    }
    free(text);
    return at;
}

/* Feeds what the cache does not hold yet (a prompt, a new turn), then samples up to max_new
 * tokens into ids, one forward each, stopping before EOS or the turn's end, or once the reply's
 * text holds a stop string (stop_at says where its text ends; the reply's tokens run past it). */
static int decode_reply(decoder *d, size_t max_new, ct_error *err) {
    const size_t limit = d->n + max_new < d->capacity ? d->n + max_new : d->capacity, reply = d->n;
    bool first = true;
    d->stop_at = SIZE_MAX;
    while (d->n < limit) {
        if (model_cache_append(d->m, d->ids + d->held, (int)(d->n - d->held), d->logits, err) ||
            inference_check(d->k, err))
            return -1;
        d->held = d->n;
        if (first) d->first_forward_done = ct_monotonic_seconds();
        first = false;
        sampling_penalize_repeats(d->logits, d->m->cfg.vocab_size, d->ids, d->n, d->repetition_penalty, d->seen);
        const int next = sample_token(d->logits, d->m->cfg.vocab_size, &d->how, &d->rng, d->scratch);
        bool stop = next == d->turn_end;
        for (int e = 0; e < d->m->cfg.n_eos; e++) stop |= next == d->m->cfg.eos_token_ids[e];
        if (stop && !d->ignore_eos) break;
        d->ids[d->n++] = next;
        if (d->n_stops && (d->stop_at = find_stop(d, reply)) != SIZE_MAX) break;
    }
    return 0;
}

/* A reply's text cut where decode_reply found a stop string. */
static void cut_at_stop(const decoder *d, char *text) {
    if (text && d->stop_at != SIZE_MAX && d->stop_at <= strlen(text)) text[d->stop_at] = '\0';
}

/* --ids: the completion as decimal ids, one line. */
static void print_ids(const int32_t *ids, size_t n) {
    for (size_t i = 0; i < n; i++) printf("%s%d", i ? " " : "", (int)ids[i]);
    putchar('\n');
}

/* --stats: the prompt's forward gives the first token; each later token costs one forward. */
static void print_stats(double load_s, size_t prompt_tokens, double prompt_s, size_t made, double made_s) {
    fprintf(stderr,
            "ctune generate: load %.3f s; prompt %zu tokens %.1f ms (%.0f tokens/s); %zu new tokens %.1f ms after it "
            "(%.1f tokens/s)\n",
            load_s, prompt_tokens, 1e3 * prompt_s, prompt_tokens / fmax(prompt_s, 1e-9), made, 1e3 * made_s,
            made / fmax(made_s, 1e-9));
}

/* ids grown to the decoder's capacity, logits and the sampler's scratch. */
static int decoder_buffers(decoder *d, ct_error *err) {
    int32_t *grown = realloc(d->ids, d->capacity * sizeof *d->ids);
    if (grown) d->ids = grown;
    if (!d->logits) d->logits = malloc((size_t)d->m->cfg.vocab_size * sizeof *d->logits);
    if (!d->scratch) d->scratch = malloc((size_t)d->m->cfg.vocab_size * sizeof *d->scratch);
    if (!d->seen) d->seen = malloc((size_t)d->m->cfg.vocab_size);
    return grown && d->logits && d->scratch && d->seen ? 0 : ct_fail(err, "out of memory");
}

/* --interactive: a conversation read from stdin, a user turn per line, each reply printed on
 * one line. Every turn renders the whole conversation (replies as the text printed) with the
 * chat template, as --messages would; the KV cache keeps what the rendering shares with the
 * tokens it holds, so a turn runs only its own tokens (and, where a reply's text tokenizes
 * otherwise than it was sampled, from there on). */
static int interactive_chat(decoder *d, const tokenizer *tok, const char *model_dir, const char *template_name,
                            const char *system, bool add_special, size_t max_new, size_t context, bool want_stats,
                            ct_error *err) {
    const model_config *c = &d->m->cfg;
    if (!context) context = c->max_position_embeddings > 0 && c->max_position_embeddings < 4096
                                ? (size_t)c->max_position_embeddings : 4096;
    d->capacity = context;
    chat_template tmpl;
    if (resolve_template(model_dir, tok, template_name, &tmpl, err) || decoder_buffers(d, err) ||
        model_cache_reserve(d->m, (int)context, err))
        return -1;
    d->turn_end = tmpl.turn_end;
    chat_message *turns = calloc(2, sizeof *turns);
    int n_turns = 0, cap_turns = 2, status = 0, asked = 0;
    if (!turns) return ct_fail(err, "out of memory");
    if (system) {
        turns[0] = (chat_message){strdup("system"), strdup(system)};
        n_turns = 1;
        if (!turns[0].role || !turns[0].content) status = ct_fail(err, "out of memory");
    }
    const bool tty = isatty(STDIN_FILENO);
    char *line = NULL;
    size_t line_cap = 0;
    while (!status) {
        if (tty) fputs("> ", stderr);
        ssize_t got = getline(&line, &line_cap, stdin);
        if (got < 0) break; /* EOF */
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = '\0';
        if (got == 0) continue;
        if (n_turns + 2 > cap_turns) {
            chat_message *more = realloc(turns, 2 * (size_t)cap_turns * sizeof *turns);
            if (!more) {
                status = ct_fail(err, "out of memory");
                break;
            }
            turns = more;
            cap_turns *= 2;
        }
        asked++;
        turns[n_turns].role = strdup("user");
        turns[n_turns].content = strdup(line);
        n_turns++;
        if (!turns[n_turns - 1].role || !turns[n_turns - 1].content) {
            status = ct_fail(err, "out of memory");
            break;
        }
        int32_t *rendered = NULL;
        size_t n_rendered = 0;
        status = chat_prompt(&tmpl, tok, turns, n_turns, add_special, &rendered, &n_rendered, err);
        if (!status && n_rendered + 1 > context)
            status = ct_fail(err, "the conversation (%zu tokens) and a reply do not fit the %zu-token context (--context)",
                             n_rendered, context);
        if (status) {
            free(rendered);
            break;
        }
        size_t same = 0; /* the cache keeps what it holds of the new rendering */
        while (same < d->held && same < n_rendered && d->ids[same] == rendered[same]) same++;
        if (same == n_rendered && same > 0) same--; /* the last token's logits are needed: run it again */
        model_cache_truncate(d->m, (int)same);
        d->held = same;
        memcpy(d->ids, rendered, n_rendered * sizeof *rendered);
        free(rendered);
        d->n = n_rendered;
        const double start = ct_monotonic_seconds();
        const size_t fed = d->n - d->held;
        if (decode_reply(d, max_new, err)) {
            status = -1;
            break;
        }
        const double done = ct_monotonic_seconds();
        char *reply = NULL;
        size_t reply_len = 0;
        if (tokenizer_decode(tok, d->ids + n_rendered, d->n - n_rendered, true, &reply, &reply_len, err)) {
            status = -1;
            break;
        }
        cut_at_stop(d, reply);
        printf("%s\n", reply);
        fflush(stdout);
        if (want_stats)
            fprintf(stderr, "ctune generate: turn %d: %zu tokens fed %.1f ms; %zu new tokens %.1f ms after them "
                            "(%.1f tokens/s)\n",
                    asked, fed, 1e3 * (d->first_forward_done - start), d->n - n_rendered,
                    1e3 * (done - d->first_forward_done), (d->n - n_rendered) / fmax(done - d->first_forward_done, 1e-9));
        turns[n_turns].role = strdup("assistant");
        turns[n_turns].content = reply; /* owned by the conversation now */
        n_turns++;
        if (!turns[n_turns - 1].role) status = ct_fail(err, "out of memory");
    }
    free(line);
    chat_messages_free(turns, n_turns);
    return status;
}

/* The chat template of --prompts, resolved once, when its first chat line needs it. */
typedef struct lazy_template {
    const char *model_dir, *name;
    bool resolved;
    chat_template t;
} lazy_template;

/* One parsed line of --prompts: its prompt ids, where a reply to it ends (the chat turn's end
 * marker, or -1) and its reference, if it has one (malloc'd). */
static int prompts_line(const cJSON *root, const tokenizer *tok, lazy_template *tmpl, bool add_special, int32_t **ids,
                        size_t *n_ids, int32_t *turn_end, char **label, ct_error *err) {
    *label = NULL;
    *turn_end = -1;
    int status = 0;
    const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    const cJSON *completion = cJSON_GetObjectItemCaseSensitive(root, "completion");
    const cJSON *messages = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (!cJSON_IsObject(root)) status = ct_fail(err, "expected a JSON object");
    else if (!prompt == !messages) status = ct_fail(err, "expected \"prompt\" or \"messages\" (one of them)");
    else if (prompt && !cJSON_IsString(prompt)) status = ct_fail(err, "\"prompt\" must be a string");
    else if (completion && !cJSON_IsString(completion)) status = ct_fail(err, "\"completion\" must be a string");
    else if (prompt) {
        status = tokenizer_encode(tok, prompt->valuestring, strlen(prompt->valuestring), add_special, ids, n_ids, err);
        if (!status && completion && !(*label = strdup(completion->valuestring))) status = ct_fail(err, "out of memory");
    } else {
        chat_message *turns = NULL;
        int n = 0;
        status = chat_messages_parse(messages, &turns, &n, err);
        if (!status && n > 1 && !strcmp(turns[n - 1].role, "assistant")) { /* the reference answer */
            *label = (char *)turns[n - 1].content;
            turns[n - 1].content = NULL;
            free((char *)turns[n - 1].role);
            n--;
        }
        if (!status && !tmpl->resolved) {
            status = resolve_template(tmpl->model_dir, tok, tmpl->name, &tmpl->t, err);
            tmpl->resolved = status == 0;
        }
        if (!status) status = chat_prompt(&tmpl->t, tok, turns, n, add_special, ids, n_ids, err);
        if (!status) *turn_end = tmpl->t.turn_end;
        chat_messages_free(turns, n);
    }
    if (!status && *n_ids == 0) status = ct_fail(err, "the prompt encodes to no tokens");
    return status;
}

/* --prompts: every line of in_path answered, one JSON line each, to stdout as they come or
 * into out_path once all are (never a partial file). A malformed line stops it, named. */
static int batch_generate(decoder *d, const tokenizer *tok, const char *model_dir, const char *template_name,
                          bool add_special, size_t max_new, const char *in_path, const char *out_path,
                          ct_error *err) {
    FILE *in = fopen(in_path, "r");
    if (!in) return ct_fail(err, "--prompts %s: cannot open: %s", in_path, strerror(errno));
    textbuf all = {0};
    char *line = NULL;
    size_t line_cap = 0, line_no = 0, answered = 0;
    int status = 0;
    ssize_t got;
    lazy_template tmpl = {.model_dir = model_dir, .name = template_name};
    while (!status && (got = getline(&line, &line_cap, in)) >= 0) {
        line_no++;
        cJSON *root = NULL;
        const int parsed = jsonfile_parse_line(line, (size_t)got, line_no == 1, &root, err);
        if (parsed == 1) continue; /* a blank line */
        char *label = NULL, *text = NULL;
        size_t n_prompt = 0, text_len = 0;
        free(d->ids);
        d->ids = NULL;
        status = parsed ? -1
                        : prompts_line(root, tok, &tmpl, add_special, &d->ids, &n_prompt, &d->turn_end, &label, err);
        cJSON_Delete(root);
        if (status) ct_error_prefix(err, "--prompts %s:%zu", in_path, line_no);
        d->n = n_prompt;
        d->held = 0;
        d->capacity = n_prompt + max_new;
        if (!status) status = decoder_buffers(d, err);
        if (!status) status = model_cache_reserve(d->m, (int)d->capacity, err); /* also empties it */
        if (!status) status = decode_reply(d, max_new, err);
        if (!status)
            status = tokenizer_decode(tok, d->ids + n_prompt, d->n - n_prompt, true, &text, &text_len, err);
        if (!status) cut_at_stop(d, text);
        if (!status) {
            textbuf one = {0};
            textbuf_printf(&one, "{\"line\": %zu, \"completion\": ", line_no);
            textbuf_json_string(&one, text);
            if (label) {
                textbuf_puts(&one, ", \"label\": ");
                textbuf_json_string(&one, label);
            }
            textbuf_printf(&one, ", \"prompt_tokens\": %zu, \"new_tokens\": %zu}\n", n_prompt, d->n - n_prompt);
            if (one.failed) status = ct_fail(err, "out of memory");
            else if (out_path) textbuf_put(&all, one.data, one.len);
            else {
                fputs(one.data, stdout);
                fflush(stdout);
            }
            textbuf_free(&one);
            answered++;
        }
        free(label);
        free(text);
    }
    if (!status && ferror(in)) status = ct_fail(err, "--prompts %s: read error after line %zu", in_path, line_no);
    fclose(in);
    free(line);
    if (!status && all.failed) status = ct_fail(err, "out of memory");
    if (!status && out_path) status = write_file_atomic(out_path, all.data ? all.data : "", all.len, err);
    if (!status && out_path) fprintf(stderr, "ctune generate: %zu completions written to %s\n", answered, out_path);
    textbuf_free(&all);
    return status;
}

int cmd_generate(int argc, char **argv) {
    const double started = ct_monotonic_seconds();
    inference_source source = {0};
    const char *prompt = NULL, *chat = NULL, *system = NULL, *template_name = NULL, *messages_path = NULL;
    const char *prompts_path = NULL, *out_path = NULL;
    double max_new = 32, temperature = 0, seed = 0, top_k = 0, top_p = 1, context = 0, penalty = 1;
    bool add_special = true, ignore_eos = false, want_ids = false, want_stats = false, interactive = false;
    const char *stops[MAX_STOPS];
    int n_stops = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_value = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            generate_usage(stdout);
            return 0;
        }
        const int shared = inference_option("generate", argc, argv, &i, &source);
        if (shared < 0) return 2;
        if (shared) continue;
        if (!strcmp(a, "--prompt") && has_value) prompt = argv[++i];
        else if (!strcmp(a, "--chat") && has_value) chat = argv[++i];
        else if (!strcmp(a, "--messages") && has_value) messages_path = argv[++i];
        else if (!strcmp(a, "--prompts") && has_value) prompts_path = argv[++i];
        else if (!strcmp(a, "-o") && has_value) out_path = argv[++i];
        else if (!strcmp(a, "--system") && has_value) system = argv[++i];
        else if (!strcmp(a, "--template") && has_value) template_name = argv[++i];
        else if (!strcmp(a, "--max-new-tokens") && has_value) {
            if (parse_number(a, argv[++i], 1, &max_new)) return 2;
        } else if (!strcmp(a, "--temperature") && has_value) {
            if (parse_number(a, argv[++i], 0, &temperature)) return 2;
        } else if (!strcmp(a, "--seed") && has_value) {
            if (parse_number(a, argv[++i], 0, &seed)) return 2;
        } else if (!strcmp(a, "--top-k") && has_value) {
            if (parse_number(a, argv[++i], 0, &top_k)) return 2;
        } else if (!strcmp(a, "--top-p") && has_value) {
            if (parse_number(a, argv[++i], 0, &top_p)) return 2;
            if (!(top_p > 0 && top_p <= 1)) {
                fprintf(stderr, "ctune generate: --top-p: '%s' is not in (0, 1]\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(a, "--repetition-penalty") && has_value) {
            if (parse_number(a, argv[++i], 0, &penalty)) return 2;
            if (!(penalty > 0) || !isfinite(penalty) || (float)penalty == 0.0f) {
                fprintf(stderr, "ctune generate: --repetition-penalty: '%s' is not a number > 0\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(a, "--no-special")) add_special = false;
        else if (!strcmp(a, "--ignore-eos")) ignore_eos = true;
        else if (!strcmp(a, "--stop") && has_value) {
            if (n_stops == MAX_STOPS || !argv[i + 1][0]) {
                fprintf(stderr, "ctune generate: --stop: %s\n",
                        argv[i + 1][0] ? "at most 8 stop strings" : "an empty stop string would stop at once");
                return 2;
            }
            stops[n_stops++] = argv[++i];
        }
        else if (!strcmp(a, "--ids")) want_ids = true;
        else if (!strcmp(a, "--stats")) want_stats = true;
        else if (!strcmp(a, "--interactive")) interactive = true;
        else if (!strcmp(a, "--context") && has_value) {
            if (parse_number(a, argv[++i], 2, &context)) return 2;
        }
        else {
            fprintf(stderr, "ctune generate: unexpected argument '%s'\n\n", a);
            generate_usage(stderr);
            return 2;
        }
    }
    ct_error err = {{0}};
    if (inference_apply_run(&source, NULL, &err)) {
        fprintf(stderr, "ctune generate: %s\n", err.msg);
        return 1;
    }
    const int inputs = (prompt != NULL) + (chat != NULL) + (messages_path != NULL) + interactive + (prompts_path != NULL);
    if (!source.model_dir || inputs != 1) {
        if (inputs > 1)
            fprintf(stderr, "ctune generate: --prompt continues a text, --chat answers a message, --messages a "
                            "conversation, --interactive holds one, --prompts answers a file: one of them\n");
        else generate_usage(stderr);
        return 2;
    }
    if (system && !chat && !interactive) {
        fprintf(stderr, "ctune generate: --system goes with --chat or --interactive (with --messages, put it in "
                        "the file)\n");
        return 2;
    }
    if (prompt && template_name) {
        fprintf(stderr, "ctune generate: --template goes with --chat, --messages or --interactive\n");
        return 2;
    }
    if (interactive && (want_ids || ignore_eos)) {
        fprintf(stderr, "ctune generate: --ids and --ignore-eos do not go with --interactive\n");
        return 2;
    }
    if (context && !interactive) {
        fprintf(stderr, "ctune generate: --context goes with --interactive\n");
        return 2;
    }
    if (n_stops && want_ids) {
        fprintf(stderr, "ctune generate: --stop cuts the text; it does not go with --ids\n");
        return 2;
    }
    if (out_path && !prompts_path) {
        fprintf(stderr, "ctune generate: -o goes with --prompts\n");
        return 2;
    }
    if (prompts_path && (want_ids || want_stats || system)) {
        fprintf(stderr, "ctune generate: --ids, --stats and --system do not go with --prompts\n");
        return 2;
    }
    const bool one_shot = !interactive && !prompts_path; /* one prompt, one completion */
    const bool as_chat = chat || messages_path || interactive;
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", source.model_dir);
    tokenizer *tok = NULL;
    model m;
    bool model_ready = false;
    decoder d = {.how = {.temperature = temperature, .top_k = top_k > INT_MAX ? INT_MAX : (int)top_k, .top_p = top_p},
                 .rng = (uint64_t)seed, .turn_end = -1, .ignore_eos = ignore_eos,
                 .repetition_penalty = (float)penalty};
    char *text = NULL;
    size_t text_len = 0;
    int status = tokenizer_load(&tok, path, &err);
    const kernels *k = NULL;
    if (!status) status = inference_backend(&source, 0, &k, &err);
    if (!status) status = load_model_for_inference(&m, &source, k, &err);
    model_ready = status == 0;
    d.m = &m;
    d.k = k;
    d.tok = tok;
    d.n_stops = n_stops;
    memcpy(d.stops, stops, sizeof stops);
    chat_template tmpl = {0};
    chat_message one_turn[2] = {{"system", system}, {"user", chat}}, *conversation = NULL;
    int n_turns = 0;
    if (!status && messages_path) status = read_messages(messages_path, &conversation, &n_turns, &err);
    if (!status && interactive) {
        status = interactive_chat(&d, tok, source.model_dir, template_name, system, add_special, (size_t)max_new,
                                  (size_t)context, want_stats, &err);
    } else if (!status && prompts_path) {
        status = batch_generate(&d, tok, source.model_dir, template_name, add_special, (size_t)max_new, prompts_path,
                                out_path, &err);
    } else if (!status && as_chat) {
        const chat_message *turns = messages_path ? conversation : system ? one_turn : one_turn + 1;
        const int n = messages_path ? n_turns : system ? 2 : 1;
        status = resolve_template(source.model_dir, tok, template_name, &tmpl, &err);
        if (!status) status = chat_prompt(&tmpl, tok, turns, n, add_special, &d.ids, &d.n, &err);
        d.turn_end = tmpl.turn_end;
    } else if (!status) status = tokenizer_encode(tok, prompt, strlen(prompt), add_special, &d.ids, &d.n, &err);
    if (!status && one_shot && d.n == 0) status = ct_fail(&err, "the prompt encodes to no tokens");
    const size_t prompt_len = d.n;
    d.capacity = d.n + (size_t)max_new;
    if (!status && one_shot) status = decoder_buffers(&d, &err);
    if (!status && one_shot) status = model_reserve(&m, 1, (int)d.n, &err);
    if (!status && one_shot) status = model_cache_reserve(&m, (int)d.capacity, &err);
    const double loaded = ct_monotonic_seconds();
    d.first_forward_done = loaded;
    if (!status && one_shot) status = decode_reply(&d, (size_t)max_new, &err);
    const double finished = ct_monotonic_seconds();
    if (!status && one_shot && want_ids) print_ids(d.ids + prompt_len, d.n - prompt_len);
    else if (!status && one_shot)
        status = tokenizer_decode(tok, d.ids + prompt_len, d.n - prompt_len, true, &text, &text_len, &err);
    if (!status && one_shot && !want_ids) {
        cut_at_stop(&d, text);
        printf("%s%s\n", as_chat ? "" : prompt, text);
    }
    if (!status && one_shot && want_stats) {
        fflush(stdout);
        print_stats(loaded - started, prompt_len, d.first_forward_done - loaded, d.n - prompt_len,
                    finished - d.first_forward_done);
    }
    if (status) fprintf(stderr, "ctune generate: %s\n", err.msg);
    chat_messages_free(conversation, n_turns);
    free(text);
    free(d.ids);
    free(d.logits);
    free(d.scratch);
    free(d.seen);
    if (model_ready) model_free(&m);
    tokenizer_free(tok);
    return status ? 1 : 0;
}
