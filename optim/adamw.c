#include "optim/adamw.h"

#include <math.h>

int adamw_create(adamw_state *s, const model *m, ct_error *err) {
    *s = (adamw_state){.k = m->k};
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].trainable) s->numel += m->params[i].numel;
    if (s->numel == 0) return ct_fail(err, "adamw: the model has no trainable parameters");
    /* One arena per moment, laid out like the trainable parameters in model order, so the
     * state of a parameter is a contiguous slice that can be saved by its name. */
    s->m = s->k->alloc(s->numel * sizeof(float));
    s->v = s->k->alloc(s->numel * sizeof(float));
    if (!s->m || !s->v) {
        size_t bytes = s->numel * sizeof(float);
        adamw_free(s);
        return ct_fail(err, "adamw: cannot allocate 2 x %zu bytes of optimizer state", bytes);
    }
    return 0;
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
