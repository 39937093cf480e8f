/* test_zero: the pieces that make data-parallel training give the same bits on any number
 * of ranks — the fixed summation tree (against a recursive definition written here), shard
 * layout, the accumulation of micro-batch gradients in optim/zero.c, the blocked gradient
 * norm, AdamW on shards against AdamW on everything, and memory estimates that fall as 1/N.
 *
 * Run plainly it tests one process. Run as `mpirun -np N test_zero --mpi` (tests/
 * dist_equivalence.sh does) it tests the reduce-scatter, the all-gathers (fp32 and 16-bit) and
 * the gather of train/dist.c between real ranks, with uneven and empty parts and parts large
 * enough to take several rounds. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "optim/adamw.h"
#include "optim/clip.h"
#include "optim/zero.h"
#include "tests/check.h"
#include "train/dist.h"
#include "train/model.h"
#include "train/splitmix.h"

/* Values spread over many binades, so that a different order of additions changes bits. */
static void fill_random(float *x, size_t n, uint64_t seed) {
    for (size_t i = 0; i < n; i++) {
        uint64_t u = splitmix64(seed ^ splitmix64(i));
        double unit = (double)(u >> 11) * 0x1p-53 - 0.5;
        int exponent = (int)((u >> 3) % 21) - 10;
        x[i] = (float)ldexp(unit, exponent);
    }
}

/* DIST_TREE as train/dist.h defines it: T(n) = T(first p) + T(rest), p the largest power of
 * two below n. Written recursively, independently of the iterative versions under test. */
static void reference_tree(float *out, float *const *leaves, int n, size_t len) {
    if (n == 1) {
        memcpy(out, leaves[0], len * sizeof *out);
        return;
    }
    int p = 1;
    while (p * 2 < n) p *= 2;
    float *left = malloc(len * sizeof *left), *right = malloc(len * sizeof *right);
    reference_tree(left, leaves, p, len);
    reference_tree(right, leaves + p, n - p, len);
    for (size_t i = 0; i < len; i++) out[i] = left[i] + right[i];
    free(left);
    free(right);
}

static void test_tree_sum_inplace(void) {
    const size_t len = 257;
    int order_mattered = 0;
    for (int n = 1; n <= 19; n++) {
        float *x = malloc((size_t)n * len * sizeof *x), *want = malloc(len * sizeof *want);
        float **leaves = malloc((size_t)n * sizeof *leaves);
        for (int i = 0; i < n; i++) {
            leaves[i] = malloc(len * sizeof(float));
            fill_random(leaves[i], len, 1000u + (uint64_t)i);
            memcpy(x + (size_t)i * len, leaves[i], len * sizeof(float));
        }
        reference_tree(want, leaves, n, len);
        dist_tree_sum_inplace(x, n, len, len);
        CHECK_MSG(memcmp(x, want, len * sizeof *x) == 0, "dist_tree_sum_inplace differs from DIST_TREE at n=%d", n);
        /* The test can fail: a left-to-right sum gives other bits. */
        for (size_t j = 0; j < len; j++) {
            float sequential = leaves[0][j];
            for (int i = 1; i < n; i++) sequential += leaves[i][j];
            if (sequential != want[j]) order_mattered++;
        }
        for (int i = 0; i < n; i++) free(leaves[i]);
        free(leaves);
        free(x);
        free(want);
    }
    CHECK_MSG(order_mattered > 100, "only %d sums depended on the order; the data is too tame", order_mattered);
}

static void test_shard_offsets(void) {
    const size_t B = CLIP_NORM_BLOCK;
    const size_t sizes[] = {1, B - 1, B, B + 1, 3 * B, 10 * B + 17, 155648, 820736};
    const int worlds[] = {1, 2, 3, 4, 7, 8};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        for (size_t w = 0; w < sizeof worlds / sizeof worlds[0]; w++) {
            size_t numel = sizes[s], offsets[9];
            int world = worlds[w];
            zero_shard_offsets(numel, world, offsets);
            bool ok = offsets[0] == 0 && offsets[world] == numel;
            size_t smallest = numel, largest = 0;
            for (int r = 0; r < world; r++) {
                size_t len = offsets[r + 1] - offsets[r];
                ok = ok && offsets[r + 1] >= offsets[r];
                ok = ok && (offsets[r] % B == 0 || offsets[r] == numel); /* whole blocks */
                const model_shard one = zero_shard_of(numel, world, r); /* one rank's, alone */
                ok = ok && one.begin == offsets[r] && one.end == offsets[r + 1];
                if (len < smallest) smallest = len;
                if (len > largest) largest = len;
            }
            CHECK_MSG(ok, "offsets of %zu values over %d ranks", numel, world);
            CHECK_MSG(largest - smallest <= B, "%zu values over %d ranks: shards %zu..%zu", numel, world,
                      smallest, largest);
        }
}

static void test_tree_levels(void) {
    CHECK(zero_tree_levels(1) == 0);
    CHECK(zero_tree_levels(2) == 1);
    CHECK(zero_tree_levels(3) == 2);
    CHECK(zero_tree_levels(4) == 2);
    CHECK(zero_tree_levels(5) == 3);
    CHECK(zero_tree_levels(8) == 3);
    CHECK(zero_tree_levels(9) == 4);
}

static int tiny_model(model *m) {
    ct_error err = {{0}};
    model_config cfg;
    if (model_config_preset(&cfg, "tiny", &err)) return -1;
    /* Smaller than the preset, still several CLIP_NORM_BLOCK blocks of trainable values. */
    cfg.vocab_size = 96;
    cfg.hidden_size = 32;
    cfg.intermediate_size = 80;
    cfg.num_hidden_layers = 2;
    cfg.num_attention_heads = 4;
    cfg.num_key_value_heads = 2;
    cfg.head_dim = 8;
    int status = model_create(m, &cfg, NULL, kernels_cpu(), &err);
    model_config_free(&cfg);
    if (status) fprintf(stderr, "%s\n", err.msg);
    return status;
}

/* One process, any stage: gradients fed micro-batch by micro-batch come out summed in the
 * DIST_TREE order, their norm is the blocked norm, and (lr 0, no clipping) weights stay. */
static void test_accumulation(model *m, int stage, int accum) {
    const size_t n = m->grad_numel;
    dist d = {.rank = 0, .world_size = 1, .local_rank = 0, .local_size = 1};
    zero_optimizer z;
    ct_error err = {{0}};
    CHECK_MSG(zero_create(&z, m, &d, stage, accum, &err) == 0, "%s", err.msg);
    float **leaves = malloc((size_t)accum * sizeof *leaves);
    for (int a = 0; a < accum; a++) {
        leaves[a] = malloc(n * sizeof(float));
        fill_random(leaves[a], n, 77u * (uint64_t)(a + 1));
        memcpy(m->grad_arena, leaves[a], n * sizeof(float));
        CHECK(zero_accumulate(&z, m, &err) == 0);
        CHECK(zero_micro_batch_index(&z, a) == a);
    }
    float *want = malloc(n * sizeof *want);
    reference_tree(want, leaves, accum, n);
    float *before = malloc(n * sizeof *before);
    memcpy(before, m->weight_arena, n * sizeof *before);
    adamw_hparams h = {0.9, 0.999, 1e-8, 0.0};
    double norm = -1;
    bool skipped = true;
    CHECK(zero_step(&z, m, &h, 0.0, 0.0, 1.0, &norm, &skipped, &err) == 0);
    CHECK(!skipped);
    const float *got = stage == 2 ? z.reduced : m->grad_arena;
    CHECK_MSG(memcmp(got, want, n * sizeof *want) == 0, "stage %d, %d micro-batches: sum not in DIST_TREE order",
              stage, accum);
    double blocks = 0, plain = 0;
    for (size_t start = 0; start < n; start += CLIP_NORM_BLOCK) {
        size_t len = n - start < CLIP_NORM_BLOCK ? n - start : CLIP_NORM_BLOCK;
        blocks += m->k->sum_squares(want + start, len);
    }
    for (size_t i = 0; i < n; i++) plain += (double)want[i] * want[i];
    CHECK_MSG(norm == sqrt(blocks), "stage %d: norm %.17g, blocked %.17g", stage, norm, sqrt(blocks));
    CHECK_CLOSE(norm, sqrt(plain), 1e-12);
    CHECK(memcmp(before, m->weight_arena, n * sizeof *before) == 0);
    /* A step needs all its micro-batches. */
    CHECK(zero_step(&z, m, &h, 0.0, 0.0, 1.0, &norm, &skipped, &err) == -1);
    for (int a = 0; a < accum; a++) free(leaves[a]);
    free(leaves);
    free(want);
    free(before);
    zero_free(&z);
}

/* The model's table with its AdamW calls counted. */
static int adamw_calls;
static const kernels *counted_inner;
static void counted_adamw(float *param, const float *grad, float *mom, float *v, size_t n,
                          const kernels_adamw_step *st) {
    adamw_calls++;
    counted_inner->adamw(param, grad, mom, v, n, st);
}

/* AdamW over three slices that cut through parameters equals AdamW over everything (one
 * call per parameter); each slice's update joins neighbouring parameters with the same
 * decay into one call. */
static void test_adamw_shards(model *m) {
    const size_t n = m->grad_numel;
    const size_t cuts[4] = {0, n / 3 + 5, 2 * n / 3 + 11, n};
    ct_error err = {{0}};
    fill_random(m->weight_arena, n, 5);
    float *weights0 = malloc(n * sizeof(float)), *whole = malloc(n * sizeof(float));
    memcpy(weights0, m->weight_arena, n * sizeof(float));
    adamw_hparams h = {0.9, 0.95, 1e-8, 0.1};
    adamw_state all, part[3];
    CHECK(adamw_create(&all, m, &err) == 0);
    for (int i = 0; i < 3; i++) CHECK(adamw_create_range(&part[i], m, cuts[i], cuts[i + 1], &err) == 0);
    for (int step = 1; step <= 3; step++) {
        fill_random(m->grad_arena, n, 100u + (uint64_t)step);
        memcpy(m->weight_arena, step == 1 ? weights0 : whole, n * sizeof(float));
        adamw_step(&all, m, &h, 1e-3 * step);
        memcpy(whole, m->weight_arena, n * sizeof(float));
    }
    memcpy(m->weight_arena, weights0, n * sizeof(float));
    kernels counted = *m->k;
    counted.adamw = counted_adamw;
    counted_inner = m->k;
    for (int i = 0; i < 3; i++) part[i].k = &counted;
    adamw_calls = 0;
    for (int step = 1; step <= 3; step++) {
        fill_random(m->grad_arena, n, 100u + (uint64_t)step);
        for (int i = 0; i < 3; i++) adamw_step_range(&part[i], m, &h, 1e-3 * step, m->grad_arena + cuts[i], 1.0f, NULL);
    }
    CHECK(memcmp(whole, m->weight_arena, n * sizeof(float)) == 0);
    /* fp32, trainable values contiguous: a call per run of equal decay, per slice */
    int runs = 0, params = 0;
    for (int c = 0; c < 3; c++) {
        const model_param *prev = NULL;
        for (int i = 0; i < m->n_params; i++) {
            const model_param *p = &m->params[i];
            size_t first = (size_t)(p->grad ? p->grad - m->grad_arena : 0);
            if (!p->grad || first + p->numel <= cuts[c] || first >= cuts[c + 1]) continue;
            params++;
            runs += !prev || prev->decay != p->decay;
            prev = p;
        }
    }
    printf("AdamW calls per step over 3 slices: %d (%d parameter pieces)\n", adamw_calls / 3, params);
    CHECK_MSG(adamw_calls == 3 * runs && runs < params, "AdamW calls %d for 3 steps, expected 3 x %d", adamw_calls,
              runs);
    for (int i = 0; i < 3; i++) part[i].k = m->k;
    for (int i = 0; i < 3; i++) {
        CHECK(memcmp(all.m + cuts[i], part[i].m, (cuts[i + 1] - cuts[i]) * sizeof(float)) == 0);
        CHECK(memcmp(all.v + cuts[i], part[i].v, (cuts[i + 1] - cuts[i]) * sizeof(float)) == 0);
        CHECK(part[i].step == 3 && part[i].begin == cuts[i]);
        adamw_free(&part[i]);
    }
    adamw_state empty;
    CHECK(adamw_create_range(&empty, m, n, n, &err) == 0 && empty.m == NULL);
    CHECK(adamw_create_range(&empty, m, 0, n + 1, &err) == -1);
    adamw_free(&all);
    free(weights0);
    free(whole);
}

static void test_memory_estimate(void) {
    const size_t total = 1000000, trainable = 155648; /* 38 blocks */
    zero_memory one;
    zero_memory_estimate(0, total, trainable, 1, 0, 4, &one);
    CHECK(one.optim_bytes == 2 * trainable * sizeof(float));
    /* backward output + 2 levels, and the queued step's 38 block sums and factor */
    CHECK(one.grad_bytes == 3 * trainable * sizeof(float) + 39 * sizeof(double));
    for (int world = 2; world <= 4; world *= 2)
        for (int stage = 0; stage <= 2; stage++) {
            size_t sum = 0, largest = 0;
            for (int rank = 0; rank < world; rank++) {
                zero_memory mem;
                zero_memory_estimate(stage, total, trainable, world, rank, 4 / world, &mem);
                CHECK(mem.param_bytes == total * sizeof(float));
                sum += mem.optim_bytes;
                if (mem.optim_bytes > largest) largest = mem.optim_bytes;
            }
            if (stage == 0) CHECK(largest == one.optim_bytes);
            else {
                CHECK(sum == one.optim_bytes); /* shards partition the state */
                CHECK(largest <= one.optim_bytes / world + 2 * CLIP_NORM_BLOCK * sizeof(float));
            }
        }
}

/* ---- between ranks (--mpi) ---- */

static void test_collectives(const dist *d, size_t part_scale) {
    const int world = d->world_size;
    size_t *offsets = malloc(((size_t)world + 1) * sizeof *offsets);
    offsets[0] = 0;
    for (int r = 0; r < world; r++) /* uneven parts; rank 1's is empty */
        offsets[r + 1] = offsets[r] + (r == 1 ? 0 : part_scale + (size_t)r * 7919);
    const size_t n = offsets[world];
    float **inputs = malloc((size_t)world * sizeof *inputs);
    for (int r = 0; r < world; r++) {
        inputs[r] = malloc(n * sizeof(float));
        fill_random(inputs[r], n, 4242u + (uint64_t)r);
    }
    size_t mine = offsets[d->rank + 1] - offsets[d->rank];
    float *want = malloc((n > 0 ? n : 1) * sizeof *want);
    reference_tree(want, inputs, world, n);
    ct_error err = {{0}};
    float *out = malloc((mine > 0 ? mine : 1) * sizeof *out);
    CHECK_MSG(dist_reduce_scatter_floats(d, inputs[d->rank], out, offsets, &err) == 0, "%s", err.msg);
    CHECK_MSG(memcmp(out, want + offsets[d->rank], mine * sizeof *out) == 0,
              "rank %d: reduce-scatter differs from DIST_TREE over ranks", d->rank);
    float *inplace = malloc(n * sizeof *inplace);
    memcpy(inplace, inputs[d->rank], n * sizeof *inplace);
    CHECK(dist_reduce_scatter_floats(d, inplace, inplace + offsets[d->rank], offsets, &err) == 0);
    CHECK(memcmp(inplace + offsets[d->rank], want + offsets[d->rank], mine * sizeof *out) == 0);
    /* All-gather the reduced parts: everyone ends with the whole sum. */
    CHECK(dist_all_gather_floats(d, inplace, offsets, &err) == 0);
    CHECK_MSG(memcmp(inplace, want, n * sizeof *want) == 0, "rank %d: all-gather", d->rank);
    /* 16-bit elements (sharded weights' copies): each rank's part, in place, everywhere. */
    uint16_t *bits = malloc((n > 0 ? n : 1) * sizeof *bits), *own = malloc((n > 0 ? n : 1) * sizeof *own);
    for (size_t i = 0; i < n; i++) bits[i] = (uint16_t)(splitmix64(i * 31 + 5) >> 48);
    memset(own, 0xA5, n * sizeof *own);
    memcpy(own + offsets[d->rank], bits + offsets[d->rank], mine * sizeof *own);
    CHECK_MSG(dist_all_gather(d, own, sizeof *own, offsets, &err) == 0, "%s", err.msg);
    CHECK_MSG(memcmp(own, bits, n * sizeof *own) == 0, "rank %d: 16-bit all-gather", d->rank);
    /* A gather to the last rank (a checkpoint's tensor): its buffer gets every part. */
    float *gathered = malloc((n > 0 ? n : 1) * sizeof *gathered);
    memset(gathered, 0xFF, n * sizeof *gathered);
    CHECK_MSG(dist_gather_floats(d, want + offsets[d->rank], gathered, offsets, world - 1, &err) == 0, "%s", err.msg);
    if (d->rank == world - 1) CHECK_MSG(memcmp(gathered, want, n * sizeof *want) == 0, "gather to rank %d", world - 1);
    free(bits), free(own), free(gathered);
    for (int r = 0; r < world; r++) free(inputs[r]);
    free(inputs);
    free(want);
    free(out);
    free(inplace);
    free(offsets);
}

static int run_mpi(int argc, char **argv) {
    dist d;
    ct_error err = {{0}};
    if (dist_init(&d, &argc, &argv, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    CHECK(dist_set_timeout(&d, 120, &err) == 0);
    test_collectives(&d, 1000);
    /* Parts over the per-round limit (4M floats shared by the ranks): several rounds. */
    test_collectives(&d, ((size_t)1 << 22) / (size_t)d.world_size + 12345);
    char name[64];
    snprintf(name, sizeof name, "test_zero --mpi (rank %d of %d)", d.rank, d.world_size);
    int status = check_summary(name);
    dist_finalize(&d);
    return status;
}

/* One optimizer step of `accum` micro-batches (gradients g * S, then g * S / 3, ...) at ZeRO
 * stage `stage` and loss scale S, by zero_step or (queued) zero_step_queued. Returns
 * the updated weights (restored in the model), the norm, the skip flag, the AdamW step count
 * and, unless moments is NULL, the moments m then v. */
static float *one_step(model *m, int stage, int accum, bool queued, const float *g, double S, double clip,
                       double *norm, bool *skipped, long *adam_steps, float **moments) {
    const size_t n = m->grad_numel;
    dist d = {.rank = 0, .world_size = 1, .local_rank = 0, .local_size = 1};
    zero_optimizer z;
    ct_error err = {{0}};
    CHECK_MSG(zero_create(&z, m, &d, stage, accum, &err) == 0, "%s", err.msg);
    float *before = malloc(n * sizeof *before), *after = malloc(n * sizeof *after);
    memcpy(before, m->weight_arena, n * sizeof *before);
    for (int a = 0; a < accum; a++) {
        for (size_t i = 0; i < n; i++) m->grad_arena[i] = (float)(g[i] * S / (a ? 3.0 : 1.0));
        CHECK(zero_accumulate(&z, m, &err) == 0);
    }
    adamw_hparams h = {0.9, 0.999, 1e-8, 0.01};
    if (queued) {
        double *norm_at = m->k->alloc(sizeof(double));
        CHECK_MSG(zero_step_queued(&z, m, &h, 1e-2, clip, S, norm_at, &err) == 0, "%s", err.msg);
        m->k->download(norm, norm_at, sizeof *norm);
        m->k->release(norm_at);
        *skipped = !isfinite(*norm);
        if (*skipped) zero_step_not_taken(&z);
    } else {
        CHECK_MSG(zero_step(&z, m, &h, 1e-2, clip, S, norm, skipped, &err) == 0, "%s", err.msg);
        CHECK(*skipped == !isfinite(*norm));
    }
    *adam_steps = z.adam.step;
    if (moments) {
        *moments = malloc(2 * n * sizeof(float));
        m->k->download(*moments, z.adam.m, n * sizeof(float));
        m->k->download(*moments + n, z.adam.v, n * sizeof(float));
    }
    memcpy(after, m->weight_arena, n * sizeof *after);
    memcpy(m->weight_arena, before, n * sizeof *before);
    free(before);
    zero_free(&z);
    return after;
}

/* fp16 loss scaling in the step: a power-of-two scale is divided out exactly (same update
 * as the unscaled gradient, with and without clipping, same reported norm); a non-finite
 * gradient changes no weight and takes no AdamW step. */
static void test_loss_scale_step(model *m) {
    const size_t n = m->grad_numel;
    float *g = malloc(n * sizeof *g);
    fill_random(g, n, 4242);
    for (int clipped = 0; clipped <= 1; clipped++) {
        double clip = clipped ? 1e-3 : 0.0, n1 = 0, n2 = 0;
        bool s1 = true, s2 = true;
        long steps1 = 0, steps2 = 0;
        float *plain = one_step(m, 1, 1, false, g, 1.0, clip, &n1, &s1, &steps1, NULL);
        float *scaled = one_step(m, 1, 1, false, g, 65536.0, clip, &n2, &s2, &steps2, NULL);
        CHECK(!s1 && !s2 && steps1 == 1 && steps2 == 1);
        CHECK_MSG(n1 == n2, "norm %.17g unscaled, %.17g from the scaled gradient", n1, n2);
        CHECK_MSG(memcmp(plain, scaled, n * sizeof *plain) == 0, "clip %g: scaled step differs", clip);
        CHECK(memcmp(plain, m->weight_arena, n * sizeof *plain) != 0); /* the step did something */
        free(plain);
        free(scaled);
    }
    g[n / 2] = INFINITY;
    double norm = 0;
    bool skipped = false;
    long steps = -1;
    float *after = one_step(m, 1, 1, false, g, 1024.0, 1.0, &norm, &skipped, &steps, NULL);
    CHECK(skipped && !isfinite(norm) && steps == 0);
    CHECK(memcmp(after, m->weight_arena, n * sizeof *after) == 0);
    free(after);
    free(g);
}

/* The queued step (norm and clipping factor on the backend, no wait) gives zero_step's bits:
 * norm, weights, moments, at every stage, clipped or not, with and without fp16's loss scale;
 * a non-finite gradient (fp16's overflow) changes nothing (weights, moments) and
 * zero_step_not_taken takes the step count back; more than one rank is refused. */
static void test_queued_step(model *m) {
    const size_t n = m->grad_numel;
    CHECK(clip_block_count(n) > 2); /* several blocks (groups of them: test_kernels_cpu, test_kernels_cuda) */
    float *g = malloc(n * sizeof *g);
    fill_random(g, n, 9191);
    const double scales[] = {1.0, 65536.0, 3.0}; /* 3: unscaling is then inexact, and must still agree */
    for (int stage = 0; stage <= 2; stage++)
        for (int clipped = 0; clipped <= 1; clipped++)
            for (int si = 0; si < 3; si++) {
                const double clip = clipped ? 1e-3 : 0.0, S = scales[si];
                double n1 = -1, n2 = -2;
                float *mom1 = NULL, *mom2 = NULL;
                long s1 = 0, s2 = 0;
                bool skip1 = true, skip2 = true;
                float *host = one_step(m, stage, 2, false, g, S, clip, &n1, &skip1, &s1, &mom1);
                float *queued = one_step(m, stage, 2, true, g, S, clip, &n2, &skip2, &s2, &mom2);
                CHECK_MSG(n1 == n2 && isfinite(n1), "stage %d clip %g scale %g: norm %.17g host, %.17g queued", stage,
                          clip, S, n1, n2);
                CHECK_MSG(memcmp(host, queued, n * sizeof *host) == 0 && memcmp(mom1, mom2, 2 * n * sizeof *mom1) == 0,
                          "stage %d clip %g scale %g: the queued step's weights or moments differ", stage, clip, S);
                CHECK(s1 == 1 && s2 == 1 && !skip1 && !skip2);
                CHECK(memcmp(host, m->weight_arena, n * sizeof *host) != 0);
                free(host), free(queued), free(mom1), free(mom2);
            }
    /* A NaN, and fp16's overflow (an infinity in the scaled gradient). */
    for (int overflow = 0; overflow <= 1; overflow++) {
        g[n - 3] = overflow ? INFINITY : NAN;
        double norm = 0;
        float *mom = NULL;
        long steps = -1;
        bool skipped = false;
        float *after = one_step(m, 1, 2, true, g, overflow ? 1024.0 : 1.0, 1.0, &norm, &skipped, &steps, &mom);
        bool zero_moments = true;
        for (size_t i = 0; i < 2 * n; i++) zero_moments = zero_moments && mom[i] == 0.0f;
        CHECK_MSG(skipped && !isfinite(norm) && steps == 0 && zero_moments &&
                      memcmp(after, m->weight_arena, n * sizeof *after) == 0,
                  "a queued step with a %s gradient: norm %g, %ld steps, and it changed the state",
                  overflow ? "infinite" : "NaN", norm, steps);
        free(after), free(mom);
    }
    free(g);
    /* Two ranks need the host's norm (summed across them). */
    dist two = {.rank = 0, .world_size = 2, .local_rank = 0, .local_size = 2};
    zero_optimizer z;
    ct_error err = {{0}};
    CHECK(zero_create(&z, m, &two, 1, 1, &err) == 0);
    z.leaves = 1;
    adamw_hparams h = {0.9, 0.999, 1e-8, 0.0};
    double sink = 0;
    CHECK(zero_step_queued(&z, m, &h, 1e-2, 1.0, 1.0, &sink, &err) == -1);
    CHECK_CONTAINS(err.msg, "single rank");
    zero_free(&z);
}

/* The tiny preset, smaller: a few CLIP_NORM_BLOCK blocks of trainable values. */
static void small_config(model_config *cfg, int layers, bool tied) {
    ct_error err = {{0}};
    CHECK(model_config_preset(cfg, "tiny", &err) == 0);
    cfg->vocab_size = 96, cfg->hidden_size = 32, cfg->intermediate_size = 80, cfg->num_hidden_layers = layers;
    cfg->num_attention_heads = 4, cfg->num_key_value_heads = 2, cfg->head_dim = 8;
    cfg->tie_word_embeddings = tied;
}

/* Sharded fp32 weights (model_create_in with a shard) in bf16-mixed: every rank keeps fp32
 * only for its shard's values of the shardable weights (which ones; the slices; the kept
 * values adding up over ranks to model_fp32_numel's), an upload keeps the owner's slice and
 * rounds everything into the 16-bit copy; on one rank a ZeRO step gives the unsharded model's
 * bits, fp32 and 16-bit; a shard other than the rank's, and a change of precision, are refused. */
static void test_sharded_weights(bool tied) {
    ct_error err = {{0}};
    model_config cfg;
    small_config(&cfg, 2, tied);
    const kernels *k = kernels_cpu();
    model plain;
    CHECK_MSG(model_create_in(&plain, &cfg, NULL, k, MODEL_BF16_MIXED, NULL, &err) == 0, "%s", err.msg);
    const size_t n = plain.grad_numel;
    float *values = malloc(n * sizeof *values);
    fill_random(values, n, 77);
    size_t shardable = 0, at = 0;
    for (int i = 0; i < plain.n_params; i++) {
        model_param *p = &plain.params[i];
        if (model_param_shardable(&plain, p, MODEL_BF16_MIXED)) shardable += p->numel;
        model_param_upload(&plain, p, values + at);
        at += p->numel;
    }
    model_weights_changed(&plain, false);
    CHECK(shardable > 0 && shardable < n);
    CHECK(!model_param_shardable(&plain, &plain.params[0], MODEL_BF16_MIXED)); /* the embedding table */

    enum { W = 3 };
    size_t offsets[W + 1], kept_total = 0;
    zero_shard_offsets(n, W, offsets);
    uint16_t *bits = malloc(n * sizeof *bits), *half = malloc(n * sizeof *half);
    for (int r = 0; r < W; r++) {
        const model_shard shard = {offsets[r], offsets[r + 1]};
        model part;
        CHECK_MSG(model_create_in(&part, &cfg, NULL, k, MODEL_BF16_MIXED, &shard, &err) == 0, "%s", err.msg);
        CHECK_MSG(part.weight_numel + part.master_numel == model_fp32_numel(&plain, &shard),
                  "rank %d of %d: %zu + %zu fp32 values, model_fp32_numel says %zu", r, W, part.weight_numel,
                  part.master_numel, model_fp32_numel(&plain, &shard));
        kept_total += part.weight_numel + part.master_numel;
        bool layout = true, slices = true, rounded = true;
        size_t first = 0;
        for (int i = 0; i < part.n_params; i++) {
            model_param *p = &part.params[i];
            model_param_upload(&part, p, values + first);
            const size_t lo = shard.begin > first ? shard.begin - first : 0;
            size_t hi = shard.end > first ? shard.end - first : 0;
            hi = hi < p->numel ? hi : p->numel;
            if (p->sharded != model_param_shardable(&part, p, MODEL_BF16_MIXED)) layout = false;
            if (p->sharded) {
                layout = layout && !p->data && p->half && p->grad;
                if (lo < hi) {
                    float *kept = malloc((hi - lo) * sizeof *kept);
                    k->download(kept, p->master, (hi - lo) * sizeof *kept);
                    slices = slices && p->master_lo == lo && p->master_hi == hi && model_param_fp32(p, lo) == p->master &&
                             memcmp(kept, values + first + lo, (hi - lo) * sizeof *kept) == 0;
                    free(kept);
                } else {
                    slices = slices && !p->master;
                }
                k->to_half(bits, values + first, p->numel, KERNELS_BF16);
                k->download(half, p->half, p->numel * sizeof *half);
                rounded = rounded && memcmp(bits, half, p->numel * sizeof *half) == 0;
            } else {
                layout = layout && p->data && !p->master;
            }
            first += p->numel;
        }
        CHECK_MSG(layout && slices && rounded, "rank %d of %d%s: layout %d, fp32 slices %d, 16-bit copies %d", r, W,
                  tied ? " (tied)" : "", layout, slices, rounded);
        CHECK(model_set_precision(&part, MODEL_FP32, &err) == -1);
        CHECK_CONTAINS(err.msg, "sharded");
        dist mismatch = {.rank = (r + 1) % W, .world_size = W, .local_rank = 0, .local_size = W};
        zero_optimizer z;
        CHECK(zero_create(&z, &part, &mismatch, 1, 1, &err) == -1);
        CHECK_CONTAINS(err.msg, "keeps fp32 values");
        model_free(&part);
    }
    CHECK_MSG(kept_total == W * (plain.weight_numel - shardable) + shardable,
              "the ranks keep %zu fp32 values in all; want %zu", kept_total, W * (plain.weight_numel - shardable) + shardable);

    /* One rank: the whole shard. The same step, the same bits. */
    const model_shard all = {0, n};
    model whole;
    CHECK_MSG(model_create_in(&whole, &cfg, NULL, k, MODEL_BF16_MIXED, &all, &err) == 0, "%s", err.msg);
    at = 0;
    for (int i = 0; i < whole.n_params; i++) {
        model_param_upload(&whole, &whole.params[i], values + at);
        at += whole.params[i].numel;
    }
    model_weights_changed(&whole, false);
    float *g = malloc(n * sizeof *g);
    fill_random(g, n, 78);
    model *both[2] = {&plain, &whole};
    dist one = {.rank = 0, .world_size = 1, .local_rank = 0, .local_size = 1};
    adamw_hparams h = {0.9, 0.999, 1e-8, 0.01};
    for (int w = 0; w < 2; w++) {
        zero_optimizer z;
        CHECK_MSG(zero_create(&z, both[w], &one, 2, 1, &err) == 0, "%s", err.msg);
        memcpy(both[w]->grad_arena, g, n * sizeof *g);
        double norm = 0;
        bool skipped = true;
        CHECK(zero_accumulate(&z, both[w], &err) == 0);
        CHECK_MSG(zero_step(&z, both[w], &h, 1e-2, 1.0, 1.0, &norm, &skipped, &err) == 0 && !skipped, "%s", err.msg);
        zero_free(&z);
    }
    bool same_fp32 = true, moved = false;
    for (int i = 0; i < plain.n_params; i++) {
        const model_param *a = &plain.params[i], *b = &whole.params[i];
        same_fp32 = same_fp32 && memcmp(model_param_fp32(a, 0), model_param_fp32(b, 0), a->numel * sizeof(float)) == 0;
    }
    at = 0;
    for (int i = 0; i < plain.n_params && !moved; i++) {
        moved = memcmp(model_param_fp32(&plain.params[i], 0), values + at, plain.params[i].numel * sizeof(float)) != 0;
        at += plain.params[i].numel;
    }
    CHECK_MSG(moved && same_fp32 && plain.half_numel == whole.half_numel &&
                  memcmp(plain.half_arena, whole.half_arena, plain.half_numel * sizeof(uint16_t)) == 0,
              "%s: one ZeRO step with sharded fp32 weights differs from the unsharded model's (fp32 %d)",
              tied ? "tied" : "untied", same_fp32);
    free(g), free(bits), free(half), free(values);
    model_free(&whole);
    model_free(&plain);
    model_config_free(&cfg);
}

/* grads_ready of a bucketed model: the layer's reduce-scatter (one rank: into the shard). */
static int reduce_layer_hook(void *ctx, model *m, int layer, size_t lo, size_t hi, const float *grads,
                             ct_error *err) {
    return zero_reduce_layer(ctx, m, layer, lo, hi, grads, err);
}

/* layer_weights of a stage-3 model: the layer's gather (one rank: rounding its shard), counted. */
typedef struct gather_log {
    zero_optimizer *z;
    int calls, order[64];
} gather_log;

static int gather_layer_hook(void *ctx, model *m, int layer, ct_error *err) {
    gather_log *g = ctx;
    if (g->calls < 64) g->order[g->calls] = layer;
    g->calls++;
    return zero_gather_layer(g->z, m, layer, err);
}

/* Stage 2 with gradient buckets: three micro-batches through model_step, each layer's
 * gradients reduced as the backward hands them over, give the whole-arena model's step to the
 * bit (weights and AdamW moments), tied and untied, fp32 and bf16 with sharded weights. In
 * bf16, stage 3 (the layers' 16-bit weights gathered from the shard before each pass reads
 * them, two layer buffers) gives the same bits too, asking for each layer only when its
 * buffer holds another. The pieces refuse misuse: buckets below stage 2, a layer out of
 * order, a micro-batch whose layers did not all come, gathered layers at another stage or
 * without their callback. */
static void test_bucketed_step(bool tied, model_precision precision) {
    ct_error err = {{0}};
    model_config cfg;
    small_config(&cfg, 3, tied);
    const kernels *k = kernels_cpu();
    const size_t n = model_trainable_numel(&cfg, NULL, &err);
    const model_shard all = {0, n};
    const bool mixed = precision != MODEL_FP32;
    const model_layout layouts[3] = {{.precision = precision, .shard = mixed ? &all : NULL},
                                     {.precision = precision, .shard = mixed ? &all : NULL, .grad_buckets = true},
                                     {.precision = precision, .shard = &all, .grad_buckets = true, .gather_layers = true}};
    const int n_models = mixed ? 3 : 2;
    model models[3];
    for (int w = 0; w < n_models; w++)
        CHECK_MSG(model_create_as(&models[w], &cfg, NULL, k, &layouts[w], &err) == 0, "%s", err.msg);
    model *whole = &models[0], *bucketed = &models[1], *gathered = &models[2];
    float *values = malloc(n * sizeof *values);
    fill_random(values, n, 91);
    for (int i = 0; i < whole->n_params; i++) { /* small weights: the random values are wide */
        const model_param *p = &whole->params[i];
        for (size_t j = 0; j < p->numel; j++) values[p->flat + j] = 0.05f * tanhf(values[p->flat + j]);
        for (int w = 0; w < n_models; w++) model_param_upload(&models[w], &models[w].params[i], values + p->flat);
    }
    for (int w = 0; w < n_models; w++) model_weights_changed(&models[w], false);
    dist one = {.rank = 0, .world_size = 1, .local_rank = 0, .local_size = 1};
    zero_optimizer z[3];
    CHECK(zero_create(&z[0], bucketed, &one, 1, 3, &err) != 0 && strstr(err.msg, "need ZeRO stage 2"));
    for (int w = 0; w < n_models; w++)
        CHECK_MSG(zero_create(&z[w], &models[w], &one, w == 2 ? 3 : 2, 3, &err) == 0, "%s", err.msg);
    gather_log log = {.z = &z[2]};
    if (mixed) {
        zero_optimizer wrong;
        CHECK(zero_create(&wrong, gathered, &one, 2, 3, &err) != 0 && strstr(err.msg, "stage 3's, not stage 2's"));
        CHECK(zero_create(&wrong, bucketed, &one, 3, 3, &err) != 0 && strstr(err.msg, "gathers its layers"));
        CHECK(zero_gather_layer(&z[1], bucketed, 0, &err) != 0 && strstr(err.msg, "only at stage 3"));
        /* two layer buffers instead of three layers' copies */
        CHECK_MSG(whole->half_numel - gathered->half_numel == gathered->layer_half_numel,
                  "16-bit copies: %zu whole, %zu gathered (a layer: %zu)", whole->half_numel, gathered->half_numel,
                  gathered->layer_half_numel);
        int32_t one_id[4] = {1, 2, 3, 4};
        float logits[96];
        CHECK_MSG(model_reserve(gathered, 2, 12, &err) == 0, "%s", err.msg);
        CHECK(model_last_logits(gathered, one_id, 4, logits, &err) != 0 && strstr(err.msg, "layer_weights callback"));
        gathered->layer_weights = gather_layer_hook;
        gathered->layer_weights_ctx = &log;
    }
    for (int w = 1; w < n_models; w++) {
        models[w].grads_ready = reduce_layer_hook;
        models[w].grads_ready_ctx = &z[w];
    }
    /* out of order, or a micro-batch without its layers: refused */
    CHECK(zero_reduce_layer(&z[1], bucketed, 0, 0, 0, NULL, &err) != 0 && strstr(err.msg, "layer 2's were due"));
    CHECK(zero_accumulate(&z[1], bucketed, &err) != 0 && strstr(err.msg, "from 0 of 3 layers"));
    int32_t ids[24], targets[24], none[24];
    for (int t = 0; t < 24; t++)
        ids[t] = (7 * t + 3) % 96, targets[t] = t % 5 == 4 ? -1 : (11 * t + 1) % 96, none[t] = -1;
    const model_batch b = {.input_ids = ids, .targets = targets, .batch = 2, .seq = 12};
    const model_batch unscored = {.input_ids = ids, .targets = none, .batch = 2, .seq = 12};
    adamw_hparams h = {0.9, 0.999, 1e-8, 0.01};
    double losses[3][6] = {{0}};
    for (int w = 0; w < n_models; w++) {
        CHECK_MSG(model_reserve(&models[w], 2, 12, &err) == 0, "%s", err.msg);
        for (int step = 0; step < 2; step++) {
            for (int a = 0; a < 3; a++) {
                long count = 0;
                model_zero_grads(&models[w]);
                /* the second step's middle micro-batch scores nothing: no backward to run, yet
                 * the same calls */
                const model_batch *batch = step == 1 && a == 1 ? &unscored : &b;
                CHECK_MSG(model_step(&models[w], batch, true, 0.01f, (uint64_t)(10 * step + a), &losses[w][3 * step + a],
                                     &count, &err) == 0,
                          "%s", err.msg);
                CHECK_MSG(zero_accumulate(&z[w], &models[w], &err) == 0, "%s", err.msg);
            }
            double norm = 0;
            bool skipped = true;
            CHECK_MSG(zero_step(&z[w], &models[w], &h, 1e-2, 1.0, 1.0, &norm, &skipped, &err) == 0 && !skipped, "%s",
                      err.msg);
        }
    }
    for (int w = 1; w < n_models; w++) {
        bool same = memcmp(z[0].adam.m, z[w].adam.m, n * sizeof(float)) == 0 &&
                    memcmp(z[0].adam.v, z[w].adam.v, n * sizeof(float)) == 0 &&
                    memcmp(losses[0], losses[w], sizeof losses[0]) == 0;
        bool moved = false;
        for (int i = 0; i < whole->n_params; i++) {
            const model_param *p = &whole->params[i];
            same = same && memcmp(model_param_fp32(p, 0), model_param_fp32(&models[w].params[i], 0),
                                  p->numel * sizeof(float)) == 0;
            moved = moved || memcmp(model_param_fp32(p, 0), values + p->flat, p->numel * sizeof(float)) != 0;
        }
        CHECK_MSG(same && moved, "%s %s: two ZeRO %d steps with gradient buckets differ from the whole gradient's",
                  tied ? "tied" : "untied", mixed ? "bf16-mixed" : "fp32", w == 2 ? 3 : 2);
    }
    if (mixed) {
        /* A gather only where the layer's buffer holds another: micro-batch 0 of a step
         * (both stale after the update) forward 0 1 2, backward 2 and 1 held, 0; the next
         * micro-batches find 0 and 1 where the backward left them: forward 2, backward 0
         * (also the unscored one, whose backward computes nothing but asks the same). */
        const int want[] = {0, 1, 2, 0, 2, 0, 2, 0, 0, 1, 2, 0, 2, 0, 2, 0};
        const int n_want = (int)(sizeof want / sizeof want[0]);
        bool order = log.calls == n_want;
        for (int i = 0; i < n_want && order; i++) order = log.order[i] == want[i];
        CHECK_MSG(order, "stage 3: %d layer gathers, expected %d in the order of the passes", log.calls, n_want);
    }
    for (int w = 0; w < n_models; w++) {
        zero_free(&z[w]);
        model_free(&models[w]);
    }
    free(values);
    model_config_free(&cfg);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--mpi") == 0) return run_mpi(argc, argv);
    test_sharded_weights(false);
    test_sharded_weights(true);
    for (int tied = 0; tied <= 1; tied++) {
        test_bucketed_step(tied, MODEL_FP32);
        test_bucketed_step(tied, MODEL_BF16_MIXED);
    }
    test_tree_sum_inplace();
    test_shard_offsets();
    test_tree_levels();
    test_memory_estimate();
    model m;
    if (tiny_model(&m) == 0) {
        const int accums[] = {1, 2, 3, 4, 5, 7, 8};
        for (int stage = 0; stage <= 2; stage++)
            for (size_t i = 0; i < sizeof accums / sizeof accums[0]; i++) test_accumulation(&m, stage, accums[i]);
        test_adamw_shards(&m);
        test_loss_scale_step(&m);
        test_queued_step(&m);
        model_free(&m);
    } else {
        CHECK(!"cannot build the tiny model");
    }
    return check_summary("test_zero");
}
