/* sampling.h: the next token from logits. A 128k-token vocabulary is never sorted whole per
 * token (that cost more than a small model's forward step): top-k takes its candidates from
 * a bounded heap, top-p sorts only the tokens its probability histogram says can stay. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "train/sampling.h"
#include "train/splitmix.h"

int argmax_logits(const float *logits, int vocab) {
    int best = 0;
    for (int i = 1; i < vocab; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

/* Higher logit first; equal logits by token id, so the order is the same on every run. */
static bool ranks_before(const scored_token *x, const scored_token *y) {
    return x->logit > y->logit || (x->logit == y->logit && x->token < y->token);
}

/* heap[0 .. n) keeps its lowest-ranked token at the root. */
static void sift_down(scored_token *heap, int n, int at) {
    for (;;) {
        int worst = at;
        const int left = 2 * at + 1, right = left + 1;
        if (left < n && ranks_before(&heap[worst], &heap[left])) worst = left;
        if (right < n && ranks_before(&heap[worst], &heap[right])) worst = right;
        if (worst == at) return;
        const scored_token t = heap[at];
        heap[at] = heap[worst];
        heap[worst] = t;
        at = worst;
    }
}

/* The m highest-ranked tokens (1 <= m <= vocab), best first, in best[0 .. m). */
static void top_tokens(const float *logits, int vocab, int m, scored_token *best) {
    for (int i = 0; i < m; i++) best[i] = (scored_token){logits[i], i, 0};
    for (int i = m / 2 - 1; i >= 0; i--) sift_down(best, m, i);
    for (int i = m; i < vocab; i++) {
        const scored_token t = {logits[i], i, 0};
        if (!ranks_before(&t, &best[0])) continue;
        best[0] = t;
        sift_down(best, m, 0);
    }
    for (int end = m - 1; end > 0; end--) { /* the worst left goes to the back each time */
        const scored_token t = best[0];
        best[0] = best[end];
        best[end] = t;
        sift_down(best, end, 0);
    }
}

/* top-p over ranked[0 .. n), whose weights sum to inside, with `outside` the weight of every
 * lower-ranked token not listed and total the vocabulary's: the tail sums from the lowest
 * token up, and a token goes when it and everything below it hold no more than 1 - top_p of
 * the probability (the top one always stays). Returns how many stay, or -1 when some token
 * outside the list would stay too. */
static int top_p_cut(const scored_token *ranked, int n, double outside, double total, double top_p) {
    const double dropped = (1 - top_p) * total;
    if (outside > dropped) return -1;
    double tail = outside;
    int cut = n;
    for (int i = n - 1; i > 0; i--) {
        tail += ranked[i].weight;
        if (tail > dropped) break;
        cut = i;
    }
    return cut;
}

/* Buckets of log-probability below the top token, 1/32 wide, for top_p_alone: tokens in one
 * bucket are within a factor e^(1/32) of each other; the last bucket takes everything lower. */
enum { P_BUCKETS = 1024, P_BUCKETS_PER_UNIT = 32 };

static int p_bucket(float logit, float highest, double temperature) {
    const double d = (highest - logit) / temperature * P_BUCKETS_PER_UNIT;
    return d < P_BUCKETS - 1 ? (int)d : P_BUCKETS - 1; /* NaN lands last too */
}

static int by_rank(const void *a, const void *b) {
    const scored_token *x = a, *y = b;
    return ranks_before(x, y) ? -1 : ranks_before(y, x) ? 1 : 0;
}

/* top-p without top-k: a histogram of the probability by bucket says which buckets the kept
 * tokens can come from; only those tokens are sorted (a flat distribution keeps many, a
 * peaked one few). The cut itself is top_p_cut's, on exact weights. */
static int top_p_alone(const float *logits, int vocab, const sampling *s, scored_token *scratch) {
    const float highest = logits[argmax_logits(logits, vocab)];
    double mass[P_BUCKETS] = {0}, total = 0;
    for (int i = 0; i < vocab; i++) {
        const double w = exp((logits[i] - highest) / s->temperature);
        mass[p_bucket(logits[i], highest, s->temperature)] += w;
        total += w;
    }
    /* the fewest leading buckets whose remainder could all be dropped */
    int last = P_BUCKETS - 1;
    double below = 0;
    while (last > 0 && below + mass[last] <= (1 - s->top_p) * total) below += mass[last--];
    for (;; last++) { /* rounding can leave one bucket short: widen until the cut is inside */
        int n = 0;
        double inside = 0;
        for (int i = 0; i < vocab; i++)
            if (p_bucket(logits[i], highest, s->temperature) <= last) {
                const double w = exp((logits[i] - highest) / s->temperature);
                scratch[n++] = (scored_token){logits[i], i, w};
            }
        qsort(scratch, (size_t)n, sizeof *scratch, by_rank);
        for (int i = 0; i < n; i++) inside += scratch[i].weight;
        const int cut = top_p_cut(scratch, n, n == vocab ? 0 : fmax(total - inside, 0), total, s->top_p);
        if (cut > 0) return cut;
    }
}

int sampling_candidates(const float *logits, int vocab, const sampling *s, scored_token *scratch) {
    const bool by_k = s->top_k > 0 && s->top_k < vocab, by_p = s->top_p < 1;
    if (!by_k && !by_p) return 0;
    if (by_k) {
        int kept = s->top_k;
        top_tokens(logits, vocab, kept, scratch);
        /* ties with the k-th stay; being outside, they all have higher ids than it */
        const scored_token kth = scratch[kept - 1];
        for (int i = kth.token + 1; i < vocab; i++)
            if (logits[i] == kth.logit) scratch[kept++] = (scored_token){logits[i], i, 0};
        double total = 0;
        for (int i = 0; i < kept; i++) {
            scratch[i].weight = exp((scratch[i].logit - scratch[0].logit) / s->temperature);
            total += scratch[i].weight;
        }
        return by_p ? top_p_cut(scratch, kept, 0, total, s->top_p) : kept;
    }
    return top_p_alone(logits, vocab, s, scratch);
}

void sampling_penalize_repeats(float *logits, int vocab, const int32_t *ids, size_t n, float penalty, uint8_t *seen) {
    if (penalty == 1.0f) return;
    memset(seen, 0, (size_t)vocab);
    for (size_t i = 0; i < n; i++) {
        const int32_t t = ids[i];
        if (t < 0 || t >= vocab || seen[t]) continue;
        seen[t] = 1;
        logits[t] = logits[t] < 0 ? logits[t] * penalty : logits[t] / penalty; /* fp32, as torch computes it */
    }
}

int sample_token(const float *logits, int vocab, const sampling *s, uint64_t *rng, scored_token *scratch) {
    if (s->temperature <= 0) return argmax_logits(logits, vocab);
    int kept = sampling_candidates(logits, vocab, s, scratch);
    if (kept == 0) { /* every token can be drawn: their weights in id order */
        const float highest = logits[argmax_logits(logits, vocab)];
        for (int i = 0; i < vocab; i++)
            scratch[i] = (scored_token){logits[i], i, exp((logits[i] - highest) / s->temperature)};
        kept = vocab;
    }
    double total = 0;
    for (int i = 0; i < kept; i++) total += scratch[i].weight;
    const double u = (double)(splitmix64_next(rng) >> 11) * 0x1.0p-53 * total;
    double acc = 0;
    for (int i = 0; i < kept; i++) {
        acc += scratch[i].weight;
        if (u < acc) return scratch[i].token;
    }
    return scratch[kept - 1].token; /* u within rounding of the total */
}
