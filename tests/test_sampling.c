/* sample_token (train/trainer.h), ctune generate's choice of the next token: greedy at
 * temperature 0, and otherwise draws whose support and frequencies follow transformers'
 * temperature, top-k (ties with the k-th kept) and top-p (a token goes when it and every less
 * likely one hold no more than 1 - top_p) rules, on logits chosen so the kept sets are known
 * (each set below is what transformers 5.23's TopKLogitsWarper / TopPLogitsWarper keep). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/check.h"
#include "train/sampling.h"
#include "train/splitmix.h"

#define DRAWS 20000

/* Frequencies of sample_token over DRAWS draws from one seed. */
static void frequencies(const float *logits, int vocab, sampling s, uint64_t seed, double *freq) {
    scored_token scratch[16];
    uint64_t rng = seed;
    for (int i = 0; i < vocab; i++) freq[i] = 0;
    for (int d = 0; d < DRAWS; d++) freq[sample_token(logits, vocab, &s, &rng, scratch)] += 1.0 / DRAWS;
}

/* freq matches want (probabilities, 0 = never drawn) within 0.02, and exactly where want is 0. */
static void check_frequencies(const char *what, const double *freq, const double *want, int vocab) {
    for (int i = 0; i < vocab; i++) {
        if (want[i] == 0) CHECK_MSG(freq[i] == 0, "%s: token %d drawn (%.4f) though outside the kept set", what, i, freq[i]);
        else CHECK_MSG(fabs(freq[i] - want[i]) < 0.02, "%s: token %d drawn %.4f of the time, expected %.4f", what, i,
                       freq[i], want[i]);
    }
}

static int by_rank(const void *a, const void *b) {
    const scored_token *x = a, *y = b;
    if (x->logit != y->logit) return x->logit > y->logit ? -1 : 1;
    return (x->token > y->token) - (x->token < y->token);
}

/* The kept set by the rules' plain reading: sort the whole vocabulary, keep the top k and
 * their ties, then drop from the bottom while the tail holds <= 1 - top_p. */
static int reference_kept(const float *logits, int vocab, sampling s, scored_token *sorted) {
    for (int i = 0; i < vocab; i++) sorted[i] = (scored_token){logits[i], i, 0};
    qsort(sorted, (size_t)vocab, sizeof *sorted, by_rank);
    int kept = vocab;
    if (s.top_k > 0 && s.top_k < vocab) {
        kept = s.top_k;
        while (kept < vocab && sorted[kept].logit == sorted[s.top_k - 1].logit) kept++;
    }
    double total = 0;
    for (int i = 0; i < kept; i++) total += exp((sorted[i].logit - sorted[0].logit) / s.temperature);
    double tail = 0;
    int cut = kept;
    for (int i = kept - 1; i > 0 && s.top_p < 1; i--) {
        tail += exp((sorted[i].logit - sorted[0].logit) / s.temperature);
        if (tail > (1 - s.top_p) * total) break;
        cut = i;
    }
    return cut;
}

/* On a large vocabulary with many tied logits, sampling_candidates (a bounded heap, no full
 * sort) keeps exactly the reference's tokens in the reference's order. */
static void check_candidates_large(void) {
    const int vocab = 50000;
    float *logits = malloc(vocab * sizeof *logits);
    scored_token *got = malloc(vocab * sizeof *got), *want = malloc(vocab * sizeof *want);
    uint64_t rng = 11;
    for (int i = 0; i < vocab; i++) /* steps of 1/16 in [-12, 4): every value ~200 times */
        logits[i] = (float)((int)(splitmix64_next(&rng) % 256) - 192) / 16.0f;
    logits[31337] = 9; /* one clear favourite, as a trained model has */
    const sampling cases[] = {{1, 1, 1}, {1, 40, 1}, {0.7, 50, 1}, {1, 0, 0.9}, {1, 0, 0.5}, {2, 0, 0.95},
                              {0.3, 0, 0.99}, {1, 0, 0.001}, {1, 300, 0.8}, {1.5, 20000, 0.97}, {5, 0, 0.999}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const sampling s = cases[c];
        const int n = sampling_candidates(logits, vocab, &s, got), n_want = reference_kept(logits, vocab, s, want);
        CHECK_MSG(n == n_want, "case %zu (T %g, k %d, p %g): %d candidates, expected %d", c, s.temperature, s.top_k,
                  s.top_p, n, n_want);
        int same = n == n_want;
        for (int i = 0; same && i < n; i++) same = got[i].token == want[i].token;
        CHECK_MSG(same, "case %zu: the candidates differ from the reference's", c);
        for (int d = 0; d < 50 && n > 0; d++) { /* draws stay within them */
            const int t = sample_token(logits, vocab, &s, &rng, got);
            int inside = 0;
            for (int i = 0; i < n_want && !inside; i++) inside = want[i].token == t;
            CHECK_MSG(inside, "case %zu: drew token %d, outside the kept set", c, t);
        }
    }
    /* no restriction: no candidates listed, and every draw is a real token */
    CHECK(sampling_candidates(logits, vocab, &(sampling){1, 0, 1}, got) == 0);
    CHECK(sampling_candidates(logits, vocab, &(sampling){1, vocab, 1}, got) == 0);
    free(logits);
    free(got);
    free(want);
}

int main(void) {
    /* probabilities 0.05, 0.5, 0.15, 0.3 at temperature 1 (the order is not the tokens') */
    const double p[4] = {0.05, 0.5, 0.15, 0.3};
    float logits[4];
    for (int i = 0; i < 4; i++) logits[i] = (float)log(p[i]);
    double freq[4];
    scored_token scratch[16];
    uint64_t rng = 7;

    /* temperature 0: the argmax, whatever top-k / top-p say; ties to the lower id */
    CHECK(sample_token(logits, 4, &(sampling){0, 0, 1}, &rng, scratch) == 1);
    CHECK(sample_token(logits, 4, &(sampling){0, 3, 0.2}, &rng, scratch) == 1);
    const float tied[3] = {2, 5, 5};
    CHECK(sample_token(tied, 3, &(sampling){0, 0, 1}, &rng, scratch) == 1);

    frequencies(logits, 4, (sampling){1, 0, 1}, 1, freq);
    check_frequencies("plain", freq, p, 4);
    /* temperature 2 flattens: softmax(log p / 2) = sqrt(p) normalised */
    double flat[4], norm = 0;
    for (int i = 0; i < 4; i++) norm += sqrt(p[i]);
    for (int i = 0; i < 4; i++) flat[i] = sqrt(p[i]) / norm;
    frequencies(logits, 4, (sampling){2, 0, 1}, 2, freq);
    check_frequencies("temperature 2", freq, flat, 4);

    /* top-k 2: tokens 1 and 3 renormalised; top-k 1 at any temperature: the argmax */
    frequencies(logits, 4, (sampling){1, 2, 1}, 3, freq);
    check_frequencies("top-k 2", freq, (double[4]){0, 0.5 / 0.8, 0, 0.3 / 0.8}, 4);
    frequencies(logits, 4, (sampling){5, 1, 1}, 4, freq);
    check_frequencies("top-k 1", freq, (double[4]){0, 1, 0, 0}, 4);
    /* ties with the k-th are kept: top-k 2 of {5, 4, 4, 1} keeps three */
    const float ties[4] = {5, 4, 4, 1};
    frequencies(ties, 4, (sampling){1, 2, 1}, 5, freq);
    const double e1 = exp(-1.0), z = 1 + 2 * e1;
    check_frequencies("top-k ties", freq, (double[4]){1 / z, e1 / z, e1 / z, 0}, 4);

    /* top-p, from the least likely up: 0.05, 0.15, 0.3, 0.5 cumulate to 0.05, 0.2, 0.5, 1.
     * top-p 0.75 drops those at <= 0.25 (0.05, 0.15); 0.9 drops only 0.05; 0.01 keeps the top */
    frequencies(logits, 4, (sampling){1, 0, 0.75}, 6, freq);
    check_frequencies("top-p 0.75", freq, (double[4]){0, 0.5 / 0.8, 0, 0.3 / 0.8}, 4);
    frequencies(logits, 4, (sampling){1, 0, 0.9}, 7, freq);
    check_frequencies("top-p 0.9", freq, (double[4]){0, 0.5 / 0.95, 0.15 / 0.95, 0.3 / 0.95}, 4);
    frequencies(logits, 4, (sampling){1, 0, 0.01}, 8, freq);
    check_frequencies("top-p 0.01", freq, (double[4]){0, 1, 0, 0}, 4);
    /* top-k first, then top-p on what is left: top-k 3 keeps 0.5, 0.3, 0.15 (renormalised
     * 0.526, 0.316, 0.158); top-p 0.8 then drops 0.158 (cumulated from below: 0.158 <= 0.2) */
    frequencies(logits, 4, (sampling){1, 3, 0.8}, 9, freq);
    check_frequencies("top-k 3 then top-p 0.8", freq, (double[4]){0, 0.5 / 0.8, 0, 0.3 / 0.8}, 4);

    /* the same seed draws the same tokens */
    uint64_t a = 42, b = 42;
    int same = 1;
    for (int d = 0; d < 100; d++)
        same &= sample_token(logits, 4, &(sampling){1, 0, 1}, &a, scratch) ==
                sample_token(logits, 4, &(sampling){1, 0, 1}, &b, scratch);
    CHECK(same);
    check_candidates_large();

    /* repetition penalty: each id of the sequence once, however often it occurs; positive
     * logits divided, negative multiplied, zero unchanged; ids outside the vocabulary skipped */
    float pen[6] = {2.0f, -1.0f, 3.0f, 0.0f, -0.5f, 1.5f};
    const int32_t seq[7] = {0, 1, 0, 0, 3, 4, 99};
    uint8_t seen[6];
    sampling_penalize_repeats(pen, 6, seq, 7, 2.0f, seen);
    CHECK(pen[0] == 1.0f && pen[1] == -2.0f && pen[2] == 3.0f && pen[3] == 0.0f && pen[4] == -1.0f && pen[5] == 1.5f);
    const float before[6] = {2.0f, -1.0f, 3.0f, 0.0f, -0.5f, 1.5f};
    memcpy(pen, before, sizeof pen);
    sampling_penalize_repeats(pen, 6, seq, 7, 1.0f, seen);
    CHECK(!memcmp(pen, before, sizeof pen));
    return check_summary("test_sampling");
}
