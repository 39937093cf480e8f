/* tok_bench: ctune's side of scripts/bench_tokenizer.sh. Encodes every line of a corpus
 * (add_special = false, as tokenizers' encode_batch(add_special_tokens=False)) with
 * THREADS OpenMP threads over lines (tokenizer_encode only reads the tokenizer), takes the
 * best of REPEATS timed passes, writes the ids of the last pass to OUT (per line: int32
 * count, then the int32 ids) and prints one JSON line: lines, bytes, tokens, seconds.
 *
 *   tok_bench TOKENIZER_JSON CORPUS THREADS REPEATS OUT_IDS */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/fsutil.h"
#include "train/tokenizer.h"

typedef struct line_ids {
    int32_t *ids;
    size_t n;
} line_ids;

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: tok_bench TOKENIZER_JSON CORPUS THREADS REPEATS OUT_IDS\n");
        return 2;
    }
    int threads = atoi(argv[3]), repeats = atoi(argv[4]);
    if (threads < 1 || repeats < 1) {
        fprintf(stderr, "tok_bench: THREADS and REPEATS must be positive\n");
        return 2;
    }
    ct_error err = {{0}};
    tokenizer *tok = NULL;
    char *text = NULL;
    size_t size = 0;
    if (tokenizer_load(&tok, argv[1], &err) != 0 || read_file(argv[2], &text, &size, &err) != 0) {
        fprintf(stderr, "tok_bench: %s\n", err.msg);
        tokenizer_free(tok);
        return 1;
    }
    /* Lines are split at '\n' (not included), as the Python side's split("\n"). */
    size_t n_lines = 1;
    for (size_t i = 0; i < size; i++) n_lines += text[i] == '\n';
    size_t *start = malloc(n_lines * sizeof *start), *len = malloc(n_lines * sizeof *len);
    line_ids *out = calloc(n_lines, sizeof *out);
    if (!start || !len || !out) {
        fprintf(stderr, "tok_bench: out of memory\n");
        return 1;
    }
    size_t k = 0, from = 0;
    for (size_t i = 0; i <= size; i++) {
        if (i == size || text[i] == '\n') {
            start[k] = from;
            len[k++] = i - from;
            from = i + 1;
        }
    }
    double best = 1e30;
    size_t tokens = 0;
    int failed = 0;
    for (int r = 0; r < repeats && !failed; r++) {
        for (size_t i = 0; i < n_lines; i++) {
            free(out[i].ids);
            out[i].ids = NULL;
        }
        double t0 = omp_get_wtime();
#pragma omp parallel for num_threads(threads) schedule(dynamic, 64) reduction(|| : failed)
        for (size_t i = 0; i < n_lines; i++) {
            ct_error line_err = {{0}};
            if (tokenizer_encode(tok, text + start[i], len[i], false, &out[i].ids, &out[i].n,
                                 &line_err) != 0) {
                fprintf(stderr, "tok_bench: line %zu: %s\n", i + 1, line_err.msg);
                failed = 1;
            }
        }
        double seconds = omp_get_wtime() - t0;
        if (seconds < best) best = seconds;
    }
    FILE *f = failed ? NULL : fopen(argv[5], "wb");
    if (!failed && !f) {
        fprintf(stderr, "tok_bench: cannot write %s\n", argv[5]);
        failed = 1;
    }
    for (size_t i = 0; f && i < n_lines; i++) {
        int32_t n = (int32_t)out[i].n;
        fwrite(&n, sizeof n, 1, f);
        fwrite(out[i].ids, sizeof *out[i].ids, out[i].n, f);
        tokens += out[i].n;
    }
    if (f && fclose(f) != 0) failed = 1;
    if (!failed)
        printf("{\"lines\": %zu, \"bytes\": %zu, \"tokens\": %zu, \"seconds\": %.6f}\n", n_lines,
               size, tokens, best);
    for (size_t i = 0; i < n_lines; i++) free(out[i].ids);
    free(out);
    free(start);
    free(len);
    free(text);
    tokenizer_free(tok);
    return failed ? 1 : 0;
}
