/* nf4_tool: ctune's NF4 quantizer (kernels/nf4.h) seen from outside, for the QLoRA tests.
 *
 *   nf4_tool codes IN.safetensors OUT.safetensors
 *       for every tensor t of IN (F32, BF16 or F16), writes t.codes (U8, the packed codes),
 *       t.absmax (F32, one per block) and t.values (F32, the codes read back): what
 *       scripts/interop_nf4.py compares with bitsandbytes' quantize_4bit / dequantize_4bit.
 *   nf4_tool base MODEL_DIR OUT.safetensors
 *       writes every tensor of the model folder as F32, the decoder layers' Linear weights
 *       (model_nf4_quantizes) replaced by their NF4 read-back: the base a QLoRA
 *       run multiplies with, for tests/qlora.sh to train plain LoRA on.
 *   nf4_tool time IN.safetensors OUT.safetensors REPEATS
 *       quantizes every tensor of IN REPEATS times (the load path's nf4_quantize, OpenMP over
 *       blocks) and prints "name values best_seconds" per tensor; writes t.codes and t.absmax
 *       of each to OUT so scripts/bench_nf4.py can check them against its peer. */
#include <omp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/nf4.h"
#include "train/model.h"
#include "train/safetensors.h"

static int fail(const char *what, const ct_error *err) {
    fprintf(stderr, "nf4_tool: %s%s%s\n", what, err ? ": " : "", err ? err->msg : "");
    return 1;
}

/* codes and time: every tensor of IN quantized (repeats times, timed, when timed), its codes,
 * absmax and (codes only) read-back written to OUT as "<name>.codes", ".absmax", ".values". */
static int quantize_file(const char *in, const char *out, int repeats, bool timed) {
    ct_error err = {{0}};
    st_file f;
    if (st_open(&f, in, &err)) return fail("open", &err);
    const int n = f.n_tensors, per = timed ? 2 : 3;
    st_write_tensor *w = calloc((size_t)n * per, sizeof *w);
    char (*names)[300] = calloc((size_t)n * per, sizeof *names);
    void **bufs = calloc((size_t)n * per, sizeof *bufs);
    int rc = w && names && bufs ? 0 : fail("out of memory", NULL);
    for (int i = 0; i < n && rc == 0; i++) {
        const st_tensor *t = &f.tensors[i];
        const size_t numel = t->numel;
        float *x = malloc((numel ? numel : 1) * sizeof *x);
        void **mine = bufs + (size_t)i * per;
        uint8_t *codes = mine[0] = malloc(nf4_code_bytes(numel) + 1);
        float *absmax = mine[1] = malloc((nf4_block_count(numel) + 1) * sizeof *absmax);
        float *values = timed ? NULL : (mine[2] = malloc((numel ? numel : 1) * sizeof *values));
        if (!x || !codes || !absmax || (!timed && !values)) rc = fail("out of memory", NULL);
        else if (st_read_f32(t, x, &err)) rc = fail(t->name, &err);
        double best = 1e30;
        for (int r = 0; r < repeats && rc == 0; r++) {
            const double start = omp_get_wtime();
            nf4_quantize(x, numel, codes, absmax);
            const double took = omp_get_wtime() - start;
            if (took < best) best = took;
        }
        free(x);
        if (rc) break;
        if (timed) printf("%s %llu %.6f\n", t->name, (unsigned long long)numel, best);
        else nf4_dequantize(codes, absmax, numel, values);
        const char *suffix[3] = {"codes", "absmax", "values"};
        const int64_t len[3] = {(int64_t)nf4_code_bytes(numel), (int64_t)nf4_block_count(numel), (int64_t)numel};
        for (int j = 0; j < per; j++) {
            const size_t at = (size_t)i * per + (size_t)j;
            snprintf(names[at], sizeof names[0], "%s.%s", t->name, suffix[j]);
            w[at] = (st_write_tensor){.name = names[at], .dtype = j == 0 ? ST_U8 : ST_F32, .ndim = 1,
                                      .shape = {len[j]}, .data = mine[j]};
        }
    }
    if (rc == 0 && st_write(out, w, per * n, NULL, NULL, 0, &err)) rc = fail("write", &err);
    for (int i = 0; bufs && i < per * n; i++) free(bufs[i]);
    free(bufs);
    free(names);
    free(w);
    st_close(&f);
    return rc;
}

static int quantized_base(const char *dir, const char *out) {
    ct_error err = {{0}};
    st_model_files files;
    if (st_model_open(&files, dir, &err)) return fail("open", &err);
    int n = 0;
    for (int i = 0; i < files.n_files; i++) n += files.files[i].n_tensors;
    st_write_tensor *w = calloc((size_t)n, sizeof *w);
    float **bufs = calloc((size_t)n, sizeof *bufs);
    int rc = w && bufs ? 0 : fail("out of memory", NULL), at = 0;
    for (int i = 0; i < files.n_files && rc == 0; i++)
        for (int j = 0; j < files.files[i].n_tensors && rc == 0; j++, at++) {
            const st_tensor *t = &files.files[i].tensors[j];
            float *x = bufs[at] = malloc((t->numel ? t->numel : 1) * sizeof *x);
            if (!x) {
                rc = fail("out of memory", NULL);
                break;
            }
            if (st_read_f32(t, x, &err)) {
                rc = fail(t->name, &err);
                break;
            }
            if (model_nf4_quantizes(t->name, t->ndim)) {
                uint8_t *codes = malloc(nf4_code_bytes(t->numel) + 1);
                float *absmax = malloc((nf4_block_count(t->numel) + 1) * sizeof *absmax);
                if (!codes || !absmax) rc = fail("out of memory", NULL);
                else nf4_quantize(x, t->numel, codes, absmax), nf4_dequantize(codes, absmax, t->numel, x);
                free(codes);
                free(absmax);
            }
            w[at] = (st_write_tensor){.name = t->name, .dtype = ST_F32, .ndim = t->ndim, .data = x};
            for (int d = 0; d < t->ndim; d++) w[at].shape[d] = t->shape[d];
        }
    if (rc == 0 && st_write(out, w, n, NULL, NULL, 0, &err)) rc = fail("write", &err);
    for (int i = 0; bufs && i < n; i++) free(bufs[i]);
    free(bufs);
    free(w);
    st_model_close(&files);
    return rc;
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "codes")) return quantize_file(argv[2], argv[3], 1, false);
    if (argc == 4 && !strcmp(argv[1], "base")) return quantized_base(argv[2], argv[3]);
    if (argc == 5 && !strcmp(argv[1], "time") && atoi(argv[4]) > 0) return quantize_file(argv[2], argv[3], atoi(argv[4]), true);
    fprintf(stderr, "usage: nf4_tool codes IN.safetensors OUT.safetensors | nf4_tool base MODEL_DIR OUT.safetensors"
                    " | nf4_tool time IN.safetensors OUT.safetensors REPEATS\n");
    return 2;
}
