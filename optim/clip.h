/* clip: global gradient norm over all trainable parameters and clipping to a maximum,
 * as torch.nn.utils.clip_grad_norm_ (scale = max_norm / (norm + 1e-6) when norm > max_norm). */
#ifndef CTUNE_CLIP_H
#define CTUNE_CLIP_H

#include "train/model.h"

double grad_global_norm(const model *m);
/* Returns the norm before clipping; max_norm <= 0 only measures. */
double grad_clip(model *m, double max_norm);

#endif
