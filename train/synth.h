/* synth: the built-in synthetic tasks of the default job (prompt + answer, loss on the
 * answer only), deterministic from a seed.
 *  addition: "12+345=" -> "357"   (operands of 1..digits digits)
 *  reversal: "rev abc=" -> "cba"  (lowercase strings of 1..digits*2 letters)
 * Does not own: tokenization or file formats (it calls tokenizer.h and data.h). */
#ifndef CTUNE_SYNTH_H
#define CTUNE_SYNTH_H

#include <stddef.h>
#include <stdint.h>

#include "train/error.h"
#include "train/tokenizer.h"

typedef enum { SYNTH_TRAIN, SYNTH_EVAL } synth_split;

/* Example `index` of a task's split (pure function of seed, split, index): writes
 * NUL-terminated prompt and answer. The two splits draw from disjoint problem sets (a
 * problem is held out iff a hash of the problem, keyed by seed, falls in 1/16 of its range),
 * so evaluation measures generalisation. Returns -1 on an unknown task. */
int synth_example(const char *task, int digits, uint64_t seed, synth_split split, int64_t index,
                  char *prompt, size_t prompt_size, char *answer, size_t answer_size,
                  ct_error *err);

/* Writes an HDF5 dataset of examples 0..n-1 of a split: [bos] prompt answer [eos], loss
 * mask on answer and eos (bos_id < 0: no bos). */
int synth_write_dataset(const char *path, const tokenizer *tok, const char *task, int digits,
                        uint64_t seed, synth_split split, int64_t n, int bos_id, int eos_id,
                        ct_error *err);
/* The same, also recording pad_id (-1: none) in the dataset's attributes. */
int synth_write_dataset_ex(const char *path, const tokenizer *tok, const char *task, int digits,
                           uint64_t seed, synth_split split, int64_t n, int bos_id, int eos_id,
                           int pad_id, ct_error *err);

#endif
