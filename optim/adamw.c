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

void adamw_step_range(adamw_state *s, model *m, const adamw_hparams *h, double lr, const float *grad) {
    s->step++;
    double bias1 = 1.0 - pow(h->beta1, (double)s->step);
    double bias2 = 1.0 - pow(h->beta2, (double)s->step);
    const size_t begin = s->begin, end = s->begin + s->numel;
    for (int i = 0; i < m->n_params && s->numel > 0; i++) {
        model_param *p = &m->params[i];
        if (!p->trainable || !p->grad) continue;
        /* The kernel is element-wise, so a parameter cut by the slice edge updates the same. */
        size_t first = (size_t)(p->grad - m->grad_arena), last = first + p->numel;
        size_t lo = first > begin ? first : begin, hi = last < end ? last : end;
        if (lo >= hi) continue;
        double decay = p->decay ? h->weight_decay : 0.0;
        s->k->adamw(p->data + (lo - first), grad + (lo - begin), s->m + (lo - begin), s->v + (lo - begin),
                    hi - lo, lr, h->beta1, h->beta2, h->eps, decay, bias1, bias2);
    }
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
    s->step++;
    /* Bias corrections in double: beta^step underflows gracefully and 1 - beta^step keeps
     * its relative precision for small steps, where it matters most. */
    double bias1 = 1.0 - pow(h->beta1, (double)s->step);
    double bias2 = 1.0 - pow(h->beta2, (double)s->step);
    size_t offset = 0;
    for (int i = 0; i < m->n_params; i++) {
        model_param *p = &m->params[i];
        if (!p->trainable) continue;
        double decay = p->decay ? h->weight_decay : 0.0;
        s->k->adamw(p->data, p->grad, s->m + offset, s->v + offset, p->numel, lr, h->beta1,
                    h->beta2, h->eps, decay, bias1, bias2);
        offset += p->numel;
    }
}
