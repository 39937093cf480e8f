#include "optim/schedule.h"

#include <math.h>

lr_schedule lr_schedule_from_recipe(const recipe *r) {
    return (lr_schedule){
        .kind = r->optim.schedule,
        .peak_lr = r->optim.lr,
        .warmup_steps = r->optim.warmup_steps,
        .total_steps = r->train.max_steps,
        .min_lr_ratio = r->optim.min_lr_ratio,
    };
}

double lr_at_step(const lr_schedule *s, int step) {
    if (step < 0) step = 0;
    if (step < s->warmup_steps) return s->peak_lr * (double)step / (double)s->warmup_steps;
    if (s->kind == SCHEDULE_CONSTANT) return s->peak_lr;
    int decay_steps = s->total_steps - s->warmup_steps;
    if (decay_steps < 1) decay_steps = 1;
    double progress = (double)(step - s->warmup_steps) / (double)decay_steps;
    /* transformers' cosine rises again past total_steps; a run that overshoots its
     * schedule (e.g. resumed with a larger max_steps) should stay at the floor instead. */
    if (progress > 1.0) progress = 1.0;
    double min_lr = s->peak_lr * s->min_lr_ratio;
    double factor = s->kind == SCHEDULE_LINEAR ? 1.0 - progress
                                               : 0.5 * (1.0 + cos(M_PI * progress));
    return min_lr + (s->peak_lr - min_lr) * factor;
}
