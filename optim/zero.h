/* zero: the data-parallel optimizer step — how the gradients of a global batch are summed
 * (one fixed tree over micro-batches and ranks), the gradient norm and clipping, and AdamW
 * with its state replicated (ZeRO stage 0) or sharded over the ranks (stages 1 to 3),
 * followed by the all-gather of the updated parameters.
 *
 *  stage 0: every rank holds the whole reduced gradient and the whole AdamW state and updates
 *           every parameter (reduce-scatter + all-gather of the gradient = an all-reduce).
 *  stage 1: AdamW m and v only for the rank's shard of the flat trainable range; gradients are
 *           reduce-scattered into the shard (in place in the full gradient buffer), the rank
 *           updates its shard, the parameters are all-gathered.
 *  stage 2: also the reduced gradient and its partial sums exist only for the shard: every
 *           micro-batch's gradient is reduce-scattered as soon as it is computed, layer by
 *           layer out of the model's gradient buckets (zero_reduce_layer), so not even the
 *           backward holds a full-size gradient.
 *  stage 3: stage 2, and the 16-bit weight copies of the decoder layers (mixed precision,
 *           full fine-tuning) exist only for the layer a pass is at: before the forward or
 *           backward reads layer l, its copies are all-gathered from the ranks' fp32 shards
 *           into one of two layer buffers (zero_gather_layer, model.layer_weights). The
 *           embedding, the final norm and lm_head stay whole. The same bits as stage 2.
 * In fp32 the parameters are the master weights; every rank keeps all of them because its
 * forward pass needs them, so what shrinks with the rank count is the AdamW state (and, in
 * stage 2, the gradient sums). In mixed precision at stages 1 and 2 the fp32 values of the
 * weight matrices are sharded too (zero_shards_weights): the forward reads their 16-bit
 * copies, which the all-gather moves.
 *
 * Same bits at any rank count: the global batch is G/micro micro-batches j = 0, 1, ...;
 * their gradients are added in the DIST_TREE order over j (train/dist.h). Stages 0 and 1 give
 * rank r the contiguous micro-batches j = r*accum + a and reduce the local sum across ranks;
 * stages 2 and 3 give it j = a*world + r and reduce each micro-batch across ranks first.
 * Both build the same tree when the accumulation count (stages 0, 1) or the world size (2, 3)
 * is a power of two; otherwise the results agree to rounding. Shards are whole
 * CLIP_NORM_BLOCK blocks, so the blocked gradient norm (optim/clip.h) is the same bits too.
 * Does not own: the forward/backward (model.h), the communicator (train/dist.h). */
#ifndef CTUNE_ZERO_H
#define CTUNE_ZERO_H

#include <stddef.h>

#include "optim/adamw.h"
#include "train/dist.h"
#include "train/error.h"
#include "train/model.h"

/* Bytes a rank holds, by kind (an estimate for --dry-run and the run log). */
typedef struct zero_memory {
    size_t param_bytes;  /* every weight (fp32; the master copy on the CPU) */
    size_t grad_bytes;   /* backward output, partial sums of the accumulation, reduced gradient */
    size_t optim_bytes;  /* AdamW m and v of the values this rank updates */
    size_t comm_bytes;   /* scratch of the collectives */
    size_t shard_numel;  /* trainable values this rank updates */
} zero_memory;

/* Shard boundaries: offsets[world_size + 1] over numel values, each shard whole
 * CLIP_NORM_BLOCK blocks (the last may end short), as even as whole blocks allow; when there
 * are fewer blocks than ranks, the low ranks own nothing. */
void zero_shard_offsets(size_t numel, int world_size, size_t *offsets);
/* The same boundaries for one rank: [offsets[rank], offsets[rank + 1]). */
model_shard zero_shard_of(size_t numel, int world_size, int rank);
/* Partial-sum buffers the accumulation tree over n_leaves micro-batches keeps. */
int zero_tree_levels(int n_leaves);
void zero_memory_estimate(int stage, size_t total_numel, size_t trainable_numel, int world_size,
                          int rank, int accum_steps, zero_memory *out);

typedef struct zero_optimizer {
    int stage;
    const dist *d;
    const kernels *k;
    int accum_steps;
    size_t numel;        /* flat trainable values (model grad_numel) */
    size_t *offsets;     /* [world_size + 1] shard boundaries */
    size_t *run_offsets; /* [world_size + 1] scratch: the boundaries within one all-gather */
    size_t begin, end;   /* this rank's shard */
    adamw_state adam;    /* m, v of [begin, end) (stages 1, 2) or of everything (stage 0) */
    float *reduced;      /* stage 2: the shard's reduced gradient; stages 0, 1 reduce into the
                          * model's gradient buffer instead */
    int n_levels;        /* levels[l] parks a sum of 2^l micro-batches */
    float **levels;
    size_t level_numel;  /* numel (stages 0, 1) or the shard's size (stage 2) */
    int leaves;          /* micro-batches added in the current step */
    int layers_reduced;  /* gradient buckets: layers of the current micro-batch reduced so far */
    double *block_sums;  /* per-block sums of squares of the gradient */
    double *sums_at;     /* one rank only: the block sums in backend memory (zero_step_queued) */
    float *factor_at;    /* ... and the clipping factor, after them */
} zero_optimizer;

/* For model m (trainable values first in the weight arena, as model.h lays them out) on the
 * ranks of d. Not collective. */
int zero_create(zero_optimizer *z, const model *m, const dist *d, int stage, int accum_steps,
                ct_error *err);
void zero_free(zero_optimizer *z);

/* Global index (0 .. world*accum - 1) of this rank's a-th micro-batch of a step: the global
 * samples it holds are j*micro + [0, micro) of the step's batch, and its dropout mask is a
 * function of j, never of the rank. */
long long zero_micro_batch_index(const zero_optimizer *z, int a);

/* Adds the gradient of the next micro-batch (a = 0, 1, ... in order), which model_step has
 * just computed into the zeroed m->grad_arena, to the step's sum. Stage 2 reduce-scatters it
 * across ranks, so it is collective there: call it only after the ranks agreed that the
 * micro-batch succeeded. */
int zero_accumulate(zero_optimizer *z, model *m, ct_error *err);
/* Stage 3: model.layer_weights, called before a pass reads decoder layer `layer`: the rank
 * rounds the fp32 values its shard holds of the layer's gathered weights into their 16-bit
 * copies (the rounding AdamW would write) and all-gathers the copies, in runs of neighbours.
 * Collective: every rank must ask for the same layers in the same order (model.h). */
int zero_gather_layer(const zero_optimizer *z, model *m, int layer, ct_error *err);
/* Stage 2 with gradient buckets (model.grad_buckets): model_step's grads_ready callback for
 * the current micro-batch; reduce-scatters the layer's gradients [lo, hi) (at grads) into
 * the shard while the backward goes on below, so zero_accumulate then reduces only the
 * gradients outside the layers. Same bits as one reduce-scatter of the whole gradient.
 * Collective: the ranks must agree first that every one computed the micro-batch. */
int zero_reduce_layer(zero_optimizer *z, model *m, int layer, size_t lo, size_t hi, const float *grads,
                      ct_error *err);

/* After the last micro-batch: sums the gradient across ranks, measures its norm, divides the
 * gradient by loss_scale (fp16 loss scaling; 1 otherwise) and clips it to max_norm (<= 0: no
 * clipping), in one pass, applies AdamW at lr to this rank's values, all-gathers the
 * parameters and tells the model its trainable weights changed. *grad_norm is the norm of
 * the unscaled gradient before clipping. A non-finite norm (an overflow) changes nothing:
 * *skipped is set and the caller decides (skip the step under fp16, else stop). Collective;
 * every rank gets the same norm and the same decision. */
int zero_step(zero_optimizer *z, model *m, const adamw_hparams *h, double lr, double max_norm,
              double loss_scale, double *grad_norm, bool *skipped, ct_error *err);

/* zero_step on a single rank, with no wait for the device: the block sums, the norm and the
 * clipping factor (unscaling by loss_scale included) are computed on the backend
 * (kernels.clip_factor) and AdamW reads the factor there. The norm is written to norm_at
 * (backend memory; the trainer passes model_loss_slots_scalar, downloaded with the step's
 * losses), the same bits as zero_step's *grad_norm. A non-finite norm (fp16's overflow)
 * changes no parameter and no moment (the factor is NaN, which AdamW skips on); the caller,
 * once it reads the norm, calls zero_step_not_taken and, under fp16, halves the scale before
 * it queues the next step. Fails on more than one rank. */
int zero_step_queued(zero_optimizer *z, model *m, const adamw_hparams *h, double lr, double max_norm,
                     double loss_scale, double *norm_at, ct_error *err);
/* Takes back the optimizer step counter of a queued step whose norm was not finite. */
void zero_step_not_taken(zero_optimizer *z);

/* Whether a run at this stage and precision shards its fp32 weights (model_create_in with the
 * rank's shard, zero_shard_offsets): every mixed-precision run at stage 1, 2 or 3. The 16-bit
 * copies are then what the step's all-gather moves for them. */
bool zero_shards_weights(int stage, model_precision precision);
/* Checkpoints of such a model: rank 0 writes the hub folder, fetching each sharded weight's
 * fp32 values [numel] into host with zero_fetch_param (a broadcast of the index, then a
 * gather of the owners' slices: one tensor in memory at a time, whatever order the writer
 * wants them in); the other ranks run zero_serve_fetches meanwhile, which returns once rank 0
 * calls zero_end_fetches — which it must, whether its write succeeded or not. Collective. */
int zero_fetch_param(const zero_optimizer *z, const model *m, int index, float *host, ct_error *err);
int zero_end_fetches(const zero_optimizer *z, ct_error *err);
int zero_serve_fetches(const zero_optimizer *z, const model *m, ct_error *err);

#endif
