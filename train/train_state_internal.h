/* train_state_internal: what train_state.c (meta, writing) and train_state_load.c share. */
#ifndef CTUNE_TRAIN_STATE_INTERNAL_H
#define CTUNE_TRAIN_STATE_INTERNAL_H

#include "train/train_state.h"

/* The three tensors stored for each piece of a parameter, in this order. */
enum { TS_KIND_PARAM, TS_KIND_EXP_AVG, TS_KIND_EXP_AVG_SQ, TS_KIND_COUNT };
#define TS_NAME_MAX 256 /* "<parameter name>/exp_avg_sq[<a>:<b>]" */

const char *ts_kind_name(int kind); /* "param", "exp_avg", "exp_avg_sq" */
/* <checkpoint_dir>/state/<name>, or <checkpoint_dir>/state when name is NULL. */
int ts_state_path(char *out, size_t size, const char *checkpoint_dir, const char *name,
                  ct_error *err);
void ts_part_name(char *out, size_t size, int rank, int world_size);
size_t ts_trainable_numel(const model *m);
/* meta.json: meta plus the parts (malloc'd into *parts when parts is not NULL). */
int ts_read_meta(const char *checkpoint_dir, train_state_meta *meta, train_state_part **parts,
                 int *n_parts, ct_error *err);
int ts_write_meta(const char *path, const train_state_meta *meta, const train_state_part *parts,
                  int n_parts, ct_error *err);

#endif
