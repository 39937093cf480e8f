/* prep_jobs: one line of `ctune prep` input, parsed (JSON -> fields) and tokenized into a
 * document with its loss mask. The document layouts are in docs/data.md. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "train/jsonfile.h"
#include "train/prep_internal.h"

void prep_job_clear(prep_job *j) {
    chat_messages_free(j->messages, j->n_messages);
    free(j->first);
    free(j->second);
    free(j->ids);
    free(j->mask);
    memset(j, 0, sizeof *j);
}

/* Parses one line into the job; 1 = blank line, -1 = malformed (job->err says why). */
int prep_parse_line(char *line, size_t len, prep_format format, prep_job *job) {
    cJSON *root = NULL;
    const int parsed = jsonfile_parse_line(line, len, job->line == 1, &root, &job->err);
    if (parsed) return parsed;
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
        rc = chat_messages_parse(messages, &job->messages, &job->n_messages, &job->err);
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

int prep_encode(const tokenizer *tok, const special_ids *sp, const chat_template *tmpl,
                bool train_on_inputs, prep_job *job) {
    return job->messages ? encode_chat(tok, sp, tmpl, train_on_inputs, job) : encode_job(tok, sp, job);
}
