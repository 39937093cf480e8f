#include "optim/zero.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/clip_rule.h"
#include "optim/clip.h"

/* Where rank r's shard starts (r = world_size: the end). Rounded down: the extra blocks go to
 * the high ranks, so the last rank, which gets the partial block, is never short by more
 * than one block. */
static size_t shard_start(size_t numel, int world_size, int r) {
    size_t start = (size_t)r * clip_block_count(numel) / (size_t)world_size * CLIP_NORM_BLOCK;
    return start < numel ? start : numel;
}

void zero_shard_offsets(size_t numel, int world_size, size_t *offsets) {
    for (int r = 0; r <= world_size; r++) offsets[r] = shard_start(numel, world_size, r);
}

model_shard zero_shard_of(size_t numel, int world_size, int rank) {
    return (model_shard){shard_start(numel, world_size, rank), shard_start(numel, world_size, rank + 1)};
}

static size_t clamp(size_t x, size_t lo, size_t hi) { return x < lo ? lo : x > hi ? hi : x; }

/* z->run_offsets: the shard boundaries clipped to the flat values [lo, hi), relative to lo. */
static size_t *offsets_within(const zero_optimizer *z, size_t lo, size_t hi) {
    for (int r = 0; r <= z->d->world_size; r++) z->run_offsets[r] = clamp(z->offsets[r], lo, hi) - lo;
    return z->run_offsets;
}

/* Leaf i (0-based) merges its trailing one bits of i and parks the result at that level
 * unless it is the last leaf; the deepest level parked decides the count. */
int zero_tree_levels(int n_leaves) {
    int levels = 0;
    for (int i = 0; i + 1 < n_leaves; i++) {
        int level = 0;
        for (int c = i; c & 1; c >>= 1) level++;
        if (level + 1 > levels) levels = level + 1;
    }
    return levels;
}

void zero_memory_estimate(int stage, size_t total_numel, size_t trainable_numel, int world_size,
                          int rank, int accum_steps, zero_memory *out) {
    memset(out, 0, sizeof *out);
    if (world_size < 1 || rank < 0 || rank >= world_size) return;
    size_t *offsets = malloc(((size_t)world_size + 1) * sizeof *offsets);
    if (!offsets) return;
    zero_shard_offsets(trainable_numel, world_size, offsets);
    size_t shard = offsets[rank + 1] - offsets[rank], max_shard = 0;
    for (int r = 0; r < world_size; r++)
        if (offsets[r + 1] - offsets[r] > max_shard) max_shard = offsets[r + 1] - offsets[r];
    free(offsets);
    size_t levels = (size_t)zero_tree_levels(accum_steps), f = sizeof(float);
    out->param_bytes = total_numel * f;
    out->shard_numel = stage == 0 ? trainable_numel : shard;
    /* Stages 0, 1: the backward output, its parked partial sums (full size), and the reduced
     * gradient in place. Stage 2: the backward output, plus shard-sized reduced gradient and
     * partial sums. */
    if (stage >= 2) out->grad_bytes = trainable_numel * f + (1 + levels) * shard * f;
    else out->grad_bytes = (1 + levels) * trainable_numel * f;
    /* One rank keeps the norm's block sums and the clipping factor on the backend. */
    if (world_size == 1) out->grad_bytes += (clip_block_count(trainable_numel) + 1) * sizeof(double);
    out->optim_bytes = 2 * out->shard_numel * f;
    out->comm_bytes = dist_scratch_bytes(world_size, max_shard);
}

void zero_free(zero_optimizer *z) {
    if (z->k) {
        for (int l = 0; l < z->n_levels && z->levels; l++)
            if (z->levels[l]) z->k->release(z->levels[l]);
        if (z->reduced) z->k->release(z->reduced);
        if (z->sums_at) z->k->release(z->sums_at);
    }
    adamw_free(&z->adam);
    free(z->levels);
    free(z->offsets);
    free(z->run_offsets);
    free(z->block_sums);
    memset(z, 0, sizeof *z);
}

/* The step relies on the trainable weights lining up with the gradient arena (model.h). The
 * collectives take the model's backend memory (on_backend), so any backend works. */
static int check_model(const model *m, const size_t *offsets, const dist *d, ct_error *err) {
    if (m->grad_numel == 0 || (!m->grad_arena && !m->grad_held))
        return ct_fail(err, "zero: the model has no trainable parameters");
    const bool sharded = model_weights_sharded(m);
    for (int i = 0; i < m->n_params; i++) {
        const model_param *p = &m->params[i];
        if (!p->trainable || !p->grad) continue;
        const size_t first = p->flat;
        if (!sharded && (size_t)(p->data - m->weight_arena) != first)
            return ct_fail(err, "zero: trainable weight %s is not at the offset of its gradient", p->name);
        if (!p->sharded) continue;
        /* its fp32 slice must be exactly what this rank's shard updates */
        const size_t lo = clamp(offsets[d->rank], first, first + p->numel) - first;
        const size_t hi = clamp(offsets[d->rank + 1], first, first + p->numel) - first;
        if (lo < hi ? (p->master_lo != lo || p->master_hi != hi || !p->master) : p->master != NULL)
            return ct_fail(err, "zero: %s keeps fp32 values [%zu, %zu), but rank %d's shard updates [%zu, %zu) of it",
                           p->name, p->master_lo, p->master_hi, d->rank, lo, hi);
    }
    return 0;
}

bool zero_shards_weights(int stage, model_precision precision) {
    return stage >= 1 && precision != MODEL_FP32;
}

int zero_create(zero_optimizer *z, const model *m, const dist *d, int stage, int accum_steps,
                ct_error *err) {
    memset(z, 0, sizeof *z);
    if (stage < 0 || stage > 3) return ct_fail(err, "zero: stage %d is not 0, 1, 2 or 3", stage);
    if (accum_steps < 1) return ct_fail(err, "zero: %d accumulation steps", accum_steps);
    z->stage = stage;
    z->d = d;
    z->k = m->k;
    z->accum_steps = accum_steps;
    z->numel = m->grad_numel;
    z->offsets = malloc(((size_t)d->world_size + 1) * sizeof *z->offsets);
    z->run_offsets = malloc(((size_t)d->world_size + 1) * sizeof *z->run_offsets);
    z->block_sums = calloc(clip_block_count(z->numel), sizeof *z->block_sums);
    z->n_levels = zero_tree_levels(accum_steps);
    z->levels = calloc((size_t)z->n_levels + 1, sizeof *z->levels);
    if (!z->offsets || !z->run_offsets || !z->block_sums || !z->levels) {
        zero_free(z);
        return ct_fail(err, "zero: out of memory");
    }
    zero_shard_offsets(z->numel, d->world_size, z->offsets);
    if (check_model(m, z->offsets, d, err) ||
        (model_weights_sharded(m) && stage == 0 &&
         ct_fail(err, "zero: sharded fp32 weights need ZeRO stage 1, 2 or 3")) ||
        (m->grad_buckets && stage < 2 &&
         ct_fail(err, "zero: gradient buckets need ZeRO stage 2 or 3 (stages 0 and 1 keep the whole gradient)")) ||
        (m->gather_layers && stage != 3 &&
         ct_fail(err, "zero: layer-by-layer weights are ZeRO stage 3's, not stage %d's", stage)) ||
        (stage == 3 && !m->gather_layers &&
         ct_fail(err, "zero: stage 3 needs a model that gathers its layers' weights (model_layout)"))) {
        zero_free(z);
        return -1;
    }
    z->begin = z->offsets[d->rank];
    z->end = z->offsets[d->rank + 1];
    size_t shard = z->end - z->begin;
    z->level_numel = stage >= 2 ? shard : z->numel;
    int status = stage == 0 ? adamw_create_range(&z->adam, m, 0, z->numel, err)
                            : adamw_create_range(&z->adam, m, z->begin, z->end, err);
    if (!status && stage >= 2 && shard > 0 && !(z->reduced = z->k->alloc(shard * sizeof(float))))
        status = ct_fail(err, "zero: cannot allocate %zu bytes for the reduced gradient shard",
                         shard * sizeof(float));
    /* One rank: the norm and clipping factor can stay on the backend (zero_step_queued). */
    const size_t n_blocks = clip_block_count(z->numel);
    if (!status && d->world_size == 1 && !(z->sums_at = z->k->alloc((n_blocks + 1) * sizeof(double))))
        status = ct_fail(err, "zero: cannot allocate %zu bytes for the gradient norm's block sums",
                         (n_blocks + 1) * sizeof(double));
    if (z->sums_at) z->factor_at = (float *)(z->sums_at + n_blocks);
    for (int l = 0; !status && l < z->n_levels && z->level_numel > 0; l++)
        if (!(z->levels[l] = z->k->alloc(z->level_numel * sizeof(float))))
            status = ct_fail(err, "zero: cannot allocate %zu bytes for gradient partial sums",
                             z->level_numel * sizeof(float));
    if (status) zero_free(z);
    return status;
}

long long zero_micro_batch_index(const zero_optimizer *z, int a) {
    if (z->stage >= 2) return (long long)a * z->d->world_size + z->d->rank;
    return (long long)z->d->rank * z->accum_steps + a;
}

/* Feeds leaf (the newest micro-batch's gradient, n values) into the binary-counter stack.
 * Before leaf i, level l is parked exactly when bit l of i is set; the leaf absorbs the parked
 * sums of its trailing one bits (older = left operand), then parks, or on the last leaf
 * absorbs whatever is still parked, smallest (newest) first. This is DIST_TREE. */
static void tree_add_leaf(zero_optimizer *z, float *leaf, size_t n) {
    const kernels *k = z->k;
    int i = z->leaves++, level = 0;
    for (int c = i; c & 1; c >>= 1, level++)
        if (n) k->add(leaf, z->levels[level], leaf, n);
    if (z->leaves < z->accum_steps) {
        if (n) k->copy(z->levels[level], leaf, n * sizeof(float));
        return;
    }
    for (int l = level + 1; (i >> l) != 0; l++)
        if (((i >> l) & 1) && n) k->add(leaf, z->levels[l], leaf, n);
}

/* The communicator as the float collectives need it: they move the model's backend memory. */
static dist on_backend(const zero_optimizer *z) {
    dist d = *z->d;
    d.memory = z->k;
    return d;
}

/* Stage 2: the sum over the ranks of the flat values [lo, hi), held from src on, into the
 * part of the shard's reduced gradient they cover. The sum is per element, so a range's
 * values get the bits the whole arena's reduce-scatter would give them. Collective. */
static int reduce_range(zero_optimizer *z, const float *src, size_t lo, size_t hi, ct_error *err) {
    const dist d = on_backend(z);
    const size_t a = clamp(z->begin, lo, hi), b = clamp(z->end, lo, hi);
    float *out = a < b ? z->reduced + (a - z->begin) : z->reduced;
    return dist_reduce_scatter_floats(&d, src, out, offsets_within(z, lo, hi), err);
}

int zero_reduce_layer(zero_optimizer *z, model *m, int layer, size_t lo, size_t hi, const float *grads,
                      ct_error *err) {
    const int expected = m->cfg.num_hidden_layers - 1 - z->layers_reduced;
    if (z->stage < 2 || !m->grad_buckets)
        return ct_fail(err, "zero: layer gradients are reduced one by one only with buckets at stage 2 or 3");
    if (layer != expected || hi < lo || hi > z->numel)
        return ct_fail(err, "zero: gradients of layer %d (values [%zu, %zu)) where layer %d's were due", layer, lo,
                       hi, expected);
    z->layers_reduced++;
    return lo == hi ? 0 : reduce_range(z, grads, lo, hi, err);
}

/* With buckets: the gradients outside the layers, after the layers' own. model.c keeps them
 * in flat order from grad_held: those before the first layer (the embedding table), then
 * those after the last (the final norm, lm_head). */
static int reduce_outside(zero_optimizer *z, model *m, ct_error *err) {
    const int L = m->cfg.num_hidden_layers;
    if (z->layers_reduced != L)
        return ct_fail(err, "zero: a micro-batch's gradients came from %d of %d layers", z->layers_reduced, L);
    z->layers_reduced = 0;
    size_t before, after;
    model_layers_flat_range(m, &before, &after);
    if (before > 0 && reduce_range(z, m->grad_held, 0, before, err)) return -1;
    return after < z->numel ? reduce_range(z, m->grad_held + before, after, z->numel, err) : 0;
}

int zero_accumulate(zero_optimizer *z, model *m, ct_error *err) {
    if (z->leaves >= z->accum_steps)
        return ct_fail(err, "zero: micro-batch %d of a step with %d", z->leaves + 1, z->accum_steps);
    if (z->stage < 2) {
        tree_add_leaf(z, m->grad_arena, z->numel);
        return 0;
    }
    if (m->grad_buckets ? reduce_outside(z, m, err) : reduce_range(z, m->grad_arena, 0, z->numel, err)) return -1;
    tree_add_leaf(z, z->reduced, z->end - z->begin);
    return 0;
}

/* The step's first half, shared by both steps: checks that every micro-batch came, then
 * sums the gradient across ranks; *grad is this rank's reduced values, element 0 flat index
 * *first, *count of them. */
static int reduce_step(zero_optimizer *z, model *m, const dist *d, float **grad, size_t *first, size_t *count,
                       ct_error *err) {
    if (z->leaves != z->accum_steps)
        return ct_fail(err, "zero: step after %d of %d micro-batches", z->leaves, z->accum_steps);
    z->leaves = 0;
    if (z->stage >= 2) {
        *grad = z->reduced;
        *first = z->begin;
        *count = z->end - z->begin;
        return 0;
    }
    if (dist_reduce_scatter_floats(d, m->grad_arena, m->grad_arena + z->begin, z->offsets, err)) return -1;
    if (z->stage == 0 && dist_all_gather_floats(d, m->grad_arena, z->offsets, err)) return -1;
    *first = z->stage == 0 ? 0 : z->begin;
    *count = z->stage == 0 ? z->numel : z->end - z->begin;
    *grad = m->grad_arena + *first;
    return 0;
}

/* The step's second half: AdamW on this rank's values with the factor (grad_scale, or the
 * one at grad_scale_at), then the all-gather of the parameters. */
/* All-gathers the trainable values [lo, hi) (flat), held from base on in elements of
 * elem_bytes, each rank giving the part its shard updated. */
static int gather_run(const zero_optimizer *z, const dist *d, void *base, size_t elem_bytes, size_t lo, size_t hi,
                      ct_error *err) {
    return dist_all_gather(d, base, elem_bytes, offsets_within(z, lo, hi), err);
}

/* All-gathers the trainable parameters of `layer` (ALL_LAYERS: every one) whose gathered flag
 * is `gathered`, each rank giving the part its shard updated. A sharded weight travels as its
 * 16-bit copy (what the other ranks read; the owner's rounding is the one each would make,
 * and half the bytes), everything else in fp32: in runs of parameters whose buffers continue
 * one another (a layer's seven matrices, its two norms), one all-gather each. */
enum { ALL_LAYERS = -2 };
static int gather_params(const zero_optimizer *z, model *m, const dist *d, int layer, bool gathered, ct_error *err) {
    char *base = NULL;
    size_t elem = 0, lo = 0, hi = 0;
    for (int i = 0; i < m->n_params; i++) {
        model_param *p = &m->params[i];
        if (!p->trainable || !p->grad || p->gathered != gathered || (layer != ALL_LAYERS && p->layer != layer))
            continue;
        const size_t first = p->flat, e = p->sharded ? sizeof(uint16_t) : sizeof(float);
        char *at = p->sharded ? (char *)p->half : (char *)p->data;
        if (base && e == elem && first == hi && at == base + (hi - lo) * elem) {
            hi += p->numel;
            continue;
        }
        if (base && gather_run(z, d, base, elem, lo, hi, err)) return -1;
        base = at, elem = e, lo = first, hi = first + p->numel;
    }
    return base ? gather_run(z, d, base, elem, lo, hi, err) : 0;
}

/* Every rank's updated values to every rank; at stage 3 all but the layers' gathered weights,
 * whose copies are made from the shards when a pass next reads them (zero_gather_layer). */
static int gather_updated(const zero_optimizer *z, model *m, const dist *d, ct_error *err) {
    if (!model_weights_sharded(m)) return dist_all_gather_floats(d, m->weight_arena, z->offsets, err);
    return gather_params(z, m, d, ALL_LAYERS, false, err);
}

int zero_gather_layer(const zero_optimizer *z, model *m, int layer, ct_error *err) {
    if (z->stage != 3 || !m->gather_layers)
        return ct_fail(err, "zero: layer weights are gathered only at stage 3 (stage %d)", z->stage);
    const dist d = on_backend(z);
    for (int i = 0; i < m->n_params; i++) {
        const model_param *p = &m->params[i];
        if (p->gathered && p->layer == layer && p->master)
            z->k->to_half(p->half + p->master_lo, p->master, p->master_hi - p->master_lo,
                          model_half_format(m->precision));
    }
    return gather_params(z, m, &d, layer, true, err);
}

static int update_step(zero_optimizer *z, model *m, const dist *d, const adamw_hparams *h, double lr,
                       const float *grad, size_t first, size_t count, float grad_scale,
                       const float *grad_scale_at, ct_error *err) {
    adamw_step_range(&z->adam, m, h, lr, grad, grad_scale, grad_scale_at);
    if (z->stage != 0 && gather_updated(z, m, d, err)) return -1;
    /* AdamW wrote the 16-bit copies of the values this rank updated; the gathered rest are
     * re-rounded before the next GEMM. */
    model_weights_changed_except(m, first, first + count);
    return 0;
}

int zero_step(zero_optimizer *z, model *m, const adamw_hparams *h, double lr, double max_norm,
              double loss_scale, double *grad_norm, bool *skipped, ct_error *err) {
    *skipped = false;
    const dist comm = on_backend(z), *d = &comm;
    const size_t n_blocks = clip_block_count(z->numel);
    float *grad;
    size_t first, count;
    if (reduce_step(z, m, d, &grad, &first, &count, err)) return -1;
    /* Every block is measured by exactly one rank (its owner; in stage 0 every rank measures
     * all), and the others add +0: the all-reduce cannot change a bit. */
    memset(z->block_sums, 0, n_blocks * sizeof *z->block_sums);
    clip_block_sums(z->k, grad, first, first + count, z->block_sums);
    if (z->stage != 0 && dist_sum_doubles(d, z->block_sums, n_blocks, err)) return -1;
    /* Unscaling and clipping are one multiplication, made by AdamW as it reads each gradient;
     * with a power-of-two scale and no clipping it is exact. The rule is kernels.clip_factor's
     * (kernels/clip_rule.h), so a queued step gives the same bits. */
    float coef;
    clip_rule_apply(clip_rule_grouped_total(z->block_sums, n_blocks), max_norm, loss_scale, grad_norm, &coef);
    if (!isfinite(*grad_norm)) {
        *skipped = true;
        return 0;
    }
    return update_step(z, m, d, h, lr, grad, first, count, coef, NULL, err);
}

int zero_step_queued(zero_optimizer *z, model *m, const adamw_hparams *h, double lr, double max_norm,
                     double loss_scale, double *norm_at, ct_error *err) {
    if (!z->sums_at) return ct_fail(err, "zero: a queued step needs a single rank (%d here)", z->d->world_size);
    const dist comm = on_backend(z), *d = &comm;
    float *grad;
    size_t first, count;
    if (reduce_step(z, m, d, &grad, &first, &count, err)) return -1;
    z->k->sum_squares_blocks_to(grad, count, CLIP_NORM_BLOCK, z->sums_at);
    z->k->clip_factor(z->sums_at, clip_block_count(count), max_norm, loss_scale, norm_at, z->factor_at);
    return update_step(z, m, d, h, lr, grad, first, count, 1.0f, z->factor_at, err);
}

void zero_step_not_taken(zero_optimizer *z) {
    if (z->adam.step > 0) z->adam.step--;
}

/* ---- checkpoints of sharded fp32 weights ---- */

enum { FETCH_END = -1 };

/* One collective gather of parameter `index`'s fp32 values to rank 0's host. */
static int gather_param(const zero_optimizer *z, const model *m, int index, float *host, ct_error *err) {
    if (index < 0 || index >= m->n_params || !m->params[index].sharded)
        return ct_fail(err, "zero: parameter %d is not a sharded weight", index);
    const model_param *p = &m->params[index];
    const size_t first = p->flat, n = p->master_hi - p->master_lo;
    const size_t *parts = offsets_within(z, first, first + p->numel);
    float *mine = malloc((n ? n : 1) * sizeof(float));
    if (!mine) return ct_fail(err, "zero: out of memory for %zu values of %s", n, p->name);
    if (n) z->k->download(mine, p->master, n * sizeof(float));
    int rc = dist_gather_floats(z->d, mine, host, parts, 0, err); /* host memory: z->d as it is */
    free(mine);
    return rc;
}

int zero_fetch_param(const zero_optimizer *z, const model *m, int index, float *host, ct_error *err) {
    if (z->d->rank != 0) return ct_fail(err, "zero: only rank 0 fetches a sharded weight");
    int at = index;
    if (dist_broadcast(z->d, &at, sizeof at, 0, err)) return -1;
    return gather_param(z, m, index, host, err);
}

int zero_end_fetches(const zero_optimizer *z, ct_error *err) {
    int at = FETCH_END;
    return dist_broadcast(z->d, &at, sizeof at, 0, err);
}

int zero_serve_fetches(const zero_optimizer *z, const model *m, ct_error *err) {
    for (;;) {
        int index;
        if (dist_broadcast(z->d, &index, sizeof index, 0, err)) return -1;
        if (index == FETCH_END) return 0;
        if (gather_param(z, m, index, NULL, err)) return -1;
    }
}
