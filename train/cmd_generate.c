/* ctune generate --model DIR [--adapter DIR] (--prompt TEXT | --chat MESSAGE | --messages FILE) [options] */
#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/chat_template.h"
#include "train/cli.h"
#include "train/clock.h"
#include "train/jsonfile.h"
#include "train/sampling.h"
#include "train/tokenizer.h"
#include "train/trainer.h"

static void generate_usage(FILE *out) {
    fprintf(out,
            "usage: ctune generate --model DIR [--adapter DIR] --prompt TEXT [options]\n"
            "       ctune generate --model DIR [--adapter DIR] --chat MESSAGE [--system TEXT] [options]\n"
            "       ctune generate --model DIR [--adapter DIR] --messages FILE [options]\n"
            "       ctune generate --run RUN_DIR (--prompt TEXT | --chat MESSAGE | --messages FILE) [options]\n"
            "\n"
            "Continues the prompt with the model (plus a PEFT LoRA adapter folder, e.g. a run's\n"
            "final/) and prints the prompt and completion. With --chat, answers MESSAGE as a chat\n"
            "model: the user turn (after an optional system turn) rendered with the chat template\n"
            "ctune prep trains with, then the assistant's header; prints the reply, which ends at the\n"
            "turn's end marker or EOS. --messages FILE answers a whole conversation instead: a JSON\n"
            "array [{\"role\": ..., \"content\": ...}, ...] or an object with that \"messages\" array\n"
            "(a chat line of ctune prep's input), rendered the same way.\n"
            "\n");
    inference_options_usage(out);
    fprintf(out,
            "  --max-new-tokens N   tokens to generate at most (default 32); stops at EOS\n"
            "  --temperature T      0 = greedy (default); > 0 samples from softmax(logits / T)\n"
            "  --seed N             sampling seed (default 0)\n"
            "  --top-k K            sample among the K most likely tokens only (default 0: all)\n"
            "  --top-p P            ... and among the fewest most likely whose probabilities reach P,\n"
            "                       in (0, 1] (default 1: all); both as transformers applies them\n"
            "  --no-special         do not add the tokenizer's special tokens (BOS) to the prompt\n"
            "  --template T         with --chat or --messages: chatml or llama3 (default: the one the model's\n"
            "                       tokenizer_config.json chat_template uses, if built in)\n"
            "  --ignore-eos         generate all --max-new-tokens tokens, past EOS (benchmarks)\n"
            "  --ids                print the completion's token ids (space-separated) instead of text\n"
            "  --stats              print load, prompt and generation times and tokens/s on stderr\n");
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

/* --chat / --messages: the conversation rendered with the chat template, then the assistant's
 * header. As ctune prep renders a chat document, chatml gets the BOS the tokenizer's
 * post-processor adds in front (llama3's template has its own); --no-special leaves it out. */
static int chat_prompt(const char *model_dir, const tokenizer *tok, const char *template_name, const chat_message *msgs,
                       int n_msgs, bool add_special, chat_template *t, int32_t **ids, size_t *n_ids, ct_error *err) {
    bool have = false;
    if (chat_template_resolve(template_name, model_dir, tok, t, &have, err)) return -1;
    if (!have)
        return ct_fail(err, "--chat: %s/tokenizer_config.json names no built-in chat template (chatml, llama3) whose "
                            "markers this tokenizer has; pass --template",
                       model_dir);
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

/* --ids: the completion as decimal ids, one line. */
static void print_ids(const int32_t *ids, size_t n) {
    for (size_t i = 0; i < n; i++) printf("%s%d", i ? " " : "", (int)ids[i]);
    putchar('\n');
}

int cmd_generate(int argc, char **argv) {
    const double started = ct_monotonic_seconds();
    inference_source source = {0};
    const char *prompt = NULL, *chat = NULL, *system = NULL, *template_name = NULL, *messages_path = NULL;
    double max_new = 32, temperature = 0, seed = 0, top_k = 0, top_p = 1;
    bool add_special = true, ignore_eos = false, want_ids = false, want_stats = false;
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
        } else if (!strcmp(a, "--no-special")) add_special = false;
        else if (!strcmp(a, "--ignore-eos")) ignore_eos = true;
        else if (!strcmp(a, "--ids")) want_ids = true;
        else if (!strcmp(a, "--stats")) want_stats = true;
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
    const int inputs = (prompt != NULL) + (chat != NULL) + (messages_path != NULL);
    if (!source.model_dir || inputs != 1) {
        if (inputs > 1)
            fprintf(stderr, "ctune generate: --prompt continues a text, --chat answers a message, --messages a "
                            "conversation: one of them\n");
        else generate_usage(stderr);
        return 2;
    }
    if (!chat && system) {
        fprintf(stderr, "ctune generate: --system goes with --chat (with --messages, put it in the file)\n");
        return 2;
    }
    if (prompt && template_name) {
        fprintf(stderr, "ctune generate: --template goes with --chat or --messages\n");
        return 2;
    }
    const bool as_chat = chat || messages_path;
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", source.model_dir);
    tokenizer *tok = NULL;
    model m;
    bool model_ready = false;
    int32_t *ids = NULL;
    float *logits = NULL;
    scored_token *scratch = NULL;
    const sampling how = {.temperature = temperature, .top_k = top_k > INT_MAX ? INT_MAX : (int)top_k, .top_p = top_p};
    char *text = NULL;
    size_t n_ids = 0, text_len = 0;
    int status = tokenizer_load(&tok, path, &err);
    const kernels *k = NULL;
    if (!status) status = inference_backend(&source, 0, &k, &err);
    if (!status) status = load_model_for_inference(&m, &source, k, &err);
    model_ready = status == 0;
    chat_template tmpl = {0};
    chat_message one_turn[2] = {{"system", system}, {"user", chat}}, *conversation = NULL;
    int n_turns = 0;
    if (!status && messages_path) status = read_messages(messages_path, &conversation, &n_turns, &err);
    if (!status && as_chat) {
        const chat_message *turns = messages_path ? conversation : system ? one_turn : one_turn + 1;
        const int n = messages_path ? n_turns : system ? 2 : 1;
        status = chat_prompt(source.model_dir, tok, template_name, turns, n, add_special, &tmpl, &ids, &n_ids, &err);
    } else if (!status) status = tokenizer_encode(tok, prompt, strlen(prompt), add_special, &ids, &n_ids, &err);
    if (!status && n_ids == 0) status = ct_fail(&err, "the prompt encodes to no tokens");
    size_t capacity = n_ids + (size_t)max_new;
    if (!status) {
        int32_t *grown = realloc(ids, capacity * sizeof *ids);
        logits = malloc((size_t)m.cfg.vocab_size * sizeof *logits);
        scratch = malloc((size_t)m.cfg.vocab_size * sizeof *scratch);
        if (grown) ids = grown;
        if (!grown || !logits || !scratch) status = ct_fail(&err, "out of memory");
    }
    if (!status) status = model_reserve(&m, 1, (int)n_ids, &err);
    if (!status) status = model_cache_reserve(&m, (int)capacity, &err);
    size_t prompt_len = n_ids;
    uint64_t rng = (uint64_t)seed;
    const double loaded = ct_monotonic_seconds();
    double prompt_done = loaded;
    while (!status && n_ids < capacity) { /* the prompt once, then each new token on the cache */
        const size_t fed = n_ids == prompt_len ? 0 : n_ids - 1;
        status = model_cache_append(&m, ids + fed, (int)(n_ids - fed), logits, &err);
        if (!status) status = inference_check(k, &err);
        if (status) break;
        if (fed == 0) prompt_done = ct_monotonic_seconds();
        int next = sample_token(logits, m.cfg.vocab_size, &how, &rng, scratch);
        bool eos = false;
        for (int e = 0; e < m.cfg.n_eos; e++) eos |= next == m.cfg.eos_token_ids[e];
        eos |= as_chat && next == tmpl.turn_end; /* the assistant's turn is over */
        if (eos && !ignore_eos) break;
        ids[n_ids++] = next;
    }
    const double finished = ct_monotonic_seconds();
    if (!status && want_ids) print_ids(ids + prompt_len, n_ids - prompt_len);
    else if (!status)
        status = tokenizer_decode(tok, ids + prompt_len, n_ids - prompt_len, true, &text, &text_len, &err);
    if (!status && !want_ids) printf("%s%s\n", as_chat ? "" : prompt, text);
    if (!status && want_stats) {
        /* the prompt's forward gives the first token; each later token costs one forward */
        const size_t made = n_ids - prompt_len;
        fflush(stdout);
        fprintf(stderr,
                "ctune generate: load %.3f s; prompt %zu tokens %.1f ms (%.0f tokens/s); %zu new tokens %.1f ms "
                "after it (%.1f tokens/s)\n",
                loaded - started, prompt_len, 1e3 * (prompt_done - loaded), prompt_len / fmax(prompt_done - loaded, 1e-9),
                made, 1e3 * (finished - prompt_done), made / fmax(finished - prompt_done, 1e-9));
    }
    if (status) fprintf(stderr, "ctune generate: %s\n", err.msg);
    chat_messages_free(conversation, n_turns);
    free(text);
    free(ids);
    free(logits);
    free(scratch);
    if (model_ready) model_free(&m);
    tokenizer_free(tok);
    return status ? 1 : 0;
}
