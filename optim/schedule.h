/* schedule: learning-rate schedules with linear warmup, as transformers' schedulers.
 * step counts optimizer steps already taken (0 for the first update):
 *   step < warmup: lr * step / warmup
 *   after: progress p = (step - warmup) / max(1, total - warmup), clamped to [0, 1];
 *   constant: lr; linear: min + (lr - min)(1 - p); cosine: min + (lr - min) 0.5 (1 + cos(pi p))
 *   with min = lr * min_lr_ratio. */
#ifndef CTUNE_SCHEDULE_H
#define CTUNE_SCHEDULE_H

#include "train/recipe.h"

typedef struct lr_schedule {
    recipe_schedule kind;
    double peak_lr;
    int warmup_steps;
    int total_steps;
    double min_lr_ratio;
} lr_schedule;

lr_schedule lr_schedule_from_recipe(const recipe *r);
double lr_at_step(const lr_schedule *s, int step);

#endif
