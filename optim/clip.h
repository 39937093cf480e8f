/* clip: global gradient norm over all trainable parameters and clipping to a maximum,
 * as torch.nn.utils.clip_grad_norm_ (scale = max_norm / (norm + 1e-6) when norm > max_norm).
 *
 * The blocked form (clip_block_sums ...) is what the trainer uses: the flat trainable range
 * is cut into fixed blocks of CLIP_NORM_BLOCK values counted from its start, each block's sum
 * of squares is taken on its own and the block sums are added in groups of
 * KERNELS_NORM_GROUP, then the groups' totals in order (kernels/clip_rule.h). Block
 * boundaries do not depend on how the range is sharded over ranks (ZeRO shards are whole
 * blocks, optim/zero.h), so the norm is the same bits at any world size and ZeRO stage. */
#ifndef CTUNE_CLIP_H
#define CTUNE_CLIP_H

#include "train/model.h"

double grad_global_norm(const model *m);
/* Returns the norm before clipping; max_norm <= 0 only measures. */
double grad_clip(model *m, double max_norm);

#define CLIP_NORM_BLOCK ((size_t)4096)

/* Number of blocks over a flat range of numel values. */
size_t clip_block_count(size_t numel);
/* sums[b] = sum of squares of block b, for every block inside [begin, end) of the flat range
 * (begin a multiple of CLIP_NORM_BLOCK; end one too, or the range's end). grad is backend
 * memory holding that slice (grad[0] is flat index begin); other entries of sums untouched. */
void clip_block_sums(const kernels *k, const float *grad, size_t begin, size_t end, double *sums);

#endif
