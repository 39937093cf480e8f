/* test_prep_split: `ctune prep --val-ratio`: the keyed hash against an independent
 * computation, the split's size, determinism, duplicates on one side, and the argument checks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/check.h"
#include "train/cli.h"
#include "train/data.h"
#include "train/tokenizer.h"

static char tmpdir[] = "/tmp/ctune_test_split_XXXXXX";

static void path_in(char *buf, size_t size, const char *name) {
    snprintf(buf, size, "%s/%s", tmpdir, name);
}

static bool same_bytes(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    bool same = fa && fb;
    while (same) {
        int ca = fgetc(fa), cb = fgetc(fb);
        if (ca != cb) same = false;
        if (ca == EOF || cb == EOF) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return same;
}

static void test_hash(void) {
    /* u = 0.4486992964931915 for these ids and seed 7, computed by a separate Python
     * implementation of FNV-1a-64 + splitmix64 (see the header's definition). */
    const int32_t ids[5] = {256, 97, 98, 257, -1};
    CHECK(data_in_validation(ids, 5, 7, 0.4487));
    CHECK(!data_in_validation(ids, 5, 7, 0.4486));
    CHECK(!data_in_validation(ids, 5, 7, 0.0));
}

/* Tokens in document d. */
static int64_t doc_len(const dataset *ds, int64_t d) { return ds->doc_offsets[d + 1] - ds->doc_offsets[d]; }

static void test_prep_split(void) {
    char input[1100], train[1100], val[1100], train2[1100], val2[1100], val3[1100];
    path_in(input, sizeof input, "in.jsonl");
    path_in(train, sizeof train, "train.h5");
    path_in(val, sizeof val, "val.h5");
    path_in(train2, sizeof train2, "train2.h5");
    path_in(val2, sizeof val2, "val2.h5");
    path_in(val3, sizeof val3, "val3.h5");
    FILE *f = fopen(input, "w");
    for (int i = 0; i < 400; i++) fprintf(f, "{\"text\": \"document number %d\"}\n", i);
    for (int i = 0; i < 20; i++) fprintf(f, "{\"text\": \"the same line\"}\n");
    fclose(f);

    char *argv[] = {"prep", "--tokenizer", tmpdir, "--val-ratio", "0.25", "--val-seed", "7",
                    "--val-output", val, input, "-o", train, NULL};
    CHECK(cmd_prep(12, argv) == 0);
    dataset t, v;
    ct_error err = {{0}};
    CHECK_MSG(dataset_open(&t, train, &err) == 0, "%s", err.msg);
    CHECK_MSG(dataset_open(&v, val, &err) == 0, "%s", err.msg);
    CHECK(t.n_docs + v.n_docs == 420);
    CHECK_MSG(v.n_docs > 60 && v.n_docs < 160, "validation has %lld of 420 documents", (long long)v.n_docs);
    /* Every document is on the side its hash says; the 20 duplicates all on one side. */
    int wrong = 0, dup_train = 0, dup_val = 0;
    const dataset *sets[2] = {&t, &v};
    for (int s = 0; s < 2; s++)
        for (int64_t d = 0; d < sets[s]->n_docs; d++) {
            const int32_t *ids = sets[s]->tokens + sets[s]->doc_offsets[d];
            wrong += data_in_validation(ids, (size_t)doc_len(sets[s], d), 7, 0.25) != (s == 1);
            bool dup = doc_len(sets[s], d) == 15 && ids[1] == 't' && ids[5] == 's'; /* bos "the same line" eos */
            if (dup) s ? dup_val++ : dup_train++;
        }
    CHECK(wrong == 0);
    CHECK_MSG((dup_train == 20 && dup_val == 0) || (dup_train == 0 && dup_val == 20),
              "duplicates split %d / %d", dup_train, dup_val);
    dataset_close(&t);
    dataset_close(&v);

    /* Deterministic: the same arguments give the same bytes; another seed another split. */
    argv[8] = val2;
    argv[11] = train2;
    CHECK(cmd_prep(12, argv) == 0);
    CHECK(same_bytes(val, val2) && same_bytes(train, train2));
    argv[6] = "8";
    argv[8] = val3;
    CHECK(cmd_prep(12, argv) == 0);
    CHECK(!same_bytes(val, val3));

    /* --val-ratio without --val-output (and the reverse) is a usage error. */
    char *no_output[] = {"prep", "--tokenizer", tmpdir, "--val-ratio", "0.1", input, "-o", train, NULL};
    CHECK(cmd_prep(8, no_output) == 2);
    char *bad_ratio[] = {"prep", "--tokenizer", tmpdir, "--val-ratio", "1.5", "--val-output", val,
                         input, "-o", train, NULL};
    CHECK(cmd_prep(10, bad_ratio) == 2);
    /* A split that leaves one side empty fails and writes neither file. */
    remove(train);
    remove(val);
    char *tiny[] = {"prep", "--tokenizer", tmpdir, "--val-ratio", "0.000001", "--val-output", val,
                    input, "-o", train, NULL};
    CHECK(cmd_prep(10, tiny) == 1);
    CHECK(access(train, F_OK) != 0 && access(val, F_OK) != 0);
}

int main(void) {
    CHECK(mkdtemp(tmpdir) != NULL);
    ct_error err = {{0}};
    CHECK_MSG(tokenizer_write_byte_level(tmpdir, "<s>", "</s>", NULL, &err) == 0, "%s", err.msg);
    test_hash();
    test_prep_split();
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return check_summary("test_prep_split");
}
