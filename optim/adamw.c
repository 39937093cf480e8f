#include "optim/adamw.h"

#include <math.h>

static int allocate_moments(adamw_state *s, ct_error *err) {
    if (s->numel == 0) return 0;
    s->m = s->k->alloc(s->numel * sizeof(float));
    s->v = s->k->alloc(s->numel * sizeof(float));
    if (!s->m || !s->v) {
        size_t bytes = s->numel * sizeof(float);
        adamw_free(s);
        return ct_fail(err, "adamw: cannot allocate 2 x %zu bytes of optimizer state", bytes);
    }
    return 0;
}

int adamw_create_range(adamw_state *s, const model *m, size_t begin, size_t end, ct_error *err) {
    *s = (adamw_state){.k = m->k, .begin = begin, .numel = end - begin};
    if (end < begin || end > m->grad_numel)
        return ct_fail(err, "adamw: slice [%zu, %zu) is outside the %zu trainable values", begin, end,
                       m->grad_numel);
    return allocate_moments(s, err);
}

/* The kernel's settings for parameter p at this step; its 16-bit copy (mixed precision) is
 * written by the update itself, from element `skip` of p on. */
static kernels_adamw_step step_settings(const adamw_state *s, const model *m, const model_param *p,
                                        const adamw_hparams *h, double lr, float grad_scale,
                                        const float *grad_scale_at, size_t skip) {
    return (kernels_adamw_step){
        .lr = lr, .beta1 = h->beta1, .beta2 = h->beta2, .eps = h->eps,
        .weight_decay = p->decay ? h->weight_decay : 0.0,
        .bias1 = 1.0 - pow(h->beta1, (double)s->step), .bias2 = 1.0 - pow(h->beta2, (double)s->step),
        .grad_scale = grad_scale,
        .grad_scale_at = grad_scale_at,
        /* (a gathered weight's copy is made from the shards when its layer is next read) */
        .half = p->half && m->precision != MODEL_FP32 && !p->gathered ? p->half + skip : NULL,
        .half_format = model_half_format(m->precision),
    };
}

/* A stretch of the slice that one kernel call updates: consecutive parameters whose values,
 * gradients, moments and 16-bit copies (if any) continue one another, with the same decay. */
typedef struct adamw_run {
    const model_param *first; /* its settings (decay, whether a 16-bit copy is written) */
    float *param;
    uint16_t *half;
    size_t lo, hi; /* flat trainable indices */
} adamw_run;

static void update_run(adamw_state *s, const model *m, const adamw_hparams *h, double lr, const float *grad,
                       float grad_scale, const float *grad_scale_at, const adamw_run *run) {
    kernels_adamw_step st = step_settings(s, m, run->first, h, lr, grad_scale, grad_scale_at, 0);
    st.half = run->half;
    s->k->adamw(run->param, grad + (run->lo - s->begin), s->m + (run->lo - s->begin), s->v + (run->lo - s->begin),
                run->hi - run->lo, &st);
}

void adamw_step_range(adamw_state *s, model *m, const adamw_hparams *h, double lr, const float *grad,
                      float grad_scale, const float *grad_scale_at) {
    s->step++;
    const size_t begin = s->begin, end = s->begin + s->numel;
    /* The kernel is element-wise, so a parameter cut by the slice edge, or parameters joined
     * into one call (a LoRA model's hundreds of small adapters: one launch), update the same. */
    adamw_run run = {0};
    for (int i = 0; i < m->n_params && s->numel > 0; i++) {
        model_param *p = &m->params[i];
        if (!p->trainable || !p->grad) continue;
        size_t first = p->flat, last = first + p->numel;
        size_t lo = first > begin ? first : begin, hi = last < end ? last : end;
        if (lo >= hi) continue;
        float *param = model_param_fp32(p, lo - first); /* a sharded weight's slice holds [lo, hi) */
        uint16_t *half = step_settings(s, m, p, h, lr, grad_scale, grad_scale_at, lo - first).half;
        const size_t len = run.hi - run.lo;
        const bool joins = run.first && lo == run.hi && param == run.param + len && p->decay == run.first->decay &&
                           (half ? run.half && half == run.half + len : !run.half);
        if (joins) {
            run.hi = hi;
            continue;
        }
        if (run.first) update_run(s, m, h, lr, grad, grad_scale, grad_scale_at, &run);
        run = (adamw_run){.first = p, .param = param, .half = half, .lo = lo, .hi = hi};
    }
    if (run.first) update_run(s, m, h, lr, grad, grad_scale, grad_scale_at, &run);
}

int adamw_create(adamw_state *s, const model *m, ct_error *err) {
    *s = (adamw_state){.k = m->k};
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].trainable) s->numel += m->params[i].numel;
    if (s->numel == 0) return ct_fail(err, "adamw: the model has no trainable parameters");
    /* One arena per moment, laid out like the trainable parameters in model order, so the
     * state of a parameter is a contiguous slice that can be saved by its name. */
    return allocate_moments(s, err);
}

void adamw_free(adamw_state *s) {
    if (s->k) {
        if (s->m) s->k->release(s->m);
        if (s->v) s->k->release(s->v);
    }
    s->m = s->v = NULL;
    s->numel = 0;
}

void adamw_step(adamw_state *s, model *m, const adamw_hparams *h, double lr) {
    /* Bias corrections in double (step_settings): beta^step underflows gracefully and
     * 1 - beta^step keeps its relative precision for small steps, where it matters most. */
    s->step++;
    size_t offset = 0;
    for (int i = 0; i < m->n_params; i++) {
        model_param *p = &m->params[i];
        if (!p->trainable) continue;
        kernels_adamw_step st = step_settings(s, m, p, h, lr, 1.0f, NULL, 0);
        s->k->adamw(p->data, p->grad, s->m + offset, s->v + offset, p->numel, &st);
        offset += p->numel;
    }
}
