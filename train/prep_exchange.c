/* prep_exchange: packing a rank's tokenized chunk of lines and moving it to rank 0, which
 * writes every document in line order (layout in prep_internal.h).
 *
 * The transfer is MPI point-to-point on purpose, not a dist.h collective: dist offers sums,
 * broadcasts and float gathers, and prep is the only caller that needs a many-to-one
 * transfer of variable-size byte blobs. If a second user appears, it belongs in dist as a
 * byte gather. A transfer is one int64 length (-1: "this rank failed, nothing follows"), then
 * the chunk in slices of at most 1 GiB (MPI counts are int). */
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "train/prep_internal.h"

#define CHUNK_TAG 0x7072 /* "pr" */
#define SLICE_BYTES ((size_t)1 << 30)

typedef struct wire_job {
    int64_t line;
    int64_t n_tokens;
    int32_t rc;
    uint32_t msg_len;
} wire_job;

/* Entries start at multiples of 8, so ids read straight from the buffer are aligned. */
static size_t padded(size_t bytes) { return (bytes + 7) & ~(size_t)7; }

static size_t entry_payload(const wire_job *w) {
    return w->rc ? w->msg_len : (size_t)w->n_tokens * (sizeof(int32_t) + 1);
}

int prep_chunk_pack(const prep_job *jobs, int n, prep_chunk *out, ct_error *err) {
    out->data = NULL;
    out->bytes = 0;
    wire_job w;
    size_t bytes = 0;
    for (int i = 0; i < n; i++) {
        w.rc = jobs[i].rc;
        w.msg_len = jobs[i].rc ? (uint32_t)strlen(jobs[i].err.msg) : 0;
        w.n_tokens = jobs[i].rc ? 0 : (int64_t)jobs[i].n;
        bytes += padded(sizeof w + entry_payload(&w));
    }
    if (bytes == 0) return 0;
    char *p = calloc(1, bytes); /* zeroed padding: the bytes sent are all defined */
    if (!p) return ct_fail(err, "out of memory for a chunk of %zu bytes", bytes);
    out->data = p;
    out->bytes = bytes;
    for (int i = 0; i < n; i++) {
        const prep_job *j = &jobs[i];
        w = (wire_job){.line = j->line, .rc = j->rc};
        if (j->rc) w.msg_len = (uint32_t)strlen(j->err.msg);
        else w.n_tokens = (int64_t)j->n;
        memcpy(p, &w, sizeof w);
        char *q = p + sizeof w;
        if (j->rc) {
            memcpy(q, j->err.msg, w.msg_len);
        } else {
            memcpy(q, j->ids, j->n * sizeof(int32_t));
            memcpy(q + j->n * sizeof(int32_t), j->mask, j->n);
        }
        p += padded(sizeof w + entry_payload(&w));
    }
    return 0;
}

int prep_chunk_next(const prep_chunk *c, size_t *offset, prep_entry *e, ct_error *err) {
    if (*offset >= c->bytes) return 0;
    size_t left = c->bytes - *offset;
    wire_job w;
    if (left < sizeof w || *offset % 8) return ct_fail(err, "corrupt chunk: truncated at byte %zu", *offset);
    memcpy(&w, c->data + *offset, sizeof w);
    if (w.n_tokens < 0 || (uint64_t)w.n_tokens > (left - sizeof w) / 5 || (size_t)w.msg_len > left - sizeof w)
        return ct_fail(err, "corrupt chunk: entry at byte %zu (line %lld) overruns it", *offset,
                       (long long)w.line);
    const char *q = c->data + *offset + sizeof w;
    *e = (prep_entry){.line = (long)w.line, .rc = w.rc};
    if (w.rc) {
        e->msg = q;
        e->msg_len = w.msg_len;
    } else {
        e->n = (size_t)w.n_tokens;
        e->ids = (const int32_t *)(const void *)q;
        e->mask = (const uint8_t *)q + e->n * sizeof(int32_t);
    }
    size_t step = padded(sizeof w + entry_payload(&w));
    *offset += step < left ? step : left;
    return 1;
}

void prep_chunk_free(prep_chunk *c) {
    free(c->data);
    c->data = NULL;
    c->bytes = 0;
}

static int mpi_fail(int rc, const char *what, int peer, ct_error *err) {
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    return ct_fail(err, "MPI %s rank %d failed: %s", what, peer, text);
}

int prep_send_chunk(const dist *d, const prep_chunk *chunk, ct_error *err) {
    (void)d;
    int64_t header = chunk ? (int64_t)chunk->bytes : -1;
    int rc = MPI_Send(&header, 1, MPI_INT64_T, 0, CHUNK_TAG, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "send to", 0, err);
    for (size_t done = 0; chunk && done < chunk->bytes; done += SLICE_BYTES) {
        size_t count = chunk->bytes - done < SLICE_BYTES ? chunk->bytes - done : SLICE_BYTES;
        rc = MPI_Send(chunk->data + done, (int)count, MPI_BYTE, 0, CHUNK_TAG, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return mpi_fail(rc, "send to", 0, err);
    }
    return 0;
}

int prep_recv_chunk(const dist *d, int from, prep_chunk *chunk, bool *peer_failed, ct_error *err) {
    (void)d;
    chunk->data = NULL;
    chunk->bytes = 0;
    *peer_failed = false;
    int64_t header = 0;
    int rc = MPI_Recv(&header, 1, MPI_INT64_T, from, CHUNK_TAG, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "receive from", from, err);
    if (header <= 0) {
        *peer_failed = header < 0;
        return 0;
    }
    char *buf = malloc((size_t)header);
    int status = buf ? 0 : ct_fail(err, "out of memory for a chunk of %lld bytes from rank %d",
                                   (long long)header, from);
    for (size_t done = 0; done < (size_t)header; done += SLICE_BYTES) {
        size_t count = (size_t)header - done < SLICE_BYTES ? (size_t)header - done : SLICE_BYTES;
        /* Without a buffer the slice is still received (into nothing: MPI reports a truncation
         * and drops it), so the sender is not left blocked. */
        rc = MPI_Recv(buf ? buf + done : NULL, buf ? (int)count : 0, MPI_BYTE, from, CHUNK_TAG,
                      MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS && !status) status = mpi_fail(rc, "receive from", from, err);
    }
    if (status) {
        free(buf);
        return -1;
    }
    chunk->data = buf;
    chunk->bytes = (size_t)header;
    return 0;
}
