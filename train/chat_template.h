/* chat_template: the built-in chat templates of `ctune prep` ({"messages": [...]} lines) —
 * chatml and llama3 — rendered straight to token ids with a per-token loss mask.
 * Exact strings (docs/data.md):
 *   chatml: per message "<|im_start|>{role}\n{content}<|im_end|>\n"
 *   llama3: "<|begin_of_text|>", then per message
 *           "<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>"
 * The markers must be single tokens of the tokenizer (chat_template_init checks). The text
 * between markers is tokenized in two pieces — the header ("{role}\n" / "\n\n") and the
 * content — so the loss mask can start exactly at the content.
 * Does not own: reading JSON files and lines (prep_jobs.c, cmd_generate.c; only the
 * "messages" array's shape is checked here), the tokenizer (tokenizer.h). */
#ifndef CTUNE_CHAT_TEMPLATE_H
#define CTUNE_CHAT_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "train/error.h"
#include "train/tokenizer.h"

typedef enum { CHAT_TEMPLATE_CHATML, CHAT_TEMPLATE_LLAMA3 } chat_template_kind;

typedef struct chat_template {
    chat_template_kind kind;
    int32_t begin_text;              /* llama3 <|begin_of_text|>; -1 for chatml */
    int32_t turn_start, turn_end;    /* <|im_start|> <|im_end|> / <|start_header_id|> <|eot_id|> */
    int32_t header_end;              /* llama3 <|end_header_id|>; -1 for chatml */
} chat_template;

typedef struct chat_message {
    const char *role;
    const char *content;
} chat_message;

/* A cJSON "messages" array ([{"role": R, "content": C}, ...], non-empty) as malloc'd
 * messages with copied strings (chat_messages_free them, also after a failure: *n_msgs says
 * how many were copied). Errors name the offending index. */
struct cJSON;
int chat_messages_parse(const struct cJSON *messages, chat_message **msgs, int *n_msgs, ct_error *err);
void chat_messages_free(chat_message *msgs, int n_msgs);

/* "chatml" or "llama3"; anything else fails naming the choices. */
int chat_template_parse(const char *name, chat_template_kind *kind, ct_error *err);
const char *chat_template_name(chat_template_kind kind);
/* Guesses the template from a tokenizer_config.json "chat_template" string: 0 and *kind
 * when it uses one of the built-in markers, -1 otherwise. */
int chat_template_detect(const char *jinja, chat_template_kind *kind);
/* Looks the markers up in the tokenizer; a missing one is an error naming it. */
int chat_template_init(chat_template *t, chat_template_kind kind, const tokenizer *tok,
                       ct_error *err);

/* Renders a conversation. The loss mask is 1 on each assistant message's content and its
 * end marker (<|im_end|> / <|eot_id|>) and 0 elsewhere, or 1 on every token after the first
 * when train_on_inputs. *ids and *mask are malloc'd (caller frees). Fails on an empty
 * conversation or a message the tokenizer refuses (error names the message index). */
int chat_template_encode(const chat_template *t, const tokenizer *tok, const chat_message *msgs,
                         int n_msgs, bool train_on_inputs, int32_t **ids, uint8_t **mask,
                         size_t *n_ids, ct_error *err);

/* The prompt a chat model answers: msgs rendered as chat_template_encode does, then the
 * header of the assistant's turn (transformers' add_generation_prompt=True). *ids malloc'd. */
int chat_template_prompt(const chat_template *t, const tokenizer *tok, const chat_message *msgs, int n_msgs,
                         int32_t **ids, size_t *n_ids, ct_error *err);

/* The template named (name: chatml | llama3, errors prefixed "--template"), else the built-in
 * one model_dir/tokenizer_config.json's chat_template uses, when its markers are tokens of
 * tok; *have false when there is none (not an error). */
int chat_template_resolve(const char *name, const char *model_dir, const tokenizer *tok, chat_template *t,
                          bool *have, ct_error *err);

#endif
