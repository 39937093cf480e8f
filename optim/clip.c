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

double clip_coefficient(double norm, double max_norm) {
    /* A non-finite norm means an overflow: scaling would turn every gradient into NaN or 0,
     * so leave them for the caller, which skips the step (fp16 loss scaling) or stops. */
    if (max_norm <= 0.0 || !isfinite(norm)) return 1.0;
    double coef = max_norm / (norm + 1e-6);
    return coef < 1.0 ? coef : 1.0;
}

double grad_clip(model *m, double max_norm) {
    double norm = grad_global_norm(m);
    double coef = clip_coefficient(norm, max_norm);
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

double clip_norm_from_blocks(const double *sums, size_t n_blocks) {
    double total = 0.0;
    for (size_t b = 0; b < n_blocks; b++) total += sums[b];
    return sqrt(total);
}
