/* test_optim: AdamW, learning-rate schedules and gradient clipping against reference values
 * from torch.optim.AdamW, transformers' schedulers and torch.nn.utils.clip_grad_norm_
 * (tests/fixtures/optim/, made by scripts/gen_optim_fixtures.py). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "optim/adamw.h"
#include "optim/clip.h"
#include "optim/loss_scale.h"
#include "optim/schedule.h"
#include "tests/check.h"
#include "train/recipe.h"

/* ---- fixture records: "<name> <count> <values...>" one a line ---- */

#define MAX_RECORDS 128

typedef struct record {
    char name[64];
    int count;
    double *values;
} record;

typedef struct fixture {
    int n;
    record records[MAX_RECORDS];
} fixture;

static int fixture_load(fixture *fx, const char *relative) {
    char path[1024];
    check_source_path(relative, path, sizeof path);
    FILE *f = fopen(path, "r");
    memset(fx, 0, sizeof *fx);
    if (!f) {
        fprintf(stderr, "cannot open fixture %s\n", path);
        return -1;
    }
    while (fx->n < MAX_RECORDS) {
        record *r = &fx->records[fx->n];
        if (fscanf(f, "%63s %d", r->name, &r->count) != 2) break;
        r->values = calloc((size_t)(r->count > 0 ? r->count : 1), sizeof(double));
        for (int i = 0; i < r->count; i++)
            if (fscanf(f, "%lf", &r->values[i]) != 1) {
                fclose(f);
                return -1;
            }
        fx->n++;
    }
    fclose(f);
    return fx->n > 0 ? 0 : -1;
}

static void fixture_free(fixture *fx) {
    for (int i = 0; i < fx->n; i++) free(fx->records[i].values);
}

static const record *fixture_get(const fixture *fx, const char *name) {
    for (int i = 0; i < fx->n; i++)
        if (strcmp(fx->records[i].name, name) == 0) return &fx->records[i];
    fprintf(stderr, "fixture record '%s' missing\n", name);
    exit(2);
}

static void copy_floats(float *dst, const record *r) {
    for (int i = 0; i < r->count; i++) dst[i] = (float)r->values[i];
}

/* Relative closeness with a small absolute floor for values that pass near zero. */
static int count_far(const float *got, const record *want, double rel, double abs_floor) {
    int far = 0;
    for (int i = 0; i < want->count; i++) {
        double diff = fabs((double)got[i] - want->values[i]);
        if (diff > rel * fabs(want->values[i]) + abs_floor) {
            if (far == 0)
                fprintf(stderr, "  %s[%d]: %.9g vs %.9g\n", want->name, i, (double)got[i],
                        want->values[i]);
            far++;
        }
    }
    return far;
}

/* A model with hand-made parameters: only the fields the optimizer and clipping read. */
#define N_FAKE 4
typedef struct fake_model {
    model m;
    model_param params[N_FAKE];
    float data[N_FAKE][64];
    float grad[N_FAKE][64];
} fake_model;

static void fake_param(fake_model *f, int i, const char *name, int ndim, const double *shape,
                       bool trainable, bool decay) {
    model_param *p = &f->params[i];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    p->numel = 1;
    for (int d = 0; d < ndim; d++) {
        p->shape[d] = (int64_t)shape[d];
        p->numel *= (size_t)shape[d];
    }
    p->data = f->data[i];
    p->grad = f->grad[i];
    p->trainable = trainable;
    p->decay = decay;
}

/* ---- AdamW ---- */

static void test_adamw(void) {
    fixture fx;
    CHECK(fixture_load(&fx, "tests/fixtures/optim/adamw.txt") == 0);
    if (fx.n == 0) return;
    static fake_model f;
    memset(&f, 0, sizeof f);
    f.m.k = kernels_cpu();
    f.m.params = f.params;
    f.m.n_params = N_FAKE;
    /* Model order: w0, a frozen tensor the optimizer must skip, b0 (no decay), w1. */
    const char *names[3] = {"w0", "b0", "w1"};
    const int slot[3] = {0, 2, 3};
    char key[64];
    for (int j = 0; j < 3; j++) {
        snprintf(key, sizeof key, "%s.shape", names[j]);
        const record *shape = fixture_get(&fx, key);
        snprintf(key, sizeof key, "%s.decay", names[j]);
        bool decay = fixture_get(&fx, key)->values[0] != 0;
        fake_param(&f, slot[j], names[j], shape->count, shape->values, true, decay);
        snprintf(key, sizeof key, "%s.init", names[j]);
        copy_floats(f.data[slot[j]], fixture_get(&fx, key));
    }
    const double frozen_shape[1] = {5};
    fake_param(&f, 1, "frozen", 1, frozen_shape, false, true);
    f.params[1].grad = NULL;
    for (int i = 0; i < 5; i++) f.data[1][i] = 3.0f;

    const record *hp = fixture_get(&fx, "hparams");
    adamw_hparams h = {(float)hp->values[0], (float)hp->values[1], (float)hp->values[2],
                       (float)hp->values[3]};
    const record *lrs = fixture_get(&fx, "lrs");
    adamw_state s;
    ct_error err = {{0}};
    CHECK(adamw_create(&s, &f.m, &err) == 0);
    CHECK(s.numel == 12 + 4 + 6);
    CHECK(s.step == 0);

    for (int step = 1; step <= lrs->count; step++) {
        for (int j = 0; j < 3; j++) {
            snprintf(key, sizeof key, "%s.grad.%d", names[j], step);
            copy_floats(f.grad[slot[j]], fixture_get(&fx, key));
        }
        adamw_step(&s, &f.m, &h, (float)lrs->values[step - 1]);
        CHECK(s.step == step);
        for (int j = 0; j < 3; j++) {
            snprintf(key, sizeof key, "%s.after.%d", names[j], step);
            int far = count_far(f.data[slot[j]], fixture_get(&fx, key), 1e-6, 1e-7);
            CHECK_MSG(far == 0, "adamw step %d param %s: %d values off", step, names[j], far);
        }
    }
    bool frozen_untouched = true;
    for (int i = 0; i < 5; i++) frozen_untouched &= f.data[1][i] == 3.0f;
    CHECK(frozen_untouched);

    /* The state is laid out over the trainable parameters in model order: w0, b0, w1. */
    size_t offset = 0;
    for (int j = 0; j < 3; j++) {
        snprintf(key, sizeof key, "%s.m", names[j]);
        CHECK_MSG(count_far(s.m + offset, fixture_get(&fx, key), 1e-5, 1e-9) == 0, "m of %s", names[j]);
        snprintf(key, sizeof key, "%s.v", names[j]);
        CHECK_MSG(count_far(s.v + offset, fixture_get(&fx, key), 1e-5, 1e-12) == 0, "v of %s", names[j]);
        offset += f.params[slot[j]].numel;
    }
    adamw_free(&s);
    CHECK(s.m == NULL && s.v == NULL);

    /* A model with nothing to train is an error, not an empty optimizer. */
    f.m.n_params = 2;
    f.params[0].trainable = false;
    CHECK(adamw_create(&s, &f.m, &err) == -1);
    CHECK_CONTAINS(err.msg, "no trainable parameters");
    fixture_free(&fx);
}

/* ---- schedules ---- */

static void check_schedule(const fixture *fx, const char *record_name, recipe_schedule kind,
                           int warmup, double min_lr_ratio) {
    const record *config = fixture_get(fx, "config");
    lr_schedule s = {.kind = kind, .peak_lr = config->values[0], .warmup_steps = warmup,
                     .total_steps = (int)config->values[2], .min_lr_ratio = min_lr_ratio};
    const record *want = fixture_get(fx, record_name);
    int far = 0;
    for (int step = 0; step < want->count; step++) {
        double got = lr_at_step(&s, step);
        if (fabs(got - want->values[step]) > 1e-12 * config->values[0]) {
            if (!far) fprintf(stderr, "  %s step %d: %.17g vs %.17g\n", record_name, step, got,
                              want->values[step]);
            far++;
        }
    }
    CHECK_MSG(far == 0, "schedule %s: %d steps differ from transformers", record_name, far);
}

static void test_schedules(void) {
    fixture fx;
    CHECK(fixture_load(&fx, "tests/fixtures/optim/schedules.txt") == 0);
    if (fx.n == 0) return;
    int warmup = (int)fixture_get(&fx, "config")->values[1];
    check_schedule(&fx, "constant", SCHEDULE_CONSTANT, warmup, 0.0);
    check_schedule(&fx, "linear", SCHEDULE_LINEAR, warmup, 0.0);
    check_schedule(&fx, "cosine", SCHEDULE_COSINE, warmup, 0.0);
    check_schedule(&fx, "cosine_min0.1", SCHEDULE_COSINE, warmup, 0.1);
    check_schedule(&fx, "cosine_nowarmup", SCHEDULE_COSINE, 0, 0.0);
    check_schedule(&fx, "linear_min0.2", SCHEDULE_LINEAR, warmup, 0.2);

    /* Past total_steps the decay stays at its floor instead of rising again. */
    lr_schedule s = {.kind = SCHEDULE_COSINE, .peak_lr = 1.0, .warmup_steps = 2,
                     .total_steps = 10, .min_lr_ratio = 0.1};
    CHECK_CLOSE(lr_at_step(&s, 10), 0.1, 1e-12);
    CHECK_CLOSE(lr_at_step(&s, 15), 0.1, 1e-12);
    /* total <= warmup: no division by zero, the decay is over at once. */
    s.total_steps = 2;
    CHECK(isfinite(lr_at_step(&s, 2)));
    CHECK_CLOSE(lr_at_step(&s, 3), 0.1, 1e-12);

    recipe r;
    recipe_defaults(&r);
    r.optim.lr = 2e-4;
    r.optim.schedule = SCHEDULE_LINEAR;
    r.optim.warmup_steps = 7;
    r.optim.min_lr_ratio = 0.05;
    r.train.max_steps = 123;
    lr_schedule from = lr_schedule_from_recipe(&r);
    CHECK(from.kind == SCHEDULE_LINEAR);
    CHECK(from.peak_lr == 2e-4);
    CHECK(from.warmup_steps == 7);
    CHECK(from.total_steps == 123);
    CHECK(from.min_lr_ratio == 0.05);
    fixture_free(&fx);
}

/* ---- clipping ---- */

static void test_clip_case(const fixture *fx, const char *which) {
    static fake_model f;
    memset(&f, 0, sizeof f);
    f.m.k = kernels_cpu();
    f.m.params = f.params;
    f.m.n_params = N_FAKE;
    char key[64];
    for (int i = 0; i < 3; i++) {
        snprintf(key, sizeof key, "%s.shape%d", which, i);
        const record *shape = fixture_get(fx, key);
        char name[16];
        snprintf(name, sizeof name, "g%d", i);
        fake_param(&f, i, name, shape->count, shape->values, true, true);
        snprintf(key, sizeof key, "%s.grad%d", which, i);
        copy_floats(f.grad[i], fixture_get(fx, key));
    }
    /* A frozen parameter whose stale gradient buffer must not count. */
    const double shape[1] = {4};
    fake_param(&f, 3, "frozen", 1, shape, false, false);
    for (int i = 0; i < 4; i++) f.grad[3][i] = 1000.0f;

    double want_double = fixture_get(fx, strcat(strcpy(key, which), ".norm_double"))->values[0];
    double want_torch = fixture_get(fx, strcat(strcpy(key, which), ".norm"))->values[0];
    double max_norm = fixture_get(fx, strcat(strcpy(key, which), ".max_norm"))->values[0];
    CHECK_CLOSE(grad_global_norm(&f.m), want_double, 1e-12);

    /* max_norm <= 0 only measures. */
    float before = f.grad[0][0];
    CHECK_CLOSE(grad_clip(&f.m, 0.0), want_double, 1e-12);
    CHECK(f.grad[0][0] == before);

    double norm = grad_clip(&f.m, max_norm);
    CHECK_MSG(fabs(norm - want_torch) <= 1e-6 * want_torch, "%s norm %.9g vs torch %.9g", which,
              norm, want_torch);
    for (int i = 0; i < 3; i++) {
        snprintf(key, sizeof key, "%s.clipped%d", which, i);
        CHECK_MSG(count_far(f.grad[i], fixture_get(fx, key), 1e-6, 1e-8) == 0, "%s grad %d", which, i);
    }
    CHECK(f.grad[3][0] == 1000.0f);
    if (strcmp(which, "clipped") == 0) CHECK_CLOSE(grad_global_norm(&f.m), max_norm, 1e-5);
}

static void test_clip(void) {
    fixture fx;
    CHECK(fixture_load(&fx, "tests/fixtures/optim/clip.txt") == 0);
    if (fx.n == 0) return;
    test_clip_case(&fx, "clipped");
    test_clip_case(&fx, "unclipped");

    /* An overflowed gradient is reported, not spread: the caller skips the step. */
    static fake_model f;
    memset(&f, 0, sizeof f);
    f.m.k = kernels_cpu();
    f.m.params = f.params;
    f.m.n_params = 1;
    const double shape[1] = {3};
    fake_param(&f, 0, "g", 1, shape, true, false);
    f.grad[0][0] = INFINITY;
    f.grad[0][1] = 2.0f;
    CHECK(isinf(grad_clip(&f.m, 1.0)));
    CHECK(f.grad[0][1] == 2.0f);
    fixture_free(&fx);
}

/* GradScaler's rule: halve and skip on overflow, double after growth_interval good steps in
 * a row (the count restarts at every change); disabled = identity; exhausted below the floor. */
static void test_loss_scaler(void) {
    loss_scaler off;
    loss_scaler_init(&off, false, 65536.0, 10);
    CHECK(off.scale == 1.0 && !loss_scaler_update(&off, INFINITY) && off.scale == 1.0);
    CHECK(!loss_scaler_exhausted(&off));
    loss_scaler s;
    loss_scaler_init(&s, true, 1024.0, 3);
    CHECK(s.scale == 1024.0 && s.good_steps == 0);
    CHECK(!loss_scaler_update(&s, 5.0) && !loss_scaler_update(&s, 5.0) && s.scale == 1024.0 && s.good_steps == 2);
    CHECK(!loss_scaler_update(&s, 5.0) && s.scale == 2048.0 && s.good_steps == 0); /* third good step */
    CHECK(loss_scaler_update(&s, NAN) && s.scale == 1024.0 && s.good_steps == 0);
    CHECK(!loss_scaler_update(&s, 1.0) && !loss_scaler_update(&s, 1.0) && s.good_steps == 2);
    CHECK(loss_scaler_update(&s, INFINITY) && s.scale == 512.0 && s.good_steps == 0); /* count restarts */
    CHECK(!loss_scaler_exhausted(&s));
    int halvings = 0;
    while (!loss_scaler_exhausted(&s) && halvings < 100) {
        CHECK(loss_scaler_update(&s, INFINITY));
        halvings++;
    }
    CHECK_MSG(halvings == 18 && s.scale == 0x1p-9, "%d halvings from 512 to %g", halvings, s.scale);
}

int main(void) {
    test_loss_scaler();
    test_adamw();
    test_schedules();
    test_clip();
    return check_summary("test_optim");
}
