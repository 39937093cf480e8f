/* prep_internal: the parts of `ctune prep` shared by its files: one input line as a job —
 * parsed, then tokenized into a document (prep_jobs.c) —, a rank's chunk of documents packed
 * and moved to rank 0 (prep_exchange.c), and the rounds that read, share out, tokenize and
 * write the input (prep_rounds.c); cmd_prep.c has the command line and the setup.
 * Not a public interface: only the prep command uses it. Does not own the dataset format
 * (data.h), the tokenizer (tokenizer.h) or the chat templates (chat_template.h). */
#ifndef CTUNE_PREP_INTERNAL_H
#define CTUNE_PREP_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "train/chat_template.h"
#include "train/data.h"
#include "train/dist.h"
#include "train/error.h"
#include "train/tokenizer.h"

typedef enum { FORMAT_AUTO, FORMAT_TEXT, FORMAT_PROMPT_COMPLETION, FORMAT_CHAT } prep_format;

typedef struct special_ids { int bos, eos, pad; } special_ids;

/* One non-blank input line. After parsing it holds the fields (or rc = -1 and err); after
 * encoding, the document (ids, mask, n) or rc = -1 and err. */
typedef struct prep_job {
    long line;               /* 1-based line number in the whole input */
    char *first, *second;    /* text, or prompt + completion */
    chat_message *messages;  /* a chat (strings owned by the job) */
    int n_messages;
    int32_t *ids;
    uint8_t *mask;
    size_t n;
    int rc;
    ct_error err;
} prep_job;

/* Frees what the job owns and zeroes it. */
void prep_job_clear(prep_job *j);

/* Parses one line (job->line must be set: line 1 may start with a UTF-8 BOM) into the job;
 * returns 1 for a blank line, -1 for a malformed one (job->err says why, with a column). */
int prep_parse_line(char *line, size_t len, prep_format format, prep_job *job);

/* Tokenizes a parsed job into its document (docs/data.md, "What ctune prep puts in a
 * document"); tmpl may be NULL (then a chat line is malformed). Thread-safe: the tokenizer
 * and template are only read. */
int prep_encode(const tokenizer *tok, const special_ids *sp, const chat_template *tmpl,
                bool train_on_inputs, prep_job *job);

/* A chunk of a rank's jobs in line order, packed into one buffer: what travels to rank 0 and
 * what rank 0 writes from. Layout (native byte order; the ranks of one job run one binary on
 * one architecture), per job, each entry starting at a multiple of 8 bytes: the header
 * {int64 line, int64 n_tokens, int32 rc, uint32 msg_len}, then for rc != 0 the error message
 * (msg_len bytes, no NUL), else n_tokens int32 ids and n_tokens mask bytes. */
typedef struct prep_chunk {
    char *data;
    size_t bytes;
} prep_chunk;

/* One entry of a chunk; msg or ids/mask point into the chunk. */
typedef struct prep_entry {
    long line;
    int rc;
    const char *msg;         /* rc != 0: msg_len bytes, not NUL-terminated */
    size_t msg_len;
    const int32_t *ids;      /* rc == 0: the document */
    const uint8_t *mask;
    size_t n;
} prep_entry;

int prep_chunk_pack(const prep_job *jobs, int n, prep_chunk *out, ct_error *err);
/* Reads the entry at *offset and moves past it: 1 = an entry, 0 = the end, -1 = a corrupt
 * chunk (every length is checked against the buffer). */
int prep_chunk_next(const prep_chunk *c, size_t *offset, prep_entry *e, ct_error *err);
void prep_chunk_free(prep_chunk *c);

/* Rank r > 0 sends its chunk to rank 0; chunk NULL sends a marker that this rank failed
 * (its error travels with the agreement that ends the round), so that rank 0 never waits for
 * a chunk that will not come. Must be matched by prep_recv_chunk on rank 0. */
int prep_send_chunk(const dist *d, const prep_chunk *chunk, ct_error *err);

/* Rank 0 receives rank `from`'s chunk; *peer_failed tells that the rank sent the marker (the
 * chunk is then empty). */
int prep_recv_chunk(const dist *d, int from, prep_chunk *chunk, bool *peer_failed, ct_error *err);

/* ---- the run (prep_rounds.c); the options come from cmd_prep.c ---- */

typedef struct prep_options {
    const char *tokenizer_arg, *input, *output, *synthetic, *split, *template_name, *val_output;
    double val_ratio;
    long long val_seed;
    prep_format format;
    bool have_bos, have_eos, have_pad, skip_bad, train_on_inputs;
    long long bos_id, eos_id, pad_id, examples, digits, seed, threads;
} prep_options;

typedef struct prep_stats {
    long documents, skipped, val_documents;
    long long tokens, val_tokens;
    long lines;              /* lines read, blank ones included */
    bool line_error;         /* the failure was a bad input line (--skip-bad would skip it) */
} prep_stats;

/* What every rank needs to turn its chunks into documents, and what rank 0 writes them to. */
typedef struct prep_run {
    const prep_options *o;
    const tokenizer *tok;
    const special_ids *sp;
    const chat_template *tmpl;
    int threads;
    dataset_writer *w, *val_w;  /* rank 0 only */
    prep_stats st;              /* rank 0: counts over all ranks */
    bool progress;              /* rank 0 with stderr on a terminal: a progress line */
    bool progress_shown;
    double progress_at;
    struct timespec t0;
} prep_run;

/* Tokenizes the input file into o->output (and o->val_output) on the ranks of d: each rank
 * tokenizes its share of the lines, rank 0 writes everything in line order. Stdin and pipes
 * reach rank 0 only: it then works alone. Returns this rank's status; the caller agrees. */
int prep_input(prep_run *run, const dist *d, const dataset_tokenizer_info *info, ct_error *err);

/* dist_agree, except that a rank that failed itself keeps its own message: rank 0 then prints
 * "INPUT:LINE: ..." rather than "rank 0: INPUT:LINE: ...". */
int prep_agree(const dist *d, int status, ct_error *err);

double prep_seconds_since(const struct timespec *t0);

#endif
