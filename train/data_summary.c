/* data_summary: the human-readable report of a token dataset (`ctune prep` prints it at the
 * end; `ctune inspect` can show it for any .h5 file). */
#include <stdio.h>

#include "train/data.h"

#define HISTOGRAM_BUCKETS 24 /* lengths 1, 2-3, 4-7, ... , >= 2^23 */

static int bucket_of(int64_t len) {
    int b = 0;
    while (b < HISTOGRAM_BUCKETS - 1 && len >= ((int64_t)2 << b)) b++;
    return b;
}

int dataset_print_summary(const char *path, FILE *out, ct_error *err) {
    dataset ds;
    if (dataset_open(&ds, path, err)) return -1;
    int64_t loss_tokens = 0, min_len = INT64_MAX, max_len = 0, empty = 0;
    int64_t counts[HISTOGRAM_BUCKETS] = {0};
    for (int64_t i = 0; i < ds.n_tokens; i++) loss_tokens += ds.loss_mask[i];
    for (int64_t d = 0; d < ds.n_docs; d++) {
        int64_t len = ds.doc_offsets[d + 1] - ds.doc_offsets[d];
        if (len < min_len) min_len = len;
        if (len > max_len) max_len = len;
        if (len == 0) empty++;
        else counts[bucket_of(len)]++;
    }
    const dataset_tokenizer_info *t = &ds.tokenizer;
    fprintf(out, "dataset    %s\n", path);
    fprintf(out, "documents  %lld\n", (long long)ds.n_docs);
    fprintf(out, "tokens     %lld (%lld in the loss, %.1f%%)\n", (long long)ds.n_tokens,
            (long long)loss_tokens, ds.n_tokens ? 100.0 * (double)loss_tokens / (double)ds.n_tokens : 0.0);
    fprintf(out, "doc length min %lld, mean %.1f, max %lld tokens\n", (long long)min_len,
            (double)ds.n_tokens / (double)ds.n_docs, (long long)max_len);
    fprintf(out, "tokenizer  %s (fingerprint %s, vocab %d, bos %d, eos %d, pad %d)\n", t->name,
            t->fingerprint, t->vocab_size, t->bos_id, t->eos_id, t->pad_id);
    int64_t peak = empty;
    for (int b = 0; b < HISTOGRAM_BUCKETS; b++)
        if (counts[b] > peak) peak = counts[b];
    fprintf(out, "length histogram (tokens: documents)\n");
    if (empty) fprintf(out, "  %17s: %lld\n", "0", (long long)empty);
    for (int b = 0; b < HISTOGRAM_BUCKETS; b++) {
        if (!counts[b]) continue;
        char range[48];
        long long lo = (long long)1 << b, hi = ((long long)2 << b) - 1;
        if (b == HISTOGRAM_BUCKETS - 1) snprintf(range, sizeof range, ">= %lld", lo);
        else if (lo == hi) snprintf(range, sizeof range, "%lld", lo);
        else snprintf(range, sizeof range, "%lld-%lld", lo, hi);
        int bar = (int)(40 * counts[b] / peak);
        fprintf(out, "  %17s: %-40.*s %lld\n", range, bar > 0 ? bar : 1,
                "########################################", (long long)counts[b]);
    }
    dataset_close(&ds);
    return 0;
}
