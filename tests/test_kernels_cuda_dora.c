/* The CUDA backend's DoRA ops (kernels.h: dora_norm_scale, scale_cols, dora_magnitude_grad)
 * against the CPU reference, label gpu, exit 77 = skipped where no GPU is usable (and on the
 * host emulator as test_kernels_cuda_dora_emu). Random inputs (fixed seeds), odd shapes and
 * ones that take several blocks (row chunks and column blocks of the magnitude gradient, the
 * longer chunks past 16384 rows), every output poisoned with NaN first so that an element
 * the op fails to write fails the comparison:
 *  - scale_cols: the CPU's bits exactly (the spec fixes them: no FMA), offsets -1 and 0,
 *    written, added to, and in place;
 *  - dora_norm_scale: every norm and scale within 1e-6 relative of the CPU's (double sums
 *    in another order: at most a rounding apart); a zero row's inf / NaN scale as the CPU's;
 *  - dora_magnitude_grad: written, within 1e-6 relative of the CPU's per column; added to,
 *    fp32(start + the written value) bit for bit, and the CPU's to 1e-6 in norm; the same
 *    bits on a second run. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/kernel_compare.h"

static const kernels *C; /* the CPU reference */
static const kernels *G; /* the CUDA backend */

/* Every element of the backend buffer within rel of ref's (relative to ref's), NaN where
 * ref has NaN, the same infinity where ref has one. */
static void compare_rel(const char *what, const float *dev, const float *ref, size_t n, double rel) {
    float *got = download_checked(G, what, dev, n * sizeof(float));
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++) {
        bool ok;
        if (isnan(ref[i]))
            ok = isnan(got[i]);
        else if (isinf(ref[i]))
            ok = got[i] == ref[i];
        else
            ok = fabs((double)got[i] - ref[i]) <= rel * fabs((double)ref[i]);
        if (!ok && !bad++) first = i;
    }
    CHECK_MSG(bad == 0, "%s: %zu of %zu elements off by more than %g relative, first [%zu] %.9g vs %.9g", what, bad,
              n, rel, first, bad ? got[first] : 0.0, bad ? ref[first] : 0.0);
    free(got);
}

/* ------------------------------------------------------------------ dora_norm_scale */
static void test_dora_norm_scale(void) {
    seed(41);
    const int shapes[][2] = {{37, 19}, {1, 1}, {5, 1000}, {300, 257}, {64, 4099}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int rows = shapes[s][0], cols = shapes[s][1];
        const size_t n = (size_t)rows * cols;
        float *w = host_rand(n, -2, 2), *mag = host_rand(rows, 0.5f, 1.5f);
        if (rows > 2) { /* rows 0 and 1 zero, row 1's magnitude too: inf and NaN scales */
            memset(w, 0, (size_t)2 * cols * sizeof(float));
            mag[1] = 0.0f;
        }
        float *norm = host_nan(rows), *scale = host_nan(rows);
        float *dw = dev_from(G, w, n * sizeof(float)), *dmag = dev_from(G, mag, rows * sizeof(float));
        float *dnorm = dev_nan(G, rows), *dscale = dev_nan(G, rows);
        C->dora_norm_scale(norm, scale, w, mag, rows, cols);
        G->dora_norm_scale(dnorm, dscale, dw, dmag, rows, cols);
        char what[96];
        snprintf(what, sizeof what, "dora_norm_scale %d x %d norm", rows, cols);
        compare_rel(what, dnorm, norm, rows, 1e-6);
        snprintf(what, sizeof what, "dora_norm_scale %d x %d scale", rows, cols);
        compare_rel(what, dscale, scale, rows, 1e-6);
        if (rows > 2) CHECK(norm[0] == 0.0f && isinf(scale[0]) && isnan(scale[1])); /* the reference's */
        G->release(dw), G->release(dmag), G->release(dnorm), G->release(dscale);
        free(w), free(mag), free(norm), free(scale);
    }
}

/* ------------------------------------------------------------------ scale_cols */
static void test_scale_cols(void) {
    seed(42);
    const int shapes[][2] = {{37, 19}, {1, 1}, {300, 1000}, {2000, 3}};
    const float offsets[] = {-1.0f, 0.0f};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int oi = 0; oi < 2; oi++)
            for (int add = 0; add < 2; add++) {
                const int rows = shapes[s][0], cols = shapes[s][1];
                const size_t n = (size_t)rows * cols, bytes = n * sizeof(float);
                const float offset = offsets[oi];
                float *x = host_rand(n, -2, 2), *scale = host_rand(cols, 0.5f, 1.5f);
                float *y = add ? host_rand(n, -2, 2) : host_nan(n);
                float *dx = dev_from(G, x, bytes), *dscale = dev_from(G, scale, cols * sizeof(float));
                float *dy = dev_from(G, y, bytes); /* NaN when written: an unwritten element shows */
                C->scale_cols(y, x, scale, offset, rows, cols, add);
                G->scale_cols(dy, dx, dscale, offset, rows, cols, add);
                char what[96];
                snprintf(what, sizeof what, "scale_cols %d x %d offset %g add %d", rows, cols, offset, add);
                compare_exact(G, what, dy, y, bytes);
                if (!add) { /* in place: y is x */
                    C->scale_cols(x, x, scale, offset, rows, cols, false);
                    G->scale_cols(dx, dx, dscale, offset, rows, cols, false);
                    snprintf(what, sizeof what, "scale_cols %d x %d offset %g in place", rows, cols, offset);
                    compare_exact(G, what, dx, x, bytes);
                }
                G->release(dx), G->release(dscale), G->release(dy);
                free(x), free(scale), free(y);
            }
}

/* ------------------------------------------------------------------ dora_magnitude_grad */
static void test_dora_magnitude_grad(void) {
    seed(43);
    /* {3000, 300}: 47 row chunks x 2 column blocks; {20000, 3}: chunks of 79 rows (at most
     * 256 chunks); {0, 5}: no rows, the sums empty */
    const int shapes[][2] = {{37, 19}, {1, 1}, {3000, 300}, {50, 513}, {20000, 3}, {0, 5}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int rows = shapes[s][0], cols = shapes[s][1];
        const size_t n = (size_t)rows * cols, bytes = n * sizeof(float), col_bytes = cols * sizeof(float);
        float *dy = host_rand(n, -1, 1), *z = host_rand(n, -2, 2), *norm = host_rand(cols, 0.5f, 4.0f);
        float *start = host_rand(cols, -1, 1);
        float *d_dy = dev_from(G, dy, bytes), *d_z = dev_from(G, z, bytes), *d_norm = dev_from(G, norm, col_bytes);
        char what[96];
        /* written: over NaN on both sides */
        float *grad = host_nan(cols), *d_grad = dev_nan(G, cols);
        C->dora_magnitude_grad(grad, dy, z, norm, rows, cols, false);
        G->dora_magnitude_grad(d_grad, d_dy, d_z, d_norm, rows, cols, false);
        snprintf(what, sizeof what, "dora_magnitude_grad %d x %d", rows, cols);
        compare_rel(what, d_grad, grad, cols, 1e-6);
        float *written = download_checked(G, what, d_grad, col_bytes);
        /* again: the same bits */
        float *d_again = dev_nan(G, cols);
        G->dora_magnitude_grad(d_again, d_dy, d_z, d_norm, rows, cols, false);
        snprintf(what, sizeof what, "dora_magnitude_grad %d x %d, second run", rows, cols);
        compare_exact(G, what, d_again, written, col_bytes);
        /* accumulated: start + the written value, one fp32 addition */
        float *acc = host_copy(start, cols), *want = malloc(col_bytes ? col_bytes : 1);
        for (int j = 0; j < cols; j++) want[j] = start[j] + written[j];
        float *d_acc = dev_from(G, start, col_bytes);
        C->dora_magnitude_grad(acc, dy, z, norm, rows, cols, true);
        G->dora_magnitude_grad(d_acc, d_dy, d_z, d_norm, rows, cols, true);
        snprintf(what, sizeof what, "dora_magnitude_grad %d x %d accumulate = start + written", rows, cols);
        compare_exact(G, what, d_acc, want, col_bytes);
        snprintf(what, sizeof what, "dora_magnitude_grad %d x %d accumulate", rows, cols);
        compare(G, what, d_acc, acc, cols, 1e-6);
        void *dev[] = {d_dy, d_z, d_norm, d_grad, d_again, d_acc};
        for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) G->release(dev[i]);
        free(dy), free(z), free(norm), free(start), free(grad), free(written), free(acc), free(want);
    }
}

int main(void) {
    if (!open_backends(&C, &G)) return 77;
    const kernels *both[2] = {C, G};
    for (int b = 0; b < 2; b++)
        CHECK_MSG(both[b]->dora_norm_scale && both[b]->scale_cols && both[b]->dora_magnitude_grad,
                  "the %s backend lacks one of the DoRA ops", both[b]->name);
    if (check_failed_count) return check_summary("test_kernels_cuda_dora");
    test_dora_norm_scale();
    test_scale_cols();
    test_dora_magnitude_grad();
    check_status("end of tests");
    return check_summary("test_kernels_cuda_dora");
}
