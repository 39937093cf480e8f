/* Cross-entropy over a chunk of rows, forward and backward fused:
 *   loss_r = logsumexp(z_r) - z_r[t_r],   dz_r = (softmax(z_r) - onehot(t_r)) * grad_scale.
 * logsumexp subtracts the row max before exponentiating (no overflow) and sums the
 * exponentials in double (vocabularies reach 150k entries). Rows with a negative target
 * are ignored (loss 0, zero gradient). A target >= vocab is a caller bug the kernel
 * cannot report: it yields a NaN loss rather than reading out of bounds, so it surfaces.
 * Rows are independent: parallel over rows. */
#include <math.h>

#include "kernels/cpu/cpu_ops.h"

void cpu_cross_entropy(float *logits, float *loss, const int32_t *targets, int n_rows, int vocab,
                       float grad_scale) {
#pragma omp parallel for if ((size_t)n_rows * vocab >= CPU_PARALLEL_MIN) schedule(static)
    for (int r = 0; r < n_rows; r++) {
        float *z = logits + (size_t)r * vocab;
        int32_t target = targets[r];
        if (target < 0) {
            loss[r] = 0.0f;
            if (grad_scale != 0.0f)
                for (int i = 0; i < vocab; i++) z[i] = 0.0f;
            continue;
        }
        float zmax = -INFINITY;
        for (int i = 0; i < vocab; i++)
            if (z[i] > zmax) zmax = z[i];
        double sum = 0.0;
        for (int i = 0; i < vocab; i++) sum += expf(z[i] - zmax);
        /* Kept relative to the max: z - zmax is exact for the large entries, whereas
         * z - lse rounded at |z| ~ 1000 would lose 6e-5 of every probability. */
        loss[r] = target < vocab ? (float)(((double)zmax - z[target]) + log(sum)) : NAN;
        if (grad_scale == 0.0f) continue;
        const double scale_over_sum = grad_scale / sum;
        for (int i = 0; i < vocab; i++) z[i] = (float)(expf(z[i] - zmax) * scale_over_sum);
        if (target < vocab) z[target] -= grad_scale;
    }
}
