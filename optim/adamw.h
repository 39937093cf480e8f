/* adamw: AdamW over the trainable parameters of a model (fp32 state m, v), as
 * torch.optim.AdamW. The state is laid out in parameter order over the trainable
 * parameters, so it can be saved and re-sharded by parameter name.
 * Does not own: the learning-rate schedule (schedule.h) or clipping (clip.h). */
#ifndef CTUNE_ADAMW_H
#define CTUNE_ADAMW_H

#include <stddef.h>

#include "kernels/kernels.h"
#include "train/error.h"
#include "train/model.h"

/* Doubles, as the recipe holds them: torch forms 1 - beta2 etc. from these decimals. */
typedef struct adamw_hparams {
    double beta1, beta2, eps, weight_decay;
} adamw_hparams;

typedef struct adamw_state {
    const kernels *k;
    size_t begin;  /* flat trainable index of m[0], v[0] (0 unless a ZeRO shard) */
    size_t numel;  /* values held: all trainable ones, or the shard's */
    float *m, *v;  /* backend memory; NULL for an empty shard */
    long step;     /* optimizer steps taken */
} adamw_state;

int adamw_create(adamw_state *s, const model *m, ct_error *err);
void adamw_free(adamw_state *s);
/* One step at learning rate lr on every trainable parameter; weight decay only where
 * param->decay. Increments s->step first (bias corrections use the new step). In mixed
 * precision the update also writes each parameter's 16-bit copy (so the trainable copies are
 * fresh: model_weights_changed_except(m, 0, m->grad_numel)). */
void adamw_step(adamw_state *s, model *m, const adamw_hparams *h, double lr);

/* State for the slice [begin, end) of the flat trainable range only (a ZeRO shard; the flat
 * range is the trainable parameters in model order, as m->grad_arena). An empty slice is
 * valid and allocates nothing. */
int adamw_create_range(adamw_state *s, const model *m, size_t begin, size_t end, ct_error *err);
/* One step on the slice of s: parameters from m, gradients from grad (backend memory,
 * grad[0] is flat index s->begin) multiplied by grad_scale (unscaling and clipping; 1: none)
 * as they are read, or by the factor at grad_scale_at (backend memory, kernels.clip_factor's;
 * NULL: grad_scale), where a NaN leaves everything unchanged. Each value is updated exactly as
 * adamw_step would, so a sharded update gives the same bits as a whole one; the slice's
 * 16-bit copies are written too (mixed precision). Increments s->step first. */
void adamw_step_range(adamw_state *s, model *m, const adamw_hparams *h, double lr, const float *grad,
                      float grad_scale, const float *grad_scale_at);

#endif
