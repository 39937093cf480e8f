/* prep_rounds: the body of `ctune prep` on an input file. The input is cut into chunks of
 * consecutive lines; under mpirun the chunks of a round go to ranks 0, 1, ..., N-1 in turn.
 * Every rank reads the whole file (cheap next to tokenizing) but parses and tokenizes only its
 * own chunks, with its OpenMP threads; rank 0 receives the others' documents
 * (prep_exchange.c) and writes all of them in line order, during the next round. So the
 * output is the same bytes for any number of ranks and threads. Each round ends with an
 * agreement: a malformed line, found by rank 0 in line order, stops every rank. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "train/prep_internal.h"

/* A chunk ends after this many lines or once its lines reach this many bytes (rank 0 holds a
 * round of chunks, tokenized: about 5 x world x CHUNK_BYTES at most). */
#define CHUNK_LINES 2048
#define CHUNK_BYTES ((size_t)8 << 20)
#define MAX_REPORTED_SKIPS 10

double prep_seconds_since(const struct timespec *t0) {
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0->tv_nsec);
}

/* dist_agree, except that a rank that failed itself keeps its own message: rank 0 then prints
 * "INPUT:LINE: ..." rather than "rank 0: INPUT:LINE: ...". */
int prep_agree(const dist *d, int status, ct_error *err) {
    if (d->world_size == 1) return status ? -1 : 0;
    ct_error mine = *err;
    int rc = dist_agree(d, status, err);
    if (rc && status) *err = mine;
    return rc;
}

static void progress_clear(prep_run *run) {
    if (run->progress_shown) fprintf(stderr, "\r\033[K");
    run->progress_shown = false;
}

static void progress_update(prep_run *run) {
    double now = prep_seconds_since(&run->t0);
    if (!run->progress || now - run->progress_at < 0.5) return;
    run->progress_at = now;
    fprintf(stderr, "\r\033[Kctune prep: %ld lines, %ld documents, %lld tokens (%.0f tokens/s)",
            run->st.lines, run->st.documents, run->st.tokens, now > 0 ? (double)run->st.tokens / now : 0.0);
    run->progress_shown = true;
}

typedef struct line_reader {
    FILE *in;
    char *line;
    size_t cap;
    long line_no;
} line_reader;

/* Reads one round: world chunks of consecutive lines (chunk k for rank k), each ending after
 * CHUNK_LINES lines or CHUNK_BYTES bytes, so every rank draws the same boundaries from the
 * same bytes. Only this rank's chunk is parsed, into jobs[0..*n). */
static int read_round(line_reader *rd, const dist *d, prep_format format, prep_job *jobs, int *n,
                      bool *eof, const char *input, ct_error *err) {
    int chunk = 0, chunk_lines = 0;
    size_t chunk_bytes = 0;
    *n = 0;
    *eof = false;
    while (chunk < d->world_size) {
        ssize_t got = getline(&rd->line, &rd->cap, rd->in);
        if (got < 0) {
            *eof = true;
            break;
        }
        rd->line_no++;
        if (chunk == d->rank) {
            prep_job *j = &jobs[*n];
            j->line = rd->line_no;
            int parsed = prep_parse_line(rd->line, (size_t)got, format, j);
            if (parsed == 1) prep_job_clear(j);
            else j->rc = parsed, ++*n;
        }
        chunk_bytes += (size_t)got;
        if (++chunk_lines == CHUNK_LINES || chunk_bytes >= CHUNK_BYTES) chunk++, chunk_lines = 0, chunk_bytes = 0;
    }
    if (ferror(rd->in)) return ct_fail(err, "%s: read error after line %ld", input, rd->line_no);
    return 0;
}

/* Rank 0: one round's chunks (in rank order, which is line order) into the files; a
 * malformed line is skipped (--skip-bad) or ends the run. */
static int write_round(prep_run *run, const prep_chunk *chunks, int n_chunks, ct_error *err) {
    const prep_options *o = run->o;
    prep_stats *st = &run->st;
    for (int c = 0; c < n_chunks; c++) {
        size_t offset = 0;
        prep_entry e;
        int more;
        while ((more = prep_chunk_next(&chunks[c], &offset, &e, err)) == 1) {
            ct_error add_err;
            bool val = e.rc == 0 && run->val_w && data_in_validation(e.ids, e.n, (uint64_t)o->val_seed, o->val_ratio);
            if (e.rc == 0 && dataset_writer_add(val ? run->val_w : run->w, e.ids, e.mask, e.n, &add_err) == 0) {
                st->documents++;
                st->tokens += (long long)e.n;
                st->val_documents += val;
                st->val_tokens += val ? (long long)e.n : 0;
                continue;
            }
            const char *why = e.rc ? e.msg : add_err.msg;
            int why_len = e.rc ? (int)e.msg_len : (int)strlen(add_err.msg);
            if (!o->skip_bad) {
                st->line_error = true;
                return ct_fail(err, "%s:%ld: %.*s", o->input, e.line, why_len, why);
            }
            if (st->skipped++ < MAX_REPORTED_SKIPS) {
                progress_clear(run);
                fprintf(stderr, "ctune prep: skipping %s:%ld: %.*s\n", o->input, e.line, why_len, why);
            }
        }
        if (more < 0) return -1;
    }
    return 0;
}

/* Tokenizes this rank's chunk with the rank's threads. On rank 0 one of them first writes
 * the previous round (when `previous` is given), so writing overlaps tokenizing; the other
 * threads start on the chunk at once, and the writer joins them when done. */
static int tokenize_and_write(prep_run *run, prep_job *jobs, int n, const prep_chunk *previous,
                              int n_previous, ct_error *err) {
    int status = 0;
#pragma omp parallel num_threads(run->threads)
    {
#pragma omp single nowait
        if (previous) status = write_round(run, previous, n_previous, err);
#pragma omp for schedule(dynamic, 16) nowait
        for (int i = 0; i < n; i++)
            if (jobs[i].rc == 0)
                jobs[i].rc = prep_encode(run->tok, run->sp, run->tmpl, run->o->train_on_inputs, &jobs[i]);
    }
    return status;
}

static void clear_jobs(prep_job *jobs, int n) {
    for (int i = 0; i < n; i++) prep_job_clear(&jobs[i]);
}

static void free_chunks(prep_chunk *chunks, int n) {
    for (int i = 0; chunks && i < n; i++) prep_chunk_free(&chunks[i]);
}

/* Rounds until the end of the input or the first failure, agreed by every rank of d after
 * each round. A round's documents reach rank 0 at its end and are written during the next
 * round (or after the last), so a malformed line stops the ranks one round later. */
static int prep_rounds(prep_run *run, const dist *d, FILE *in, ct_error *err) {
    const int world = d->world_size;
    prep_job *jobs = calloc(CHUNK_LINES, sizeof *jobs);
    prep_chunk *round = d->rank == 0 ? calloc((size_t)world, sizeof *round) : NULL;
    bool have_round = false; /* rank 0: `round` holds chunks not written yet */
    line_reader rd = {.in = in};
    int status = prep_agree(d, jobs && (round || d->rank) ? 0 : ct_fail(err, "out of memory"), err);
    for (bool more = status == 0; more;) {
        int n = 0;
        bool eof = false;
        ct_error round_err = {{0}}, write_err = {{0}}, transfer_err = {{0}};
        int local = read_round(&rd, d, run->o->format, jobs, &n, &eof, run->o->input, &round_err);
        /* The previous round's lines come first: its failure is the one to report. */
        if (tokenize_and_write(run, jobs, n, have_round ? round : NULL, world, &write_err))
            local = -1, round_err = write_err;
        free_chunks(round, have_round ? world : 0);
        have_round = false;
        prep_chunk mine = {0};
        if (!local) local = prep_chunk_pack(jobs, n, &mine, &round_err);
        clear_jobs(jobs, n);
        if (d->rank == 0) {
            run->st.lines = rd.line_no;
            round[0] = mine;
            /* Every rank's chunk is received even after a failure, so none stays blocked. */
            for (int r = 1; r < world; r++) {
                bool peer_failed = false;
                if (prep_recv_chunk(d, r, &round[r], &peer_failed, &transfer_err) && !local)
                    local = -1, round_err = transfer_err;
            }
            have_round = true;
        } else {
            if (prep_send_chunk(d, local ? NULL : &mine, &transfer_err) && !local) local = -1, round_err = transfer_err;
            prep_chunk_free(&mine);
        }
        status = prep_agree(d, local, &round_err);
        if (status) *err = round_err;
        /* Rank 0's end of input decides for all (they read the same bytes anyway). */
        int go_on = !eof;
        if (!status) status = dist_broadcast(d, &go_on, sizeof go_on, 0, err);
        more = !status && go_on;
        if (d->rank == 0) progress_update(run);
    }
    if (!status && have_round) status = write_round(run, round, world, err);
    free_chunks(round, have_round ? world : 0);
    if (d->rank == 0) progress_clear(run);
    free(round);
    free(jobs);
    free(rd.line);
    return status;
}

/* Rank 0: the end-of-input checks, then both files or neither (a failed second finish
 * removes the first). */
static int close_outputs(prep_run *run, int status, ct_error *err) {
    const prep_options *o = run->o;
    const prep_stats *st = &run->st;
    if (!status && st->documents == 0)
        status = ct_fail(err, "%s: no documents (%ld lines, %ld skipped)", o->input, st->lines, st->skipped);
    if (!status && run->val_w && (st->val_documents == 0 || st->val_documents == st->documents))
        status = ct_fail(err, "%s: --val-ratio %g leaves the %s split empty (%ld documents)", o->input,
                         o->val_ratio, st->val_documents ? "training" : "validation", st->documents);
    if (status) {
        if (run->w) dataset_writer_abort(run->w);
        if (run->val_w) dataset_writer_abort(run->val_w);
    } else if (run->val_w && dataset_writer_finish(run->val_w, err)) {
        status = -1;
        dataset_writer_abort(run->w);
    } else if (dataset_writer_finish(run->w, err)) {
        status = -1;
        if (run->val_w) remove(o->val_output);
    }
    run->w = run->val_w = NULL;
    return status;
}

/* Tokenizes the input file into the dataset(s). Returns rank-local status: the caller agrees
 * over d. */
int prep_input(prep_run *run, const dist *d, const dataset_tokenizer_info *info, ct_error *err) {
    const prep_options *o = run->o;
    bool from_stdin = strcmp(o->input, "-") == 0;
    long long probe[2] = {0, 0}; /* on rank 0: a regular file?, its size */
    struct stat sb;
    if (d->rank == 0 && !from_stdin && stat(o->input, &sb) == 0 && S_ISREG(sb.st_mode))
        probe[0] = 1, probe[1] = (long long)sb.st_size;
    if (dist_broadcast(d, probe, sizeof probe, 0, err)) return -1;
    dist alone = {.rank = 0, .world_size = 1, .local_rank = 0, .local_size = 1};
    const dist *share = d;
    if (d->world_size > 1 && !probe[0]) {
        /* mpirun forwards standard input to rank 0 only; a pipe cannot be read twice. */
        if (d->rank != 0) return 0;
        share = &alone;
    }
    FILE *in = from_stdin ? stdin : fopen(o->input, "rb");
    int status = in ? 0 : ct_fail(err, "%s: cannot open: %s", o->input, strerror(errno));
    if (!status && share->world_size > 1 && fstat(fileno(in), &sb))
        status = ct_fail(err, "%s: cannot stat: %s", o->input, strerror(errno));
    else if (!status && share->world_size > 1 && (long long)sb.st_size != probe[1])
        status = ct_fail(err, "%s: %lld bytes on this rank, %lld on rank 0 (every rank reads the same file)",
                         o->input, (long long)sb.st_size, probe[1]);
    if (!status && share->rank == 0) status = dataset_writer_open(&run->w, o->output, info, err);
    if (!status && share->rank == 0 && o->val_output) status = dataset_writer_open(&run->val_w, o->val_output, info, err);
    status = prep_agree(share, status, err);
    if (!status) status = prep_rounds(run, share, in, err);
    if (share->rank == 0) status = close_outputs(run, status, err);
    if (in && !from_stdin) fclose(in);
    return status;
}
