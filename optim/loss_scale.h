/* loss_scale: dynamic loss scaling for fp16-mixed precision, as torch.cuda.amp.GradScaler.
 *
 * fp16 holds magnitudes from 6e-8 to 65504 only: small gradients would round to zero. The
 * loss (and so every gradient) is multiplied by the scale before the backward pass and the
 * gradients divided by it before the optimizer. A step whose gradients overflowed (a
 * non-finite gradient norm) is skipped — no update, no AdamW step count — and the scale is
 * halved; after growth_interval good steps in a row it doubles. The state is part of the
 * training state, so a resumed run continues with the same scale and count. */
#ifndef CTUNE_LOSS_SCALE_H
#define CTUNE_LOSS_SCALE_H

#include <stdbool.h>

typedef struct loss_scaler {
    bool enabled;         /* false: scale stays 1 and no step is ever skipped */
    double scale;
    long good_steps;      /* steps since the scale last changed */
    long growth_interval;
} loss_scaler;

/* enabled false gives the identity scaler (fp32, bf16-mixed). */
void loss_scaler_init(loss_scaler *s, bool enabled, double init_scale, long growth_interval);

/* After a step's gradient norm is known (of the scaled gradients, any finite value = no
 * overflow): returns true when the step must be skipped, and updates the scale. */
bool loss_scaler_update(loss_scaler *s, double scaled_grad_norm);

/* Below this scale, overflows are not the loss scale's doing: the activations or the
 * unscaled gradients themselves exceed fp16's range, and halving further only silences the
 * gradients. torch's GradScaler would go on skipping every step; ctune stops instead. */
#define LOSS_SCALE_MIN 0x1p-8

/* The scale has fallen below LOSS_SCALE_MIN: fp16 cannot hold this training. */
bool loss_scaler_exhausted(const loss_scaler *s);

#endif
