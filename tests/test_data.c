/* test_data: the HDF5 dataset (round trip, every validation error on files crafted with the
 * HDF5 API directly), the sampler (a keyed permutation), batch assembly, the synthetic tasks
 * (answers re-computed here, splits disjoint) and `ctune prep` on good and malformed JSONL. */
#include <hdf5.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/check.h"
#include "train/cli.h"
#include "train/data.h"
#include "train/synth.h"
#include "train/tokenizer.h"

static char tmpdir[] = "/tmp/ctune_test_data_XXXXXX";

static const char *tmp_path(char *buf, size_t size, const char *name) {
    snprintf(buf, size, "%s/%s", tmpdir, name);
    return buf;
}

static bool exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static uint64_t rng_state = 12345;
static uint32_t next_rand(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

/* ------------------------------------------------------------ round trip */

static void test_round_trip(void) {
    char path[1100], tmp[1200];
    tmp_path(path, sizeof path, "round.h5");
    dataset_tokenizer_info info = {.fingerprint = "0123456789abcdef", .name = "test/tokenizer.json",
                                   .vocab_size = 1000, .bos_id = 1, .eos_id = 2, .pad_id = -1};
    dataset_writer *w = NULL;
    ct_error err = {{0}};
    CHECK(dataset_writer_open(&w, path, &info, &err) == 0);
    /* Documents of 5, 0, 70000 (crosses a 65536-token chunk) and 3 tokens. */
    const size_t lens[4] = {5, 0, 70000, 3};
    size_t total = 0;
    for (int d = 0; d < 4; d++) total += lens[d];
    int32_t *ids = malloc(total * sizeof *ids);
    uint8_t *mask = malloc(total);
    for (size_t i = 0; i < total; i++) {
        ids[i] = (int32_t)(next_rand() % 1000);
        mask[i] = (uint8_t)(next_rand() & 1);
    }
    size_t at = 0;
    for (int d = 0; d < 4; d++) {
        CHECK(dataset_writer_add(w, ids + at, mask + at, lens[d], &err) == 0);
        at += lens[d];
        CHECK(!exists(path)); /* nothing under the final name before finish */
    }
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(exists(tmp));
    CHECK_MSG(dataset_writer_finish(w, &err) == 0, "%s", err.msg);
    CHECK(exists(path) && !exists(tmp));

    dataset ds;
    CHECK_MSG(dataset_open(&ds, path, &err) == 0, "%s", err.msg);
    CHECK(ds.n_docs == 4 && ds.n_tokens == (int64_t)total);
    CHECK(ds.doc_offsets[0] == 0 && ds.doc_offsets[1] == 5 && ds.doc_offsets[2] == 5 &&
          ds.doc_offsets[3] == 70005 && ds.doc_offsets[4] == 70008);
    CHECK(ds.tokens && memcmp(ds.tokens, ids, total * sizeof *ids) == 0);
    CHECK(ds.loss_mask && memcmp(ds.loss_mask, mask, total) == 0);
    CHECK(strcmp(ds.tokenizer.fingerprint, "0123456789abcdef") == 0);
    CHECK(strcmp(ds.tokenizer.name, "test/tokenizer.json") == 0);
    CHECK(ds.tokenizer.vocab_size == 1000 && ds.tokenizer.bos_id == 1 && ds.tokenizer.eos_id == 2 &&
          ds.tokenizer.pad_id == -1);
    dataset_close(&ds);

    char summary_path[1100];
    FILE *out = fopen(tmp_path(summary_path, sizeof summary_path, "summary.txt"), "w+");
    CHECK(dataset_print_summary(path, out, &err) == 0);
    rewind(out);
    char text[4096] = {0};
    size_t got = fread(text, 1, sizeof text - 1, out);
    text[got] = '\0';
    fclose(out);
    remove(summary_path);
    CHECK_CONTAINS(text, "documents  4");
    CHECK_CONTAINS(text, "tokens     70008");
    CHECK_CONTAINS(text, "min 0, mean 17502.0, max 70000");
    CHECK_CONTAINS(text, "65536-131071");
    CHECK_CONTAINS(text, "0123456789abcdef");
    free(ids);
    free(mask);
    remove(path);

    /* The writer refuses bad tokens; abort and empty datasets leave no file. */
    CHECK(dataset_writer_open(&w, path, &info, &err) == 0);
    int32_t bad_ids[2] = {5, 1000};
    uint8_t ok_mask[2] = {1, 1}, bad_mask[2] = {0, 2};
    int32_t ok_ids[2] = {5, 6};
    CHECK(dataset_writer_add(w, bad_ids, ok_mask, 2, &err) == -1);
    CHECK_CONTAINS(err.msg, "token 1: id 1000 is outside the vocabulary [0, 1000)");
    CHECK(dataset_writer_add(w, ok_ids, bad_mask, 2, &err) == -1);
    CHECK_CONTAINS(err.msg, "loss mask 2");
    CHECK(dataset_writer_add(w, ok_ids, ok_mask, 2, &err) == 0);
    dataset_writer_abort(w);
    CHECK(!exists(path) && !exists(tmp));
    CHECK(dataset_writer_open(&w, path, &info, &err) == 0);
    CHECK(dataset_writer_finish(w, &err) == -1);
    CHECK_CONTAINS(err.msg, "no documents");
    CHECK(!exists(path) && !exists(tmp));
    info.eos_id = 1000;
    CHECK(dataset_writer_open(&w, path, &info, &err) == -1);
    CHECK_CONTAINS(err.msg, "eos_id 1000");
}

/* ------------------------------------------------------------ crafted files */

/* A dataset written with the HDF5 API directly, with one thing changed per test. */
typedef struct crafted {
    const char *skip;             /* dataset or attribute left out */
    const char *format;
    int64_t format_version;
    bool tokens_as_float, vocab_as_string, format_as_int, name_variable_length;
    int64_t offsets[4];           /* 3 documents */
    int64_t n_docs_attr;
    int32_t tokens[6];
    uint8_t mask[6];
} crafted;

static crafted good_file(void) {
    return (crafted){.format = "ctune-tokens", .format_version = 1, .offsets = {0, 2, 3, 6},
                     .n_docs_attr = 3, .tokens = {1, 5, 7, 9, 3, 2}, .mask = {0, 1, 1, 0, 1, 1}};
}

static void put_int_attr(hid_t file, const crafted *c, const char *name, int64_t v) {
    if (c->skip && strcmp(c->skip, name) == 0) return;
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(file, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a);
    H5Sclose(space);
}

static void put_str_attr(hid_t file, const crafted *c, const char *name, const char *v, bool variable) {
    if (c->skip && strcmp(c->skip, name) == 0) return;
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, variable ? H5T_VARIABLE : strlen(v) + 1);
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(file, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, type, variable ? (const void *)&v : (const void *)v);
    H5Aclose(a);
    H5Sclose(space);
    H5Tclose(type);
}

static void put_dataset(hid_t file, const crafted *c, const char *name, hid_t file_type, hid_t mem_type,
                        const void *data, hsize_t n) {
    if (c->skip && strcmp(c->skip, name) == 0) return;
    hid_t space = H5Screate_simple(1, &n, NULL);
    hid_t ds = H5Dcreate2(file, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
    H5Dclose(ds);
    H5Sclose(space);
}

static void write_crafted(const char *path, const crafted *c) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (c->format_as_int) put_int_attr(f, c, "format", 7);
    else put_str_attr(f, c, "format", c->format, false);
    put_int_attr(f, c, "format_version", c->format_version);
    put_str_attr(f, c, "tokenizer_fingerprint", "feedfacefeedface", false);
    put_str_attr(f, c, "tokenizer_name", "crafted", c->name_variable_length);
    if (c->vocab_as_string) put_str_attr(f, c, "vocab_size", "ten", false);
    else put_int_attr(f, c, "vocab_size", 10);
    put_int_attr(f, c, "bos_id", 1);
    put_int_attr(f, c, "eos_id", 2);
    put_int_attr(f, c, "pad_id", 0);
    put_int_attr(f, c, "n_docs", c->n_docs_attr);
    put_int_attr(f, c, "n_tokens", 6);
    if (c->tokens_as_float) {
        float as_float[6];
        for (int i = 0; i < 6; i++) as_float[i] = (float)c->tokens[i];
        put_dataset(f, c, "/tokens", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, as_float, 6);
    } else {
        put_dataset(f, c, "/tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, c->tokens, 6);
    }
    put_dataset(f, c, "/loss_mask", H5T_STD_U8LE, H5T_NATIVE_UINT8, c->mask, 6);
    put_dataset(f, c, "/doc_offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, c->offsets, 4);
    H5Fclose(f);
}

/* Opens the crafted file and checks that it fails with a message naming want1 and want2. */
static void expect_invalid(const crafted *c, const char *want1, const char *want2) {
    char path[1100];
    tmp_path(path, sizeof path, "crafted.h5");
    write_crafted(path, c);
    dataset ds;
    ct_error err = {{0}};
    int rc = dataset_open(&ds, path, &err);
    CHECK_MSG(rc == -1, "expected an error naming %s", want1);
    CHECK_CONTAINS(err.msg, "crafted.h5");
    CHECK_CONTAINS(err.msg, want1);
    if (want2) CHECK_CONTAINS(err.msg, want2);
    CHECK(ds.tokens == NULL && ds.doc_offsets == NULL && ds.loss_mask == NULL);
    if (rc == 0) dataset_close(&ds);
    remove(path);
}

static void test_validation(void) {
    char path[1100];
    crafted c = good_file();
    c.name_variable_length = true; /* h5py writes variable-length strings */
    tmp_path(path, sizeof path, "crafted.h5");
    write_crafted(path, &c);
    dataset ds;
    ct_error err = {{0}};
    CHECK_MSG(dataset_open(&ds, path, &err) == 0, "%s", err.msg);
    CHECK(strcmp(ds.tokenizer.name, "crafted") == 0 && ds.n_docs == 3 && ds.tokens[5] == 2);
    dataset_close(&ds);

    c = good_file(); c.skip = "/tokens";            expect_invalid(&c, "/tokens", "missing dataset");
    c = good_file(); c.skip = "/doc_offsets";       expect_invalid(&c, "/doc_offsets", "missing dataset");
    c = good_file(); c.skip = "/loss_mask";         expect_invalid(&c, "/loss_mask", "missing dataset");
    c = good_file(); c.skip = "vocab_size";         expect_invalid(&c, "attribute 'vocab_size'", "missing");
    c = good_file(); c.skip = "format";             expect_invalid(&c, "attribute 'format'", "missing");
    c = good_file(); c.skip = "tokenizer_fingerprint"; expect_invalid(&c, "attribute 'tokenizer_fingerprint'", "missing");
    c = good_file(); c.skip = "n_tokens";           expect_invalid(&c, "attribute 'n_tokens'", "missing");
    c = good_file(); c.tokens_as_float = true;      expect_invalid(&c, "/tokens", "expected 32-bit signed integers");
    c = good_file(); c.vocab_as_string = true;      expect_invalid(&c, "attribute 'vocab_size'", "expected an integer");
    c = good_file(); c.format_as_int = true;        expect_invalid(&c, "attribute 'format'", "expected a string");
    c = good_file(); c.format = "other-format";     expect_invalid(&c, "attribute 'format'", "'other-format'");
    c = good_file(); c.format_version = 2;          expect_invalid(&c, "format_version", "unknown version 2");
    c = good_file(); c.offsets[2] = 1;              expect_invalid(&c, "/doc_offsets", "not monotone");
    c = good_file(); c.offsets[3] = 5;              expect_invalid(&c, "/doc_offsets", "ends at 5");
    c = good_file(); c.offsets[0] = 1;              expect_invalid(&c, "/doc_offsets", "starts at 1");
    c = good_file(); c.n_docs_attr = 4;             expect_invalid(&c, "/doc_offsets", "has 4 elements, expected 5");
    c = good_file(); c.tokens[4] = 10;              expect_invalid(&c, "/tokens", "element 4 is 10");
    c = good_file(); c.tokens[0] = -1;              expect_invalid(&c, "/tokens", "element 0 is -1");
    c = good_file(); c.mask[3] = 2;                 expect_invalid(&c, "/loss_mask", "element 3 is 2");

    /* Not HDF5 at all, and no file. */
    FILE *f = fopen(path, "w");
    fputs("{\"text\": \"this is JSON, not HDF5\"}\n", f);
    fclose(f);
    CHECK(dataset_open(&ds, path, &err) == -1);
    CHECK_CONTAINS(err.msg, "not an HDF5 file");
    remove(path);
    CHECK(dataset_open(&ds, path, &err) == -1);
    CHECK_CONTAINS(err.msg, "cannot open");
}

/* ------------------------------------------------------------ sampler and batches */

static void test_sampler(void) {
    const int64_t sizes[] = {1, 2, 7, 64, 1000, 4097};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        int64_t n = sizes[k];
        int64_t *order[2];
        for (int epoch = 0; epoch < 2; epoch++) {
            order[epoch] = malloc((size_t)n * sizeof(int64_t));
            char *seen = calloc((size_t)n, 1);
            bool perm = true;
            for (int64_t i = 0; i < n; i++) {
                int64_t d = data_sample_doc(42, n, epoch * n + i);
                order[epoch][i] = d;
                if (d < 0 || d >= n || seen[d]) perm = false;
                else seen[d] = 1;
            }
            CHECK_MSG(perm, "n=%lld epoch %d is not a permutation", (long long)n, epoch);
            free(seen);
        }
        if (n >= 7) {
            CHECK_MSG(memcmp(order[0], order[1], (size_t)n * sizeof(int64_t)) != 0,
                      "n=%lld: epochs 0 and 1 give the same order", (long long)n);
            bool seed_differs = false, identity = true;
            for (int64_t i = 0; i < n; i++) {
                seed_differs |= data_sample_doc(43, n, i) != order[0][i];
                identity &= order[0][i] == i;
                CHECK(data_sample_doc(42, n, i) == order[0][i]); /* deterministic */
            }
            CHECK(seed_differs);
            CHECK(!identity);
        }
        free(order[0]);
        free(order[1]);
    }
    CHECK(data_sample_doc(1, 1, 12345) == 0);
    CHECK(data_sample_doc(1, 0, 0) == -1);
    CHECK(data_sample_doc(1, 10, -1) == -1);
    /* Huge n: in range and injective on a sample. */
    int64_t huge = (int64_t)1 << 40, a = data_sample_doc(9, huge, 5), b = data_sample_doc(9, huge, 6);
    CHECK(a >= 0 && a < huge && b >= 0 && b < huge && a != b);
    /* First position roughly uniform over 7 documents across 7000 seeds. */
    int counts[7] = {0};
    for (uint64_t seed = 0; seed < 7000; seed++) counts[data_sample_doc(seed, 7, 0)]++;
    for (int d = 0; d < 7; d++) CHECK_MSG(counts[d] > 800 && counts[d] < 1200, "doc %d first %d times", d, counts[d]);
}

static void test_fill_batch(void) {
    /* doc 0: 6 tokens (longer than seq + 1 = 5), doc 1: 2 tokens, doc 2: 5 tokens. */
    int64_t offsets[4] = {0, 6, 8, 13};
    int32_t tokens[13] = {10, 11, 12, 13, 14, 15, 20, 21, 30, 31, 32, 33, 34};
    uint8_t mask[13] = {0, 1, 1, 1, 1, 1, 0, 1, 0, 0, 1, 0, 1};
    dataset ds = {.n_docs = 3, .n_tokens = 13, .doc_offsets = offsets, .tokens = tokens, .loss_mask = mask};
    ds.tokenizer.pad_id = 7;
    enum { BATCH = 4, SEQ = 4 };
    int32_t in[BATCH * SEQ], tg[BATCH * SEQ], pos[BATCH * SEQ];
    data_fill_batch(&ds, 0, false, 2, BATCH, SEQ, in, tg, pos); /* rows take docs 2, 0, 1, 2 */
    const int32_t want_in[BATCH * SEQ] = {30, 31, 32, 33, 10, 11, 12, 13, 20, 21, 7, 7, 30, 31, 32, 33};
    const int32_t want_tg[BATCH * SEQ] = {-1, 32, -1, 34, 11, 12, 13, 14, 21, -1, -1, -1, -1, 32, -1, 34};
    CHECK(memcmp(in, want_in, sizeof in) == 0);
    CHECK(memcmp(tg, want_tg, sizeof tg) == 0);
    bool positions_ok = true;
    for (int i = 0; i < BATCH * SEQ; i++) positions_ok &= pos[i] == i % SEQ;
    CHECK(positions_ok);
    ds.tokenizer.pad_id = -1;
    data_fill_batch(&ds, 0, false, 1, 1, SEQ, in, tg, pos); /* doc 1 padded with 0 */
    CHECK(in[0] == 20 && in[1] == 21 && in[2] == 0 && in[3] == 0 && tg[0] == 21 && tg[1] == -1);
    data_fill_batch(&ds, 99, true, 5, BATCH, SEQ, in, tg, pos);
    for (int r = 0; r < BATCH; r++) {
        int64_t d = data_sample_doc(99, 3, 5 + r);
        CHECK(d >= 0 && in[r * SEQ] == tokens[offsets[d]]);
    }
}

/* ------------------------------------------------------------ synthetic tasks */

static bool parse_addition(const char *prompt, const char *answer, unsigned long long *a,
                           unsigned long long *b, int *da, int *db) {
    char tail[8];
    if (sscanf(prompt, "%llu+%llu%1[=]", a, b, tail) != 3) return false;
    const char *plus = strchr(prompt, '+');
    *da = (int)(plus - prompt);
    *db = (int)(strlen(plus + 1) - 1);
    char expect[32];
    snprintf(expect, sizeof expect, "%llu", *a + *b);
    return strcmp(expect, answer) == 0 && prompt[strlen(prompt) - 1] == '=';
}

static int cmp_str(const void *x, const void *y) { return strcmp(*(char *const *)x, *(char *const *)y); }

static void test_synth(void) {
    enum { N_TRAIN = 1500, N_EVAL = 300 };
    ct_error err = {{0}};
    char prompt[128], answer[64];
    char **prompts = malloc((N_TRAIN + N_EVAL) * sizeof *prompts);
    int digit_counts[4] = {0};
    bool all_correct = true;
    for (int i = 0; i < N_TRAIN + N_EVAL; i++) {
        synth_split split = i < N_TRAIN ? SYNTH_TRAIN : SYNTH_EVAL;
        int64_t index = i < N_TRAIN ? i : i - N_TRAIN;
        CHECK(synth_example("addition", 3, 7, split, index, prompt, sizeof prompt, answer, sizeof answer, &err) == 0);
        unsigned long long a, b;
        int da, db;
        bool ok = parse_addition(prompt, answer, &a, &b, &da, &db) && da >= 1 && da <= 3 && db >= 1 && db <= 3;
        if (!ok) fprintf(stderr, "bad addition example: %s -> %s\n", prompt, answer);
        all_correct &= ok;
        if (ok) digit_counts[da]++;
        prompts[i] = strdup(prompt);
    }
    CHECK(all_correct);
    for (int d = 1; d <= 3; d++) CHECK_MSG(digit_counts[d] > 400, "%d-digit operands: %d", d, digit_counts[d]);
    /* No eval problem occurs in the training examples. */
    qsort(prompts, N_TRAIN, sizeof *prompts, cmp_str);
    int overlap = 0;
    for (int i = N_TRAIN; i < N_TRAIN + N_EVAL; i++)
        if (bsearch(&prompts[i], prompts, N_TRAIN, sizeof *prompts, cmp_str)) overlap++;
    CHECK_MSG(overlap == 0, "%d eval problems also occur in training", overlap);
    for (int i = 0; i < N_TRAIN + N_EVAL; i++) free(prompts[i]);
    free(prompts);

    /* Deterministic, seed-dependent. */
    char p2[128], a2[64];
    synth_example("addition", 3, 7, SYNTH_TRAIN, 17, prompt, sizeof prompt, answer, sizeof answer, &err);
    synth_example("addition", 3, 7, SYNTH_TRAIN, 17, p2, sizeof p2, a2, sizeof a2, &err);
    CHECK(strcmp(prompt, p2) == 0 && strcmp(answer, a2) == 0);
    int differ = 0;
    for (int i = 0; i < 20; i++) {
        synth_example("addition", 3, 7, SYNTH_TRAIN, i, prompt, sizeof prompt, answer, sizeof answer, &err);
        synth_example("addition", 3, 8, SYNTH_TRAIN, i, p2, sizeof p2, a2, sizeof a2, &err);
        differ += strcmp(prompt, p2) != 0;
    }
    CHECK(differ > 10);

    bool reversal_ok = true;
    for (int i = 0; i < 300; i++) {
        synth_split split = i % 3 ? SYNTH_TRAIN : SYNTH_EVAL;
        CHECK(synth_example("reversal", 2, 1, split, i, prompt, sizeof prompt, answer, sizeof answer, &err) == 0);
        size_t n = strlen(answer);
        bool ok = strncmp(prompt, "rev ", 4) == 0 && strlen(prompt) == n + 5 && prompt[n + 4] == '=' && n >= 1 && n <= 4;
        for (size_t k = 0; ok && k < n; k++) ok = answer[k] == prompt[4 + n - 1 - k] && answer[k] >= 'a' && answer[k] <= 'z';
        if (!ok) fprintf(stderr, "bad reversal example: %s -> %s\n", prompt, answer);
        reversal_ok &= ok;
    }
    CHECK(reversal_ok);

    CHECK(synth_example("multiplication", 3, 1, SYNTH_TRAIN, 0, prompt, sizeof prompt, answer, sizeof answer, &err) == -1);
    CHECK_CONTAINS(err.msg, "unknown synthetic task 'multiplication'");
    CHECK(synth_example("addition", 0, 1, SYNTH_TRAIN, 0, prompt, sizeof prompt, answer, sizeof answer, &err) == -1);
    CHECK_CONTAINS(err.msg, "digits");
    CHECK(synth_example("addition", 3, 1, SYNTH_TRAIN, 0, prompt, 4, answer, sizeof answer, &err) == -1);
}

/* The byte-level tokenizer makes token ids equal byte values, so expectations are easy. */
static tokenizer *byte_tokenizer(void) {
    ct_error err = {{0}};
    CHECK(tokenizer_write_byte_level(tmpdir, "<s>", "</s>", "<pad>", &err) == 0);
    char path[1100];
    tokenizer *tok = NULL;
    CHECK_MSG(tokenizer_load(&tok, tmp_path(path, sizeof path, "tokenizer.json"), &err) == 0, "%s", err.msg);
    return tok;
}

static void test_synth_dataset(tokenizer *tok) {
    char path[1100];
    tmp_path(path, sizeof path, "synth.h5");
    ct_error err = {{0}};
    CHECK_MSG(synth_write_dataset(path, tok, "addition", 2, 3, SYNTH_EVAL, 40, 256, 257, &err) == 0, "%s", err.msg);
    dataset ds;
    CHECK_MSG(dataset_open(&ds, path, &err) == 0, "%s", err.msg);
    CHECK(ds.n_docs == 40 && ds.tokenizer.bos_id == 256 && ds.tokenizer.eos_id == 257);
    CHECK(strcmp(ds.tokenizer.fingerprint, tokenizer_fingerprint(tok)) == 0);
    bool docs_ok = ds.n_docs == 40;
    for (int64_t d = 0; docs_ok && d < ds.n_docs; d++) {
        char prompt[128], answer[64];
        synth_example("addition", 2, 3, SYNTH_EVAL, d, prompt, sizeof prompt, answer, sizeof answer, &err);
        size_t np = strlen(prompt), na = strlen(answer);
        const int32_t *t = ds.tokens + ds.doc_offsets[d];
        const uint8_t *m = ds.loss_mask + ds.doc_offsets[d];
        docs_ok = ds.doc_offsets[d + 1] - ds.doc_offsets[d] == (int64_t)(np + na + 2) && t[0] == 256 && m[0] == 0;
        for (size_t i = 0; docs_ok && i < np; i++) docs_ok = t[1 + i] == prompt[i] && m[1 + i] == 0;
        for (size_t i = 0; docs_ok && i < na; i++) docs_ok = t[1 + np + i] == answer[i] && m[1 + np + i] == 1;
        docs_ok = docs_ok && t[1 + np + na] == 257 && m[1 + np + na] == 1;
    }
    CHECK(docs_ok);
    dataset_close(&ds);
    remove(path);
}

/* ------------------------------------------------------------ ctune prep */

/* Runs cmd_prep with stderr captured into errbuf. */
static int run_prep(char **argv, int argc, char *errbuf, size_t size) {
    char capture[1100];
    tmp_path(capture, sizeof capture, "stderr.txt");
    fflush(stderr);
    int saved = dup(2);
    FILE *f = fopen(capture, "w+");
    dup2(fileno(f), 2);
    int rc = cmd_prep(argc, argv);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    rewind(f);
    size_t got = fread(errbuf, 1, size - 1, f);
    errbuf[got] = '\0';
    fclose(f);
    remove(capture);
    fputs(errbuf, stderr); /* keep it visible in the test log */
    return rc;
}

static void test_prep(void) {
    char input[1100], output[1100], tmp[1200], tok_arg[1100], errbuf[8192];
    tmp_path(input, sizeof input, "in.jsonl");
    tmp_path(output, sizeof output, "out.h5");
    snprintf(tmp, sizeof tmp, "%s.tmp", output);
    snprintf(tok_arg, sizeof tok_arg, "%s", tmpdir); /* a model folder */
    check_write_text(input, "{\"text\": \"ab\"}\n"
                      "{\"prompt\": \"1+1=\", \"completion\": \"2\"}\n"
                      "{\"text\": \"broken\n"
                      "{\"text\": \"xyz\"}\n");
    char *argv[] = {"prep", "--tokenizer", tok_arg, input, "-o", output, NULL, NULL};
    CHECK(run_prep(argv, 6, errbuf, sizeof errbuf) == 1);
    CHECK_CONTAINS(errbuf, "in.jsonl:3:");
    CHECK_CONTAINS(errbuf, "invalid JSON");
    CHECK(!exists(output) && !exists(tmp));

    argv[6] = "--skip-bad";
    CHECK(run_prep(argv, 7, errbuf, sizeof errbuf) == 0);
    CHECK_CONTAINS(errbuf, "skipping");
    dataset ds;
    ct_error err = {{0}};
    CHECK_MSG(dataset_open(&ds, output, &err) == 0, "%s", err.msg);
    /* bos from the post-processor, eos/pad from tokenizer_config.json of the folder. */
    const int32_t want_tokens[] = {256, 'a', 'b', 257, 256, '1', '+', '1', '=', '2', 257, 256, 'x', 'y', 'z', 257};
    const uint8_t want_mask[] = {0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1};
    CHECK(ds.n_docs == 3 && ds.n_tokens == 16);
    CHECK(ds.n_tokens == 16 && memcmp(ds.tokens, want_tokens, sizeof want_tokens) == 0 &&
          memcmp(ds.loss_mask, want_mask, sizeof want_mask) == 0);
    CHECK(ds.tokenizer.bos_id == 256 && ds.tokenizer.eos_id == 257 && ds.tokenizer.pad_id == 258);
    dataset_close(&ds);
    remove(output);

    /* --format text refuses a prompt/completion line; explicit ids override the folder. */
    char *argv_text[] = {"prep", "--tokenizer", tok_arg, "--format", "text", "--bos-id", "-1", "--eos-id", "10",
                         input, "-o", output};
    check_write_text(input, "{\"text\": \"q\"}\n\n{\"prompt\": \"a\", \"completion\": \"b\"}\n");
    CHECK(run_prep(argv_text, 12, errbuf, sizeof errbuf) == 1);
    CHECK_CONTAINS(errbuf, "in.jsonl:3: missing \"text\"");
    CHECK(!exists(output));
    check_write_text(input, "{\"text\": \"q\"}\n\n   \n{\"text\": \"\\u00e9\"}\n");
    CHECK(run_prep(argv_text, 12, errbuf, sizeof errbuf) == 0);
    CHECK(dataset_open(&ds, output, &err) == 0);
    const int32_t want2[] = {'q', 10, 0xc3, 0xa9, 10};
    CHECK(ds.n_docs == 2 && ds.n_tokens == 5 && memcmp(ds.tokens, want2, sizeof want2) == 0);
    CHECK(ds.tokenizer.bos_id == -1 && ds.tokenizer.eos_id == 10);
    dataset_close(&ds);
    remove(output);

    check_write_text(input, "[1, 2]\n");
    CHECK(run_prep(argv, 6, errbuf, sizeof errbuf) == 1);
    CHECK_CONTAINS(errbuf, "in.jsonl:1: expected a JSON object");
    check_write_text(input, "{\"text\": \"a\"}\n{\"text\": \"b\"} {\"text\": \"c\"}\n");
    CHECK(run_prep(argv, 6, errbuf, sizeof errbuf) == 1);
    CHECK_CONTAINS(errbuf, "in.jsonl:2: column 15: unexpected text after the JSON value");
    check_write_text(input, "{\"text\": \"ok \xff\"}\n");
    CHECK(run_prep(argv, 6, errbuf, sizeof errbuf) == 1);
    CHECK_CONTAINS(errbuf, "in.jsonl:1: \"text\": byte 3: invalid UTF-8");
    check_write_text(input, "{\"prompt\": \"a\", \"completion\": 3}\n");
    CHECK(run_prep(argv, 6, errbuf, sizeof errbuf) == 1);
    CHECK_CONTAINS(errbuf, "in.jsonl:1: \"completion\" must be a string");

    /* Synthetic mode. */
    char *argv_syn[] = {"prep", "--tokenizer", tok_arg, "--synthetic", "reversal", "--examples", "25",
                        "--digits", "2", "--split", "eval", "-o", output};
    CHECK(run_prep(argv_syn, 13, errbuf, sizeof errbuf) == 0);
    CHECK(dataset_open(&ds, output, &err) == 0);
    CHECK(ds.n_docs == 25 && ds.tokens[0] == 256 && ds.tokens[1] == 'r');
    dataset_close(&ds);
    remove(output);

    char *argv_bad[] = {"prep", "--tokenizer", tok_arg, "--format", "yaml", input, "-o", output};
    CHECK(run_prep(argv_bad, 8, errbuf, sizeof errbuf) == 2);
    CHECK_CONTAINS(errbuf, "not supported");
    /* --format chat on a text line: a malformed line (chat itself: test_chat_template). */
    argv_bad[4] = "chat";
    CHECK(run_prep(argv_bad, 8, errbuf, sizeof errbuf) == 1);
    CHECK_CONTAINS(errbuf, "in.jsonl:1: missing \"messages\"");
    char *argv_missing[] = {"prep", input, "-o", output};
    CHECK(run_prep(argv_missing, 4, errbuf, sizeof errbuf) == 2);
    CHECK_CONTAINS(errbuf, "--tokenizer is required");
    char *argv_help[] = {"prep", "--help"};
    CHECK(cmd_prep(2, argv_help) == 0);
    remove(input);
}

int main(void) {
    CHECK(mkdtemp(tmpdir) != NULL);
    test_round_trip();
    test_validation();
    test_sampler();
    test_fill_batch();
    test_synth();
    tokenizer *tok = byte_tokenizer();
    if (tok) test_synth_dataset(tok);
    tokenizer_free(tok);
    test_prep();
    const char *files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"};
    char path[1100];
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) remove(tmp_path(path, sizeof path, files[i]));
    CHECK(rmdir(tmpdir) == 0);
    return check_summary("test_data");
}
