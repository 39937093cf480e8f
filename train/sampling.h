/* Choosing the next token from a model's logits: greedy, or a seeded draw under
 * temperature, top-k and top-p, as transformers' generate applies them. */
#ifndef CTUNE_SAMPLING_H
#define CTUNE_SAMPLING_H

#include <stddef.h>
#include <stdint.h>

/* Index of the highest logit (the lowest such index on ties). */
int argmax_logits(const float *logits, int vocab);

/* How ctune generate picks the next token: greedy at temperature 0; otherwise a draw from
 * softmax(logits / temperature), restricted first to the top_k highest logits (0: all; ties
 * with the k-th kept) and then to the fewest highest whose probabilities reach top_p (1: all;
 * at least one kept): transformers' TemperatureLogitsWarper, TopKLogitsWarper and
 * TopPLogitsWarper, in that order. */
typedef struct sampling {
    double temperature;
    int top_k;
    double top_p;
} sampling;

/* A logit and its token, for the candidates' ordering, and the token's unnormalised
 * probability exp((logit - highest) / temperature). */
typedef struct scored_token {
    float logit;
    int token;
    double weight;
} scored_token;

/* The tokens s can draw (temperature > 0, top_k and/or top_p restricting), highest logit first
 * (equal logits by id), with their weights, in scratch[0 .. returned count). Costs a pass over
 * the vocabulary plus a sort of about as many tokens as are kept, not a sort of the whole
 * vocabulary. Returns 0 when nothing restricts (every token can be drawn; scratch unused). */
int sampling_candidates(const float *logits, int vocab, const sampling *s, scored_token *scratch);

/* transformers' RepetitionPenaltyLogitsProcessor (repetition_penalty): every token id that
 * occurs in ids[0, n) (the prompt and what was generated), once however often it occurs, has
 * its logit divided by penalty where positive and multiplied by it where negative. Applied
 * before sampling, greedy included; penalty 1 changes nothing. seen[vocab] is scratch. */
void sampling_penalize_repeats(float *logits, int vocab, const int32_t *ids, size_t n, float penalty, uint8_t *seen);

/* The next token under s, drawing from *rng (splitmix64) when sampling. scratch[vocab]. */
int sample_token(const float *logits, int vocab, const sampling *s, uint64_t *rng, scored_token *scratch);

#endif
