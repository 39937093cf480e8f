/* data: the ctune HDF5 token dataset (format in docs/data.md), its writer, and the sampler
 * that turns (seed, global sample index) into training sequences.
 *
 * A dataset is a list of documents; each document is token ids plus a per-token loss mask
 * (1 = this token is predicted in the loss). The sampler is a pure function of
 * (seed, epoch, global sample index), so any rank count and any resume point see the same
 * sequence of samples without replaying anything.
 * Does not own: tokenization (tokenizer.h), the synthetic tasks (synth.h). */
#ifndef CTUNE_DATA_H
#define CTUNE_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "train/error.h"

/* Identity of the tokenizer that produced a dataset, stored as HDF5 attributes. */
typedef struct dataset_tokenizer_info {
    char fingerprint[32];   /* tokenizer_fingerprint() */
    char name[256];         /* free text, e.g. the tokenizer.json path */
    int vocab_size;
    int bos_id, eos_id, pad_id; /* -1 if none */
} dataset_tokenizer_info;

/* ---- writing (streaming; the file appears only when dataset_writer_finish succeeds) ---- */
typedef struct dataset_writer dataset_writer;
int dataset_writer_open(dataset_writer **out, const char *path,
                        const dataset_tokenizer_info *info, ct_error *err);
int dataset_writer_add(dataset_writer *w, const int32_t *ids, const uint8_t *loss_mask,
                       size_t n_tokens, ct_error *err);
/* Writes offsets and attributes, closes, renames into place. */
int dataset_writer_finish(dataset_writer *w, ct_error *err);
/* Removes the temporary file (after an error). */
void dataset_writer_abort(dataset_writer *w);

/* ---- reading ---- */
typedef struct dataset {
    char path[1024];
    dataset_tokenizer_info tokenizer;
    int64_t n_docs;
    int64_t n_tokens;
    int64_t *doc_offsets; /* [n_docs + 1] */
    int32_t *tokens;      /* [n_tokens] */
    uint8_t *loss_mask;   /* [n_tokens] */
} dataset;

/* Opens and validates (offsets monotone, ids in [0, vocab), mask 0/1); errors name the file
 * and the dataset/attribute at fault. */
int dataset_open(dataset *ds, const char *path, ct_error *err);
void dataset_close(dataset *ds);

/* Prints a human summary (documents, tokens, masked share, length stats, tokenizer). */
int dataset_print_summary(const char *path, FILE *out, ct_error *err);

/* Document index of global sample g: epoch = g / n_docs, and within an epoch a
 * seed-and-epoch-keyed pseudo-random permutation of [0, n_docs) (pure function, O(1) memory). */
int64_t data_sample_doc(uint64_t seed, int64_t n_docs, int64_t global_sample);

/* Fills one micro-batch of `batch` rows for global samples first..first+batch-1 (one
 * document per row, truncated to seq+1 tokens): input_ids[s] = doc[s],
 * targets[s] = mask[s+1] ? doc[s+1] : -1, positions[s] = s; padding uses pad_id (or 0)
 * with target -1. When shuffle is false, row i takes document (first + i) % n_docs
 * (evaluation order). Arrays are [batch * seq]. */
void data_fill_batch(const dataset *ds, uint64_t seed, bool shuffle, int64_t first, int batch,
                     int seq, int32_t *input_ids, int32_t *targets, int32_t *positions);

/* ---- packing (recipe data.pack) ----
 * Packed row r (a global row index, like a global sample index above) considers the
 * documents of global samples r*K .. r*K+K-1 (data_sample_doc order, so one epoch still
 * visits every document once) and places them greedily, in that order, into seq input
 * slots: the first is always placed (truncated to seq+1 tokens, the last of those only a
 * target); each later one is placed whole if its length is at most the room left + 1 (its
 * final token then serves only as the target of the one before), and skipped otherwise (a
 * document is never split across rows). Each placed document gets doc_ids = its index in
 * the row (0, 1, ...) and positions 0, 1, ...; its last placed input predicts nothing
 * (target -1), so no target crosses a boundary. Padding takes the next doc id, pad_id and
 * target -1. A row is a pure function of (dataset, seed, K, seq, r): the same bits on any
 * rank count. */

/* K for packing: max(1, floor(seq / mean document length)), a function of the dataset and
 * seq only (so every rank computes the same value). */
int data_pack_docs_per_row(const dataset *ds, int seq);

/* Fills `batch` packed rows for global rows first..first+batch-1 (see above). Arrays are
 * [batch * seq]. */
void data_fill_packed_batch(const dataset *ds, uint64_t seed, int docs_per_row, int64_t first,
                            int batch, int seq, int32_t *input_ids, int32_t *targets,
                            int32_t *positions, int32_t *doc_ids);

/* The validation split of `ctune prep --val-ratio`: true when the document's keyed hash,
 * splitmix64(FNV-1a-64 of its token ids (little-endian int32) ^ splitmix64(seed)) scaled to
 * [0, 1) by its top 53 bits, is below ratio. A pure function of content and seed, so the
 * same document always lands in the same split (duplicates never straddle it). */
bool data_in_validation(const int32_t *ids, size_t n_ids, uint64_t seed, double ratio);

#endif
