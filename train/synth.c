/* synth: the synthetic tasks (addition, reversal). Every example is a pure function of
 * (seed, split, index): a counter-based splitmix64 stream keyed by those three, so examples
 * can be generated in any order or in parallel. Train and eval draw from disjoint problem
 * sets: a problem is held out for eval iff a seed-keyed hash of its prompt is 0 mod 16, and
 * each split redraws (with a sub-counter) until it gets a problem of its own side. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/data.h"
#include "train/splitmix.h"
#include "train/synth.h"

#define MAX_DIGITS 18       /* 10^18 + 10^18 still fits in 64 bits */
#define MAX_REDRAWS 100000  /* an eval split with no held-out problem gives up here */

typedef struct synth_rng { uint64_t state; } synth_rng;

static synth_rng rng_for(uint64_t seed, synth_split split, int64_t index, uint64_t redraw) {
    uint64_t k = splitmix64(seed);
    k = splitmix64(k ^ (split == SYNTH_EVAL ? 0x6576616cull : 0x747261696eull));
    k = splitmix64(k ^ (uint64_t)index);
    return (synth_rng){splitmix64(k ^ (redraw * 0xd1b54a32d192ed03ull))};
}

static uint64_t rng_next(synth_rng *r) { return splitmix64_next(&r->state); }

/* Uniform in [0, n) without modulo bias. */
static uint64_t rng_below(synth_rng *r, uint64_t n) {
    uint64_t threshold = (0 - n) % n;
    for (;;) {
        uint64_t x = rng_next(r);
        if (x >= threshold) return x % n;
    }
}

static uint64_t pow10u(int k) {
    uint64_t p = 1;
    while (k-- > 0) p *= 10;
    return p;
}

/* A number of 1..digits digits: the digit count uniformly, then the value uniformly. */
static uint64_t draw_operand(synth_rng *r, int digits) {
    int d = 1 + (int)rng_below(r, (uint64_t)digits);
    if (d == 1) return rng_below(r, 10);
    uint64_t lo = pow10u(d - 1);
    return lo + rng_below(r, 9 * lo);
}

static bool held_out(uint64_t seed, const char *prompt) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (const char *p = prompt; *p; p++) h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
    return splitmix64(h ^ splitmix64(seed ^ 0x686f6c646f7574ull)) % 16 == 0;
}

static int draw_problem(const char *task, int digits, synth_rng *r, char *prompt, size_t prompt_size,
                        char *answer, size_t answer_size, ct_error *err) {
    int np, na;
    if (strcmp(task, "addition") == 0) {
        uint64_t a = draw_operand(r, digits), b = draw_operand(r, digits);
        np = snprintf(prompt, prompt_size, "%llu+%llu=", (unsigned long long)a, (unsigned long long)b);
        na = snprintf(answer, answer_size, "%llu", (unsigned long long)(a + b));
    } else if (strcmp(task, "reversal") == 0) {
        char letters[2 * MAX_DIGITS + 1], reversed[2 * MAX_DIGITS + 1];
        int len = 1 + (int)rng_below(r, 2 * (uint64_t)digits);
        for (int i = 0; i < len; i++) letters[i] = (char)('a' + rng_below(r, 26));
        for (int i = 0; i < len; i++) reversed[i] = letters[len - 1 - i];
        letters[len] = reversed[len] = '\0';
        np = snprintf(prompt, prompt_size, "rev %s=", letters);
        na = snprintf(answer, answer_size, "%s", reversed);
    } else {
        return ct_fail(err, "unknown synthetic task '%s' (expected addition or reversal)", task);
    }
    if (np < 0 || (size_t)np >= prompt_size || na < 0 || (size_t)na >= answer_size)
        return ct_fail(err, "synthetic %s: prompt or answer buffer too small (%zu, %zu bytes)", task,
                       prompt_size, answer_size);
    return 0;
}

int synth_example(const char *task, int digits, uint64_t seed, synth_split split, int64_t index,
                  char *prompt, size_t prompt_size, char *answer, size_t answer_size,
                  ct_error *err) {
    if (strcmp(task, "addition") != 0 && strcmp(task, "reversal") != 0)
        return ct_fail(err, "unknown synthetic task '%s' (expected addition or reversal)", task);
    if (digits < 1 || digits > MAX_DIGITS)
        return ct_fail(err, "synthetic %s: digits must be in 1..%d, got %d", task, MAX_DIGITS, digits);
    if (index < 0) return ct_fail(err, "synthetic %s: negative example index %lld", task, (long long)index);
    for (uint64_t redraw = 0; redraw < MAX_REDRAWS; redraw++) {
        synth_rng r = rng_for(seed, split, index, redraw);
        if (draw_problem(task, digits, &r, prompt, prompt_size, answer, answer_size, err)) return -1;
        if (held_out(seed, prompt) == (split == SYNTH_EVAL)) return 0;
    }
    return ct_fail(err, "synthetic %s with %d digit(s), seed %llu: found no %s problem in %d draws "
                   "(too few distinct problems; use more digits)", task, digits,
                   (unsigned long long)seed, split == SYNTH_EVAL ? "held-out" : "training", MAX_REDRAWS);
}

/* Grows ids/mask to hold `need` tokens. */
static int reserve(int32_t **ids, uint8_t **mask, size_t *cap, size_t need, ct_error *err) {
    if (need <= *cap) return 0;
    size_t want = need * 2;
    int32_t *grown_ids = realloc(*ids, want * sizeof **ids);
    if (grown_ids) *ids = grown_ids;
    uint8_t *grown_mask = grown_ids ? realloc(*mask, want) : NULL;
    if (grown_mask) *mask = grown_mask;
    if (!grown_ids || !grown_mask) return ct_fail(err, "out of memory");
    *cap = want;
    return 0;
}

/* Appends the tokens of text (no special tokens) with the given loss mask value, keeping one
 * spare slot for the eos. */
static int encode_into(const tokenizer *tok, const char *text, int32_t **ids, uint8_t **mask,
                       size_t *n, size_t *cap, uint8_t mask_value, ct_error *err) {
    int32_t *piece = NULL;
    size_t count = 0;
    if (tokenizer_encode(tok, text, strlen(text), false, &piece, &count, err)) return -1;
    if (reserve(ids, mask, cap, *n + count + 1, err)) {
        free(piece);
        return -1;
    }
    memcpy(*ids + *n, piece, count * sizeof *piece);
    memset(*mask + *n, mask_value, count);
    *n += count;
    free(piece);
    return 0;
}

int synth_write_dataset_ex(const char *path, const tokenizer *tok, const char *task, int digits,
                           uint64_t seed, synth_split split, int64_t n, int bos_id, int eos_id,
                           int pad_id, ct_error *err) {
    int vocab = tokenizer_vocab_size(tok);
    if (n <= 0) return ct_fail(err, "%s: the number of examples must be positive, got %lld", path, (long long)n);
    if (eos_id < 0 || eos_id >= vocab) return ct_fail(err, "%s: eos id %d is outside the vocabulary [0, %d)", path, eos_id, vocab);
    if (bos_id >= vocab) return ct_fail(err, "%s: bos id %d is outside the vocabulary [0, %d)", path, bos_id, vocab);
    dataset_tokenizer_info info = {.vocab_size = vocab, .bos_id = bos_id < 0 ? -1 : bos_id,
                                   .eos_id = eos_id, .pad_id = pad_id};
    snprintf(info.fingerprint, sizeof info.fingerprint, "%s", tokenizer_fingerprint(tok));
    snprintf(info.name, sizeof info.name, "%s", tokenizer_path(tok));
    dataset_writer *w;
    if (dataset_writer_open(&w, path, &info, err)) return -1;
    int32_t *ids = NULL;
    uint8_t *mask = NULL;
    size_t cap = 0;
    int rc = 0;
    for (int64_t i = 0; i < n && !rc; i++) {
        char prompt[128], answer[64];
        size_t len = 0;
        rc = synth_example(task, digits, seed, split, i, prompt, sizeof prompt, answer, sizeof answer, err);
        if (!rc) rc = reserve(&ids, &mask, &cap, 1, err);
        if (!rc && bos_id >= 0) {
            ids[len] = bos_id;
            mask[len++] = 0;
        }
        if (!rc) rc = encode_into(tok, prompt, &ids, &mask, &len, &cap, 0, err);
        if (!rc) rc = encode_into(tok, answer, &ids, &mask, &len, &cap, 1, err);
        if (!rc) {
            ids[len] = eos_id; /* encode_into keeps a spare slot */
            mask[len++] = 1;
            rc = dataset_writer_add(w, ids, mask, len, err);
        }
        if (rc) ct_error_prefix(err, "%s: example %lld", path, (long long)i);
    }
    free(ids);
    free(mask);
    if (rc) {
        dataset_writer_abort(w);
        return -1;
    }
    return dataset_writer_finish(w, err);
}

int synth_write_dataset(const char *path, const tokenizer *tok, const char *task, int digits,
                        uint64_t seed, synth_split split, int64_t n, int bos_id, int eos_id,
                        ct_error *err) {
    return synth_write_dataset_ex(path, tok, task, digits, seed, split, n, bos_id, eos_id, -1, err);
}
