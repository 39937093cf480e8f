/* data_batch: the sampler (global sample index -> document) and micro-batch assembly.
 * Both are pure functions of their arguments, so any rank count and any resume point agree. */
#include "train/data.h"
#include "train/splitmix.h"

/* A keyed permutation of [0, n): a 4-round balanced Feistel network on the smallest
 * power-of-four domain >= n (each round is a bijection whatever the round function), with
 * cycle walking back into [0, n). The domain is < 4n, so a walk takes < 4 steps on average. */
int64_t data_sample_doc(uint64_t seed, int64_t n_docs, int64_t global_sample) {
    if (n_docs <= 0 || global_sample < 0) return -1;
    if (n_docs == 1) return 0;
    uint64_t epoch = (uint64_t)(global_sample / n_docs);
    uint64_t index = (uint64_t)(global_sample % n_docs);
    int bits = 0;
    while (bits < 64 && ((uint64_t)1 << bits) < (uint64_t)n_docs) bits++;
    int half = (bits + 1) / 2;
    uint64_t mask = half >= 64 ? ~0ull : ((uint64_t)1 << half) - 1;
    uint64_t key[4];
    uint64_t base = splitmix64(splitmix64(seed) ^ (epoch * 0xd1b54a32d192ed03ull));
    for (int r = 0; r < 4; r++) key[r] = splitmix64(base + (uint64_t)r);
    uint64_t x = index;
    do {
        uint64_t left = x >> half, right = x & mask;
        for (int r = 0; r < 4; r++) {
            uint64_t f = splitmix64(right ^ key[r]) & mask;
            uint64_t next_right = left ^ f;
            left = right;
            right = next_right;
        }
        x = (left << half) | right;
    } while (x >= (uint64_t)n_docs);
    return (int64_t)x;
}

void data_fill_batch(const dataset *ds, uint64_t seed, bool shuffle, int64_t first, int batch,
                     int seq, int32_t *input_ids, int32_t *targets, int32_t *positions) {
    int32_t pad = ds->tokenizer.pad_id >= 0 ? ds->tokenizer.pad_id : 0;
    for (int row = 0; row < batch; row++) {
        int64_t g = first + row;
        int64_t doc = shuffle ? data_sample_doc(seed, ds->n_docs, g) : g % ds->n_docs;
        int64_t begin = ds->doc_offsets[doc];
        int64_t len = ds->doc_offsets[doc + 1] - begin;
        if (len > (int64_t)seq + 1) len = (int64_t)seq + 1; /* seq inputs, each with a next token */
        const int32_t *tokens = ds->tokens + begin;
        const uint8_t *mask = ds->loss_mask + begin;
        size_t at = (size_t)row * (size_t)seq;
        for (int s = 0; s < seq; s++) {
            bool real = s < len;
            bool has_target = s + 1 < len && mask[s + 1];
            input_ids[at + s] = real ? tokens[s] : pad;
            targets[at + s] = has_target ? tokens[s + 1] : -1;
            positions[at + s] = s;
        }
    }
}

int data_pack_docs_per_row(const dataset *ds, int seq) {
    if (ds->n_docs <= 0 || ds->n_tokens <= 0) return 1;
    double mean = (double)ds->n_tokens / (double)ds->n_docs;
    double k = (double)seq / mean;
    if (k < 1.0) return 1;
    if (k > (double)seq) return seq; /* documents of < 1 token on average: bound the scan */
    return (int)k;
}

void data_fill_packed_batch(const dataset *ds, uint64_t seed, int docs_per_row, int64_t first,
                            int batch, int seq, int32_t *input_ids, int32_t *targets,
                            int32_t *positions, int32_t *doc_ids) {
    int32_t pad = ds->tokenizer.pad_id >= 0 ? ds->tokenizer.pad_id : 0;
    if (docs_per_row < 1) docs_per_row = 1;
    for (int row = 0; row < batch; row++) {
        int64_t g0 = (first + row) * (int64_t)docs_per_row;
        size_t at = (size_t)row * (size_t)seq;
        int used = 0, placed = 0;
        for (int c = 0; c < docs_per_row && used < seq; c++) {
            int64_t doc = data_sample_doc(seed, ds->n_docs, g0 + c);
            int64_t begin = ds->doc_offsets[doc];
            int64_t len = ds->doc_offsets[doc + 1] - begin;
            int64_t room = seq - used;
            if (len > room + 1) {
                if (placed > 0) continue;  /* never split: skip what does not fit */
                len = room + 1;            /* the first document is truncated instead */
            }
            const int32_t *tokens = ds->tokens + begin;
            const uint8_t *mask = ds->loss_mask + begin;
            int64_t n_inputs = len < room ? len : room;
            for (int64_t s = 0; s < n_inputs; s++) {
                bool has_target = s + 1 < len && mask[s + 1];
                input_ids[at + used + s] = tokens[s];
                targets[at + used + s] = has_target ? tokens[s + 1] : -1;
                positions[at + used + s] = (int32_t)s;
                doc_ids[at + used + s] = placed;
            }
            used += (int)n_inputs;
            placed++;
        }
        for (int s = used; s < seq; s++) {
            input_ids[at + s] = pad;
            targets[at + s] = -1;
            positions[at + s] = s - used;
            doc_ids[at + s] = placed;
        }
    }
}

bool data_in_validation(const int32_t *ids, size_t n_ids, uint64_t seed, double ratio) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n_ids; i++) {
        uint32_t v = (uint32_t)ids[i];
        for (int b = 0; b < 4; b++) {
            h ^= (v >> (8 * b)) & 0xffu;
            h *= 0x100000001b3ull;
        }
    }
    uint64_t x = splitmix64(h ^ splitmix64(seed));
    return (double)(x >> 11) * 0x1.0p-53 < ratio;
}
