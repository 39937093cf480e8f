/* test_chat_template: the chatml and llama3 templates on a byte-level tokenizer (ids 0..255
 * are the bytes, so expected ids are spelled out by hand), their loss masks, missing-marker
 * errors, and `ctune prep` on {"messages": ...} lines. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/check.h"
#include "train/chat_template.h"
#include "train/cli.h"
#include "train/data.h"
#include "train/jsonfile.h"
#include "train/tokenizer.h"

static char tmpdir[] = "/tmp/ctune_test_chat_XXXXXX";

enum { BOT = 256, EOT = 257, IM_START = 258, IM_END = 259, HDR_START = 260, HDR_END = 261 };

/* A byte-level tokenizer with bos <|begin_of_text|> (256), eos <|eot_id|> (257) and, when
 * with_markers, the other chat markers as added tokens 258..261. */
static tokenizer *make_tokenizer(const char *dir, bool with_markers) {
    ct_error err = {{0}};
    CHECK_MSG(tokenizer_write_byte_level(dir, "<|begin_of_text|>", "<|eot_id|>", NULL, &err) == 0, "%s", err.msg);
    char path[1200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (with_markers) {
        cJSON *root = NULL;
        CHECK(jsonfile_read(path, &root, &err) == 0);
        cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
        const char *names[4] = {"<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>"};
        for (int i = 0; i < 4; i++) {
            cJSON *t = cJSON_CreateObject();
            cJSON_AddNumberToObject(t, "id", 258 + i);
            cJSON_AddStringToObject(t, "content", names[i]);
            cJSON_AddBoolToObject(t, "single_word", false);
            cJSON_AddBoolToObject(t, "lstrip", false);
            cJSON_AddBoolToObject(t, "rstrip", false);
            cJSON_AddBoolToObject(t, "normalized", false);
            cJSON_AddBoolToObject(t, "special", true);
            cJSON_AddItemToArray(added, t);
        }
        char *text = cJSON_Print(root);
        FILE *f = fopen(path, "w");
        fputs(text, f);
        fclose(f);
        free(text);
        cJSON_Delete(root);
    }
    tokenizer *tok = NULL;
    CHECK_MSG(tokenizer_load(&tok, path, &err) == 0, "%s", err.msg);
    return tok;
}

/* Appends the bytes of s (byte-level ids) with the given mask. */
static void add_bytes(int32_t *ids, uint8_t *mask, size_t *n, const char *s, uint8_t loss) {
    for (; *s; s++) ids[*n] = (unsigned char)*s, mask[(*n)++] = loss;
}
static void add_id(int32_t *ids, uint8_t *mask, size_t *n, int32_t id, uint8_t loss) {
    ids[*n] = id, mask[(*n)++] = loss;
}

static const chat_message CHAT[3] = {{"system", "Be brief."}, {"user", "2+2?"}, {"assistant", "4"}};

static void check_render(const tokenizer *tok, chat_template_kind kind, bool train_on_inputs,
                         const int32_t *want_ids, const uint8_t *want_mask, size_t want_n,
                         const char *rendered) {
    chat_template t;
    ct_error err = {{0}};
    CHECK_MSG(chat_template_init(&t, kind, tok, &err) == 0, "%s", err.msg);
    int32_t *ids = NULL;
    uint8_t *mask = NULL;
    size_t n = 0;
    CHECK_MSG(chat_template_encode(&t, tok, CHAT, 3, train_on_inputs, &ids, &mask, &n, &err) == 0, "%s", err.msg);
    CHECK_MSG(n == want_n, "%s: %zu tokens, expected %zu", chat_template_name(kind), n, want_n);
    if (n == want_n) {
        CHECK(memcmp(ids, want_ids, n * sizeof *ids) == 0);
        for (size_t i = 0; i < n; i++)
            CHECK_MSG(mask[i] == (train_on_inputs ? i > 0 : want_mask[i]), "%s mask[%zu] = %d",
                      chat_template_name(kind), i, mask[i]);
    }
    /* The documented string, tokenized whole (markers are added tokens), gives the same ids. */
    int32_t *whole = NULL;
    size_t n_whole = 0;
    CHECK(tokenizer_encode(tok, rendered, strlen(rendered), false, &whole, &n_whole, &err) == 0);
    CHECK(n_whole == n && memcmp(whole, ids, n * sizeof *ids) == 0);
    free(whole);
    free(ids);
    free(mask);
}

static void test_templates(const tokenizer *tok) {
    int32_t ids[200];
    uint8_t mask[200];
    size_t n = 0;
    for (int i = 0; i < 3; i++) {
        bool assistant = i == 2;
        add_id(ids, mask, &n, IM_START, 0);
        add_bytes(ids, mask, &n, CHAT[i].role, 0);
        add_bytes(ids, mask, &n, "\n", 0);
        add_bytes(ids, mask, &n, CHAT[i].content, assistant);
        add_id(ids, mask, &n, IM_END, assistant);
        add_bytes(ids, mask, &n, "\n", 0);
    }
    const char *chatml = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
                         "<|im_start|>assistant\n4<|im_end|>\n";
    check_render(tok, CHAT_TEMPLATE_CHATML, false, ids, mask, n, chatml);
    check_render(tok, CHAT_TEMPLATE_CHATML, true, ids, mask, n, chatml);

    n = 0;
    add_id(ids, mask, &n, BOT, 0);
    for (int i = 0; i < 3; i++) {
        bool assistant = i == 2;
        add_id(ids, mask, &n, HDR_START, 0);
        add_bytes(ids, mask, &n, CHAT[i].role, 0);
        add_id(ids, mask, &n, HDR_END, 0);
        add_bytes(ids, mask, &n, "\n\n", 0);
        add_bytes(ids, mask, &n, CHAT[i].content, assistant);
        add_id(ids, mask, &n, EOT, assistant);
    }
    const char *llama3 = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                         "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
                         "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>";
    check_render(tok, CHAT_TEMPLATE_LLAMA3, false, ids, mask, n, llama3);
    check_render(tok, CHAT_TEMPLATE_LLAMA3, true, ids, mask, n, llama3);

    chat_template_kind kind;
    ct_error err = {{0}};
    CHECK(chat_template_parse("llama3", &kind, &err) == 0 && kind == CHAT_TEMPLATE_LLAMA3);
    CHECK(chat_template_parse("zephyr", &kind, &err) == -1);
    CHECK_CONTAINS(err.msg, "chatml or llama3");
    CHECK(chat_template_detect("{% for m in messages %}<|im_start|>{{ m.role }}...<|im_end|>", &kind) == 0 &&
          kind == CHAT_TEMPLATE_CHATML);
    CHECK(chat_template_detect("[INST] {{ m }} [/INST]", &kind) == -1);
}

/* The prompt a chat model answers: the conversation, then the assistant's header, as
 * transformers' apply_chat_template(..., add_generation_prompt=True) renders the chatml and
 * llama3 templates. */
static void test_generation_prompt(const tokenizer *tok) {
    const struct {
        chat_template_kind kind;
        const char *rendered;
    } cases[2] = {
        {CHAT_TEMPLATE_CHATML, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
                               "<|im_start|>assistant\n"},
        {CHAT_TEMPLATE_LLAMA3, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                               "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
                               "<|start_header_id|>assistant<|end_header_id|>\n\n"},
    };
    for (int c = 0; c < 2; c++) {
        chat_template t;
        ct_error err = {{0}};
        CHECK_MSG(chat_template_init(&t, cases[c].kind, tok, &err) == 0, "%s", err.msg);
        int32_t *ids = NULL, *whole = NULL;
        size_t n = 0, n_whole = 0;
        CHECK_MSG(chat_template_prompt(&t, tok, CHAT, 2, &ids, &n, &err) == 0, "%s", err.msg);
        CHECK(tokenizer_encode(tok, cases[c].rendered, strlen(cases[c].rendered), false, &whole, &n_whole, &err) == 0);
        CHECK_MSG(n == n_whole && n > 0 && memcmp(ids, whole, n * sizeof *ids) == 0, "%s generation prompt: %zu ids, "
                  "the rendered string %zu", chat_template_name(cases[c].kind), n, n_whole);
        free(ids);
        free(whole);
        CHECK(chat_template_prompt(&t, tok, CHAT, 0, &ids, &n, &err) == -1);
        CHECK_CONTAINS(err.msg, "empty");
    }
}

/* chat_template_resolve: a name, else what tokenizer_config.json's chat_template uses. */
static void test_resolve(const tokenizer *tok) {
    char dir[1100], path[1200];
    snprintf(dir, sizeof dir, "%s/resolve", tmpdir);
    CHECK(mkdir(dir, 0755) == 0);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    chat_template t;
    bool have = true;
    ct_error err = {{0}};
    CHECK(chat_template_resolve(NULL, dir, tok, &t, &have, &err) == 0 && !have); /* no file: none */
    FILE *f = fopen(path, "w");
    fputs("{\"chat_template\": \"{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}"
          "<|end_header_id|>\\n\\n{{ m.content }}<|eot_id|>{% endfor %}\"}", f);
    fclose(f);
    CHECK(chat_template_resolve(NULL, dir, tok, &t, &have, &err) == 0 && have && t.kind == CHAT_TEMPLATE_LLAMA3);
    CHECK(chat_template_resolve("chatml", dir, tok, &t, &have, &err) == 0 && have && t.kind == CHAT_TEMPLATE_CHATML);
    CHECK(chat_template_resolve("zephyr", dir, tok, &t, &have, &err) == -1);
    CHECK_CONTAINS(err.msg, "--template");
    f = fopen(path, "w");
    fputs("{\"chat_template\": \"[INST] {{ m }} [/INST]\"}", f);
    fclose(f);
    CHECK(chat_template_resolve(NULL, dir, tok, &t, &have, &err) == 0 && !have);
}

static void test_missing_markers(void) {
    char dir[1100];
    snprintf(dir, sizeof dir, "%s/plain", tmpdir);
    CHECK(mkdir(dir, 0755) == 0);
    tokenizer *tok = make_tokenizer(dir, false);
    chat_template t;
    ct_error err = {{0}};
    CHECK(chat_template_init(&t, CHAT_TEMPLATE_CHATML, tok, &err) == -1);
    CHECK_CONTAINS(err.msg, "<|im_start|>");
    CHECK(chat_template_init(&t, CHAT_TEMPLATE_LLAMA3, tok, &err) == -1);
    CHECK_CONTAINS(err.msg, "<|start_header_id|>");
    tokenizer_free(tok);
}

static void test_prep_chat(void) {
    char input[1100], output[1100];
    snprintf(input, sizeof input, "%s/chat.jsonl", tmpdir);
    snprintf(output, sizeof output, "%s/chat.h5", tmpdir);
    FILE *f = fopen(input, "w");
    fputs("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n"
          "{\"text\": \"ab\"}\n", f);
    fclose(f);
    char *argv[] = {"prep", "--tokenizer", tmpdir, "--template", "chatml", input, "-o", output, NULL};
    CHECK(cmd_prep(8, argv) == 0);
    dataset ds;
    ct_error err = {{0}};
    CHECK_MSG(dataset_open(&ds, output, &err) == 0, "%s", err.msg);
    /* chatml: bos (the tokenizer's post-processor BOS) first, eos appended after <|im_end|>\n
     * with the loss of the last turn's end marker (an assistant turn: 1). */
    int32_t ids[64];
    uint8_t mask[64];
    size_t n = 0;
    add_id(ids, mask, &n, BOT, 0);
    add_id(ids, mask, &n, IM_START, 0);
    add_bytes(ids, mask, &n, "user\nhi", 0);
    add_id(ids, mask, &n, IM_END, 0);
    add_bytes(ids, mask, &n, "\n", 0);
    add_id(ids, mask, &n, IM_START, 0);
    add_bytes(ids, mask, &n, "assistant\n", 0);
    add_bytes(ids, mask, &n, "yo", 1);
    add_id(ids, mask, &n, IM_END, 1);
    add_bytes(ids, mask, &n, "\n", 0);
    add_id(ids, mask, &n, EOT, 1);
    CHECK(ds.n_docs == 2);
    CHECK_MSG(ds.doc_offsets[1] == (int64_t)n, "chat document has %lld tokens, expected %zu",
              (long long)ds.doc_offsets[1], n);
    if (ds.doc_offsets[1] == (int64_t)n) {
        CHECK(memcmp(ds.tokens, ids, n * sizeof *ids) == 0);
        CHECK(memcmp(ds.loss_mask, mask, n) == 0);
    }
    dataset_close(&ds);

    /* A tokenizer without the markers: a clear error, no output. */
    char plain[1100];
    snprintf(plain, sizeof plain, "%s/plain", tmpdir);
    char *argv2[] = {"prep", "--tokenizer", plain, "--template", "chatml", input, "-o", output, NULL};
    remove(output);
    CHECK(cmd_prep(8, argv2) == 1);
    CHECK(access(output, F_OK) != 0);
}

/* chat_messages_parse: the shapes it takes and refuses, and what a refusal leaves to free. */
static void test_messages_parse(void) {
    struct {
        const char *json, *error; /* error NULL: parses */
        int copied;
    } cases[] = {
        {"[{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"\"}]", NULL, 2},
        {"{\"role\": \"user\"}", "\"messages\" must be a non-empty array", 0},
        {"[]", "\"messages\" must be a non-empty array", 0},
        {"[{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"x\", \"content\": \"b\"}, 3]",
         "messages[2]: expected {\"role\": string, \"content\": string}", 2},
        {"[{\"role\": \"user\", \"content\": 1}]", "messages[0]: expected", 0},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        cJSON *root = cJSON_Parse(cases[c].json);
        chat_message *msgs = NULL;
        int n = -1;
        ct_error err = {{0}};
        const int rc = chat_messages_parse(root, &msgs, &n, &err);
        CHECK_MSG(cases[c].error ? rc != 0 && strstr(err.msg, cases[c].error) != NULL : rc == 0,
                  "case %zu: status %d, error '%s'", c, rc, err.msg);
        CHECK_MSG(n == cases[c].copied, "case %zu: %d messages copied, expected %d", c, n, cases[c].copied);
        if (rc == 0 && n == 2)
            CHECK(!strcmp(msgs[0].role, "user") && !strcmp(msgs[0].content, "hi") && !strcmp(msgs[1].content, ""));
        chat_messages_free(msgs, n);
        cJSON_Delete(root);
    }
    chat_message *msgs = NULL;
    int n = -1;
    ct_error err = {{0}};
    CHECK(chat_messages_parse(NULL, &msgs, &n, &err) != 0 && strstr(err.msg, "missing \"messages\"") && n == 0);
}

int main(void) {
    CHECK(mkdtemp(tmpdir) != NULL);
    tokenizer *tok = make_tokenizer(tmpdir, true);
    if (tok) {
        test_templates(tok);
        test_generation_prompt(tok);
        test_resolve(tok);
    }
    tokenizer_free(tok);
    test_missing_markers();
    test_prep_chat();
    test_messages_parse();
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return check_summary("test_chat_template");
}
