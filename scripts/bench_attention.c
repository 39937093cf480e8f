/* Micro-benchmark of the CPU attention and cross-entropy kernels at the shapes of a small
 * Llama training step (not a test; not built by CMake). From the repository root:
 *   gcc -O2 -march=x86-64-v2 -fopenmp -I. -I/usr/include/x86_64-linux-gnu/openblas-openmp scripts/bench_attention.c kernels/cpu/attention.c kernels/cpu/cross_entropy.c kernels/cpu/gemm.c -L/usr/lib/x86_64-linux-gnu/openblas-openmp -Wl,-rpath,/usr/lib/x86_64-linux-gnu/openblas-openmp -lopenblas -lm -o /tmp/bench_attention
 *   OMP_NUM_THREADS=2 /tmp/bench_attention [batch seq n_heads n_kv head_dim [rows vocab]]
 * Prints the best of several repetitions (the minimum is the least disturbed by other
 * processes) of the forward, the backward and the cross-entropy. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels/cpu/cpu_ops.h"

static float *random_floats(size_t n, float lo, float hi, uint64_t *state) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        *state ^= *state << 13, *state ^= *state >> 7, *state ^= *state << 17;
        x[i] = lo + (hi - lo) * (float)((*state >> 40) * 0x1p-24);
    }
    return x;
}

int main(int argc, char **argv) {
    int batch = 4, seq = 256, nh = 6, nkv = 2, d = 64, rows = 1024, vocab = 32000;
    if (argc >= 6)
        batch = atoi(argv[1]), seq = atoi(argv[2]), nh = atoi(argv[3]), nkv = atoi(argv[4]),
        d = atoi(argv[5]);
    if (argc >= 8) rows = atoi(argv[6]), vocab = atoi(argv[7]);
    uint64_t state = 0x9E3779B97F4A7C15ull;
    size_t nq = (size_t)batch * seq * nh * d, nk = (size_t)batch * seq * nkv * d;
    float *q = random_floats(nq, -2, 2, &state), *k = random_floats(nk, -2, 2, &state);
    float *v = random_floats(nk, -1, 1, &state), *dout = random_floats(nq, -1, 1, &state);
    float *out = malloc(nq * sizeof(float));
    float *lse = malloc((size_t)batch * nh * seq * sizeof(float));
    float *dq = malloc(nq * sizeof(float)), *dk = malloc(nk * sizeof(float));
    float *dv = malloc(nk * sizeof(float));
    const float scale = 1.0f / sqrtf((float)d);
    double best_fwd = INFINITY, best_bwd = INFINITY, best_ce = INFINITY;
    for (int rep = 0; rep < 10; rep++) {
        double t0 = omp_get_wtime();
        cpu_attention_fwd(out, lse, q, k, v, NULL, batch, seq, nh, nkv, d, scale);
        double t1 = omp_get_wtime();
        cpu_attention_bwd(dq, dk, dv, dout, q, k, v, out, lse, NULL, batch, seq, nh, nkv, d, scale);
        double t2 = omp_get_wtime();
        best_fwd = fmin(best_fwd, t1 - t0), best_bwd = fmin(best_bwd, t2 - t1);
    }
    float *logits_src = random_floats((size_t)rows * vocab, -8, 8, &state);
    float *logits = malloc((size_t)rows * vocab * sizeof(float));
    float *loss = malloc(rows * sizeof(float));
    int32_t *targets = malloc(rows * sizeof(int32_t));
    for (int r = 0; r < rows; r++) targets[r] = (int32_t)((r * 7919u) % (unsigned)vocab);
    for (int rep = 0; rep < 5; rep++) {
        memcpy(logits, logits_src, (size_t)rows * vocab * sizeof(float));
        double t0 = omp_get_wtime();
        cpu_cross_entropy(logits, loss, targets, rows, vocab, 1.0f / rows);
        best_ce = fmin(best_ce, omp_get_wtime() - t0);
    }
    printf("threads %d  attention b%d s%d h%d kv%d d%d: fwd %.3f ms  bwd %.3f ms\n",
           omp_get_max_threads(), batch, seq, nh, nkv, d, 1e3 * best_fwd, 1e3 * best_bwd);
    printf("cross_entropy %d x %d: %.3f ms (loss[0] %.4f)\n", rows, vocab, 1e3 * best_ce, loss[0]);
    free(q), free(k), free(v), free(dout), free(out), free(lse), free(dq), free(dk), free(dv);
    free(logits_src), free(logits), free(loss), free(targets);
    return 0;
}
