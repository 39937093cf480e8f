/* chat_template: chatml and llama3 rendered to ids + loss mask (see chat_template.h). */
#include "train/chat_template.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include "train/jsonfile.h"

static const char *const MARKERS[2][4] = {
    /* begin_text, turn_start, turn_end, header_end */
    {NULL, "<|im_start|>", "<|im_end|>", NULL},
    {"<|begin_of_text|>", "<|start_header_id|>", "<|eot_id|>", "<|end_header_id|>"},
};

int chat_template_parse(const char *name, chat_template_kind *kind, ct_error *err) {
    if (!strcmp(name, "chatml")) *kind = CHAT_TEMPLATE_CHATML;
    else if (!strcmp(name, "llama3")) *kind = CHAT_TEMPLATE_LLAMA3;
    else return ct_fail(err, "unknown chat template '%s' (expected chatml or llama3)", name);
    return 0;
}

const char *chat_template_name(chat_template_kind kind) {
    return kind == CHAT_TEMPLATE_LLAMA3 ? "llama3" : "chatml";
}

int chat_template_detect(const char *jinja, chat_template_kind *kind) {
    if (!jinja) return -1;
    if (strstr(jinja, "<|im_start|>") && strstr(jinja, "<|im_end|>")) *kind = CHAT_TEMPLATE_CHATML;
    else if (strstr(jinja, "<|start_header_id|>") && strstr(jinja, "<|eot_id|>")) *kind = CHAT_TEMPLATE_LLAMA3;
    else return -1;
    return 0;
}

int chat_template_init(chat_template *t, chat_template_kind kind, const tokenizer *tok,
                       ct_error *err) {
    int32_t ids[4];
    for (int i = 0; i < 4; i++) {
        const char *marker = MARKERS[kind][i];
        ids[i] = marker ? tokenizer_token_to_id(tok, marker) : -1;
        if (marker && ids[i] < 0)
            return ct_fail(err, "chat template %s needs the token '%s', which %s does not have "
                           "(pick the template of this tokenizer's model with --template)",
                           chat_template_name(kind), marker, tokenizer_path(tok));
    }
    t->kind = kind;
    t->begin_text = ids[0];
    t->turn_start = ids[1];
    t->turn_end = ids[2];
    t->header_end = ids[3];
    return 0;
}

/* A growing id + mask buffer. */
typedef struct token_buf {
    int32_t *ids;
    uint8_t *mask;
    size_t n, cap;
} token_buf;

static int buf_reserve(token_buf *b, size_t more) {
    if (b->n + more <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + more) cap *= 2;
    int32_t *ids = realloc(b->ids, cap * sizeof *ids);
    if (!ids) return -1;
    b->ids = ids;
    uint8_t *mask = realloc(b->mask, cap);
    if (!mask) return -1;
    b->mask = mask;
    b->cap = cap;
    return 0;
}

static int push_id(token_buf *b, int32_t id, uint8_t loss, ct_error *err) {
    if (buf_reserve(b, 1)) return ct_fail(err, "out of memory");
    b->ids[b->n] = id;
    b->mask[b->n++] = loss;
    return 0;
}

static int push_text(token_buf *b, const tokenizer *tok, const char *text, uint8_t loss,
                     ct_error *err) {
    int32_t *ids = NULL;
    size_t n = 0;
    if (tokenizer_encode(tok, text, strlen(text), false, &ids, &n, err)) return -1;
    int rc = buf_reserve(b, n) ? ct_fail(err, "out of memory") : 0;
    for (size_t i = 0; !rc && i < n; i++) {
        b->ids[b->n] = ids[i];
        b->mask[b->n++] = loss;
    }
    free(ids);
    return rc;
}

/* A turn's opening: the start marker and the role's header ("{role}\n" / "{role}<|end_header_id|>\n\n"). */
static int push_header(token_buf *b, const chat_template *t, const tokenizer *tok, const char *role, uint8_t loss,
                       ct_error *err) {
    int rc = push_id(b, t->turn_start, loss, err);
    if (!rc && t->kind == CHAT_TEMPLATE_LLAMA3) {
        rc = push_text(b, tok, role, loss, err);
        if (!rc) rc = push_id(b, t->header_end, loss, err);
        if (!rc) rc = push_text(b, tok, "\n\n", loss, err);
    } else if (!rc) {
        size_t len = strlen(role);
        char *header = malloc(len + 2);
        if (!header) return ct_fail(err, "out of memory");
        memcpy(header, role, len);
        memcpy(header + len, "\n", 2);
        rc = push_text(b, tok, header, loss, err);
        free(header);
    }
    return rc;
}

/* Renders msgs (and, with generation_prompt, the header of an assistant turn to come). */
static int encode(const chat_template *t, const tokenizer *tok, const chat_message *msgs, int n_msgs,
                  bool train_on_inputs, bool generation_prompt, int32_t **ids, uint8_t **mask, size_t *n_ids,
                  ct_error *err) {
    *ids = NULL;
    *mask = NULL;
    *n_ids = 0;
    if (n_msgs <= 0) return ct_fail(err, "\"messages\" is empty");
    token_buf b = {0};
    int rc = 0;
    const bool llama3 = t->kind == CHAT_TEMPLATE_LLAMA3;
    const uint8_t header_loss = train_on_inputs;
    if (llama3) rc = push_id(&b, t->begin_text, 0, err);
    for (int i = 0; !rc && i < n_msgs; i++) {
        uint8_t loss = train_on_inputs || !strcmp(msgs[i].role, "assistant");
        rc = push_header(&b, t, tok, msgs[i].role, header_loss, err);
        if (!rc) rc = push_text(&b, tok, msgs[i].content, loss, err);
        if (!rc) rc = push_id(&b, t->turn_end, loss, err);
        if (!rc && !llama3) rc = push_text(&b, tok, "\n", header_loss, err);
        if (rc) ct_error_prefix(err, "messages[%d]", i);
    }
    if (!rc && generation_prompt) rc = push_header(&b, t, tok, "assistant", 0, err);
    if (!rc && b.n) b.mask[0] = 0; /* nothing predicts the first token */
    if (rc) {
        free(b.ids);
        free(b.mask);
        return -1;
    }
    *ids = b.ids;
    *mask = b.mask;
    *n_ids = b.n;
    return 0;
}

int chat_template_encode(const chat_template *t, const tokenizer *tok, const chat_message *msgs,
                         int n_msgs, bool train_on_inputs, int32_t **ids, uint8_t **mask,
                         size_t *n_ids, ct_error *err) {
    return encode(t, tok, msgs, n_msgs, train_on_inputs, false, ids, mask, n_ids, err);
}

int chat_template_prompt(const chat_template *t, const tokenizer *tok, const chat_message *msgs, int n_msgs,
                         int32_t **ids, size_t *n_ids, ct_error *err) {
    uint8_t *mask = NULL;
    int rc = encode(t, tok, msgs, n_msgs, false, true, ids, &mask, n_ids, err);
    free(mask);
    return rc;
}

int chat_messages_parse(const cJSON *messages, chat_message **msgs, int *n_msgs, ct_error *err) {
    *msgs = NULL;
    *n_msgs = 0;
    if (!messages) return ct_fail(err, "missing \"messages\"");
    if (!cJSON_IsArray(messages) || !messages->child) return ct_fail(err, "\"messages\" must be a non-empty array");
    *msgs = calloc((size_t)cJSON_GetArraySize(messages), sizeof **msgs);
    if (!*msgs) return ct_fail(err, "out of memory");
    int i = 0;
    for (const cJSON *m = messages->child; m; m = m->next, i++) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!cJSON_IsObject(m) || !cJSON_IsString(role) || !cJSON_IsString(content))
            return ct_fail(err, "messages[%d]: expected {\"role\": string, \"content\": string}", i);
        (*msgs)[i].role = strdup(role->valuestring);
        (*msgs)[i].content = strdup(content->valuestring);
        *n_msgs = i + 1;
        if (!(*msgs)[i].role || !(*msgs)[i].content) return ct_fail(err, "out of memory");
    }
    return 0;
}

void chat_messages_free(chat_message *msgs, int n_msgs) {
    for (int i = 0; i < n_msgs; i++) {
        free((char *)msgs[i].role);
        free((char *)msgs[i].content);
    }
    free(msgs);
}

int chat_template_resolve(const char *name, const char *model_dir, const tokenizer *tok, chat_template *t,
                          bool *have, ct_error *err) {
    chat_template_kind kind = CHAT_TEMPLATE_CHATML;
    *have = false;
    if (name) {
        if (chat_template_parse(name, &kind, err) || chat_template_init(t, kind, tok, err))
            return ct_error_prefix(err, "--template");
        *have = true;
        return 0;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", model_dir);
    cJSON *tcfg = NULL;
    ct_error ignored; /* an absent or unreadable file: no template from it */
    if (jsonfile_read(path, &tcfg, &ignored)) tcfg = NULL;
    const cJSON *jinja = cJSON_GetObjectItemCaseSensitive(tcfg, "chat_template");
    if (cJSON_IsString(jinja) && chat_template_detect(jinja->valuestring, &kind) == 0 &&
        chat_template_init(t, kind, tok, &ignored) == 0)
        *have = true;
    cJSON_Delete(tcfg);
    return 0;
}
