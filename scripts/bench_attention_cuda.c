/* Micro-benchmark of the CUDA 16-bit attention (kernels/cuda/attention_half.cu and
 * attention_mma.cu) at training shapes: the forward with 16 and with 32 query rows per warp,
 * the backward with the stored dS (the table's way) and recomputing it. Not a test: built
 * with the CUDA backend (CMake target bench_attention_cuda) and driven by
 * scripts/bench_gpu_attention.sh, which times PyTorch's flash attention on the same shapes in
 * the same run and prints the ratios. Built against the host emulator too
 * (bench_attention_cuda_emu), where only --check-only means anything.
 *
 *   bench_attention_cuda [--fmt bf16|fp16] [--reps N] [--warmup N] [--check-only]
 *                        BATCH SEQ HEADS KV_HEADS HEAD_DIM [BATCH SEQ ...]
 *
 * One line per measurement, `ctune <what> b B s S h H/KV d D <fmt>: <ms> ms <TFLOP/s> TFLOP/s`,
 * the mean over the repetitions, each call followed by a wait for the device; FLOPs counted as
 * FlashAttention's benchmarks count them (causal: half of 4 B H S^2 D forward, 2.5x that
 * backward). Before timing, the two forward ways are compared (out_half and lse: the same bits,
 * attention_mma.cuh) and the two backward ways (dk, dv: the same bits; dq within 1e-2 of each
 * other), and a mismatch or a recorded CUDA error ends the run with status 1. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/kernels.h"
#include "train/error.h"

typedef struct options {
    kernels_half_format fmt;
    int reps, warmup;
    int check_only;
} options;

typedef struct shape {
    int batch, seq, heads, kv, d;
} shape;

/* Device buffers of one shape. */
typedef struct buffers {
    uint16_t *q, *k, *v, *out_half;
    float *lse, *dout, *dq, *dk, *dv;
    size_t q_n, kv_n, stat_n;
} buffers;

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float uniform(float lo, float hi) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return lo + (hi - lo) * (float)((rng >> 40) * 0x1p-24);
}

/* Waits for the device; a recorded failure ends the run. */
static int device_ok(const char *what) {
    char message[1024];
    if (ctune_cuda_take_error(message, sizeof message) == 0) return 1;
    fprintf(stderr, "bench_attention_cuda: %s: %s\n", what, message);
    return 0;
}

static void *device_floats(const kernels *K, size_t n, float lo, float hi) {
    float *host = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) host[i] = uniform(lo, hi);
    void *dev = K->alloc(n * sizeof(float));
    if (dev) K->upload(dev, host, n * sizeof(float));
    free(host);
    return dev;
}

static uint16_t *device_halves(const kernels *K, size_t n, kernels_half_format fmt) {
    float *x = device_floats(K, n, -2.0f, 2.0f);
    uint16_t *h = K->alloc(n * sizeof(uint16_t));
    if (x && h) K->to_half(h, x, n, fmt);
    K->release(x);
    return h;
}

static int make_buffers(const kernels *K, const shape *s, kernels_half_format fmt, buffers *b) {
    const size_t tokens = (size_t)s->batch * s->seq;
    b->q_n = tokens * s->heads * s->d;
    b->kv_n = tokens * s->kv * s->d;
    b->stat_n = (size_t)s->batch * s->heads * s->seq;
    b->q = device_halves(K, b->q_n, fmt);
    b->k = device_halves(K, b->kv_n, fmt);
    b->v = device_halves(K, b->kv_n, fmt);
    b->out_half = K->alloc(b->q_n * sizeof(uint16_t));
    b->lse = K->alloc(b->stat_n * sizeof(float));
    b->dout = device_floats(K, b->q_n, -1.0f, 1.0f);
    b->dq = K->alloc(b->q_n * sizeof(float));
    b->dk = K->alloc(b->kv_n * sizeof(float));
    b->dv = K->alloc(b->kv_n * sizeof(float));
    return b->q && b->k && b->v && b->out_half && b->lse && b->dout && b->dq && b->dk && b->dv;
}

static void free_buffers(const kernels *K, buffers *b) {
    void *all[] = {b->q, b->k, b->v, b->out_half, b->lse, b->dout, b->dq, b->dk, b->dv};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) K->release(all[i]);
}

enum way { FWD16, FWD32, BWD_STORED, BWD_RECOMPUTE, N_WAYS };
static const char *const WAY_NAMES[N_WAYS] = {"fwd16", "fwd32", "bwd", "bwd-recompute"};

static void run_way(enum way w, const shape *s, kernels_half_format fmt, buffers *b) {
    const int ld = s->heads * s->d;
    const float scale = 1.0f / sqrtf((float)s->d);
    switch (w) {
    case FWD16:
    case FWD32:
        cuda_attention_fwd_half_rows(w == FWD16 ? 16 : 32, fmt, b->out_half, ld, NULL, b->lse, b->q, b->k, b->v,
                                     NULL, s->batch, s->seq, s->heads, s->kv, s->d, scale);
        break;
    case BWD_STORED:
    case BWD_RECOMPUTE:
        cuda_attention_bwd_half_budget(w == BWD_STORED ? (size_t)1 << 30 : 0, fmt, b->dq, b->dk, b->dv, b->dout,
                                       b->q, b->k, b->v, b->out_half, ld, b->lse, NULL, s->batch, s->seq,
                                       s->heads, s->kv, s->d, scale);
        break;
    default:
        break;
    }
}

static void *download(const kernels *K, const void *dev, size_t bytes) {
    void *host = malloc(bytes ? bytes : 1);
    K->download(host, dev, bytes);
    return host;
}

static double rel_diff(const float *a, const float *b, size_t n) {
    double diff = 0.0, norm = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double e = (double)a[i] - b[i];
        diff += e * e;
        norm += (double)b[i] * b[i];
    }
    return norm > 0 ? sqrt(diff / norm) : sqrt(diff);
}

/* The two forward ways give the same bits; the two backward ways the same dk, dv and dq within
 * 1e-2 (dq multiplies the stored rounding of dS, or recomputes it: a rare last bit differs). */
static int check_ways(const kernels *K, const shape *s, kernels_half_format fmt, buffers *b, const char *name) {
    run_way(FWD16, s, fmt, b);
    uint16_t *half16 = download(K, b->out_half, b->q_n * sizeof(uint16_t));
    float *lse16 = download(K, b->lse, b->stat_n * sizeof(float));
    run_way(FWD32, s, fmt, b);
    uint16_t *half32 = download(K, b->out_half, b->q_n * sizeof(uint16_t));
    float *lse32 = download(K, b->lse, b->stat_n * sizeof(float));
    int ok = device_ok(name);
    const int fwd_same = memcmp(half16, half32, b->q_n * sizeof(uint16_t)) == 0 &&
                         memcmp(lse16, lse32, b->stat_n * sizeof(float)) == 0;
    run_way(BWD_STORED, s, fmt, b);
    float *dq0 = download(K, b->dq, b->q_n * sizeof(float)), *dk0 = download(K, b->dk, b->kv_n * sizeof(float));
    float *dv0 = download(K, b->dv, b->kv_n * sizeof(float));
    run_way(BWD_RECOMPUTE, s, fmt, b);
    float *dq1 = download(K, b->dq, b->q_n * sizeof(float)), *dk1 = download(K, b->dk, b->kv_n * sizeof(float));
    float *dv1 = download(K, b->dv, b->kv_n * sizeof(float));
    ok = ok && device_ok(name);
    const int kv_same = memcmp(dk0, dk1, b->kv_n * sizeof(float)) == 0 && memcmp(dv0, dv1, b->kv_n * sizeof(float)) == 0;
    const double dq_rel = rel_diff(dq1, dq0, b->q_n);
    size_t non_finite = 0;
    for (size_t i = 0; i < b->q_n; i++) non_finite += !isfinite(dq0[i]);
    printf("check %s: fwd16 = fwd32 bits %s; bwd dk, dv same bits %s; dq rel diff %.2e; non-finite dq %zu\n", name,
           fwd_same ? "yes" : "NO", kv_same ? "yes" : "NO", dq_rel, non_finite);
    ok = ok && fwd_same && kv_same && dq_rel < 1e-2 && non_finite == 0;
    free(half16), free(lse16), free(half32), free(lse32);
    free(dq0), free(dk0), free(dv0), free(dq1), free(dk1), free(dv1);
    return ok;
}

static int bench_shape(const kernels *K, const shape *s, const options *o) {
    const char *fmt_name = o->fmt == KERNELS_BF16 ? "bf16" : "fp16";
    char name[96];
    snprintf(name, sizeof name, "b %d s %d h %d/%d d %d %s", s->batch, s->seq, s->heads, s->kv, s->d, fmt_name);
    buffers b;
    if (!make_buffers(K, s, o->fmt, &b)) {
        fprintf(stderr, "bench_attention_cuda: %s: out of device memory\n", name);
        free_buffers(K, &b);
        return 0;
    }
    int ok = check_ways(K, s, o->fmt, &b, name);
    const double fwd_flops = 2.0 * s->batch * s->heads * (double)s->seq * s->seq * s->d;  // causal half of 4BHS^2D
    for (int w = 0; ok && !o->check_only && w < N_WAYS; w++) {
        // The backward reads the forward's out_half and lse: the last forward ran, any way.
        for (int i = 0; i < o->warmup; i++) run_way((enum way)w, s, o->fmt, &b);
        ok = device_ok(name);
        const double t0 = now_seconds();
        for (int i = 0; ok && i < o->reps; i++) {
            run_way((enum way)w, s, o->fmt, &b);
            ok = device_ok(name);
        }
        const double ms = 1e3 * (now_seconds() - t0) / o->reps;
        const double flops = w <= FWD32 ? fwd_flops : 2.5 * fwd_flops;
        if (ok) printf("ctune %s %s: %.3f ms %.1f TFLOP/s\n", WAY_NAMES[w], name, ms, flops / (ms * 1e-3) / 1e12);
    }
    fflush(stdout);
    free_buffers(K, &b);
    return ok;
}

static int parse_int(const char *text, const char *what, int lo, int *out) {
    char *end = NULL;
    const long v = strtol(text, &end, 10);
    if (!*text || *end || v < lo || v > 1 << 24) {
        fprintf(stderr, "bench_attention_cuda: %s: expected an integer >= %d, got '%s'\n", what, lo, text);
        return 0;
    }
    *out = (int)v;
    return 1;
}

int main(int argc, char **argv) {
    options o = {KERNELS_BF16, 20, 3, 0};
    int i = 1;
    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--check-only")) {
            o.check_only = 1;
        } else if (i + 1 >= argc) {
            fprintf(stderr, "bench_attention_cuda: %s needs a value\n", a);
            return 2;
        } else if (!strcmp(a, "--fmt")) {
            const char *f = argv[++i];
            if (strcmp(f, "bf16") && strcmp(f, "fp16")) {
                fprintf(stderr, "bench_attention_cuda: --fmt: expected bf16 or fp16, got '%s'\n", f);
                return 2;
            }
            o.fmt = strcmp(f, "bf16") ? KERNELS_FP16 : KERNELS_BF16;
        } else if (!strcmp(a, "--reps")) {
            if (!parse_int(argv[++i], "--reps", 1, &o.reps)) return 2;
        } else if (!strcmp(a, "--warmup")) {
            if (!parse_int(argv[++i], "--warmup", 0, &o.warmup)) return 2;
        } else {
            fprintf(stderr, "bench_attention_cuda: unknown option %s\n", a);
            return 2;
        }
    }
    if (i == argc || (argc - i) % 5 != 0) {
        fprintf(stderr, "usage: bench_attention_cuda [--fmt bf16|fp16] [--reps N] [--warmup N] [--check-only] "
                        "BATCH SEQ HEADS KV_HEADS HEAD_DIM [...]\n");
        return 2;
    }
    const kernels *K = NULL;
    ct_error err = {{0}};
    if (kernels_cuda(&K, &err) != 0) {
        fprintf(stderr, "bench_attention_cuda: %s\n", err.msg);
        return 1;
    }
    int ok = 1;
    for (; ok && i < argc; i += 5) {
        shape s;
        if (!parse_int(argv[i], "BATCH", 1, &s.batch) || !parse_int(argv[i + 1], "SEQ", 1, &s.seq) ||
            !parse_int(argv[i + 2], "HEADS", 1, &s.heads) || !parse_int(argv[i + 3], "KV_HEADS", 1, &s.kv) ||
            !parse_int(argv[i + 4], "HEAD_DIM", 1, &s.d))
            return 2;
        if (s.heads % s.kv != 0) {
            fprintf(stderr, "bench_attention_cuda: HEADS %d is not a multiple of KV_HEADS %d\n", s.heads, s.kv);
            return 2;
        }
        ok = bench_shape(K, &s, &o);
    }
    return ok ? 0 : 1;
}
