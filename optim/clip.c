#include "optim/clip.h"

#include <math.h>

#include "kernels/clip_rule.h"

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
    double coef = clip_rule_coefficient(norm, max_norm);
    if (coef < 1.0) {
        for (int i = 0; i < m->n_params; i++) {
            model_param *p = &m->params[i];
            if (p->trainable && p->grad) m->k->scale(p->grad, (float)coef, p->numel);
        }
    }
    return norm;
}

size_t clip_block_count(size_t numel) {
    return (numel + CLIP_NORM_BLOCK - 1) / CLIP_NORM_BLOCK;
}

void clip_block_sums(const kernels *k, const float *grad, size_t begin, size_t end, double *sums) {
    if (end > begin) k->sum_squares_blocks(grad, end - begin, CLIP_NORM_BLOCK, sums + begin / CLIP_NORM_BLOCK);
}
