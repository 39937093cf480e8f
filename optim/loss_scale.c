#include "optim/loss_scale.h"

#include <math.h>

void loss_scaler_init(loss_scaler *s, bool enabled, double init_scale, long growth_interval) {
    s->enabled = enabled;
    s->scale = enabled ? init_scale : 1.0;
    s->good_steps = 0;
    s->growth_interval = growth_interval > 0 ? growth_interval : 1;
}

bool loss_scaler_exhausted(const loss_scaler *s) { return s->enabled && s->scale < LOSS_SCALE_MIN; }

bool loss_scaler_update(loss_scaler *s, double scaled_grad_norm) {
    if (!s->enabled) return false;
    if (!isfinite(scaled_grad_norm)) {
        /* Never below one ulp of fp32's range: a scale of 0 would silence every gradient. */
        if (s->scale * 0.5 >= 0x1p-126) s->scale *= 0.5;
        s->good_steps = 0;
        return true;
    }
    if (++s->good_steps >= s->growth_interval) {
        /* fp32 loss gradients must not overflow from the scale alone. */
        if (s->scale * 2.0 <= 0x1p100) s->scale *= 2.0;
        s->good_steps = 0;
    }
    return false;
}
