#include "optim/clip.h"

#include <math.h>

double grad_global_norm(const model *m) {
    /* Per-parameter partial sums come back in double and are added in model order, so the
     * norm is the same on every backend and every run. */
    double sum = 0.0;
    for (int i = 0; i < m->n_params; i++) {
        const model_param *p = &m->params[i];
        if (p->trainable && p->grad) sum += m->k->sum_squares(p->grad, p->numel);
    }
    return sqrt(sum);
}

double grad_clip(model *m, double max_norm) {
    double norm = grad_global_norm(m);
    /* A non-finite norm means an overflow: scaling would turn every gradient into NaN or 0,
     * so leave them for the caller, which skips the step (fp16 loss scaling) or stops. */
    if (max_norm <= 0.0 || !isfinite(norm)) return norm;
    double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0) {
        for (int i = 0; i < m->n_params; i++) {
            model_param *p = &m->params[i];
            if (p->trainable && p->grad) m->k->scale(p->grad, (float)coef, p->numel);
        }
    }
    return norm;
}
