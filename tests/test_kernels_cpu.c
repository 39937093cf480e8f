/* Tests of the CPU reference backend (kernels/cpu): every backward against central finite
 * differences of L = sum(out * w) for random w, forwards against direct formulas or naive
 * materialised references computed in double, dropout against a mask computed by an
 * independent Python script, AdamW against torch.optim.AdamW (tests/fixtures). */
#include <omp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/kernels.h"
#include "tests/check.h"

static const kernels *K;
static uint64_t rng_state = 0x2545F4914F6CDD1Dull;

static float urand(float lo, float hi) {
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return lo + (hi - lo) * (float)((rng_state >> 40) * 0x1p-24);
}
static void fill(float *x, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++) x[i] = urand(lo, hi);
}
static float *vec(size_t n, float lo, float hi) {
    float *x = malloc((n ? n : 1) * sizeof(float));
    fill(x, n, lo, hi);
    return x;
}
static double weighted_sum(const float *out, const float *w, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)out[i] * w[i];
    return s;
}

/* Central differences of loss() w.r.t. every stride-th element of param (starting at
 * element first), compared with the analytic gradient: |a - n| <= tol (|n| + 0.1 max|n|). */
typedef double (*loss_fn)(void *ctx);
static void check_grad(const char *what, float *param, size_t n, const float *analytic,
                       loss_fn loss, void *ctx, float eps, double tol, size_t stride) {
    size_t count = (n + stride - 1) / stride;
    double *numeric = malloc(count * sizeof(double)), max_abs = 0.0;
    for (size_t c = 0; c < count; c++) {
        size_t i = c * stride;
        float saved = param[i];
        float plus = saved + eps, minus = saved - eps;
        param[i] = plus;
        double lp = loss(ctx);
        param[i] = minus;
        double lm = loss(ctx);
        param[i] = saved;
        numeric[c] = (lp - lm) / ((double)plus - minus);
        if (fabs(numeric[c]) > max_abs) max_abs = fabs(numeric[c]);
    }
    size_t bad = 0, first_bad = 0;
    for (size_t c = 0; c < count; c++) {
        double a = analytic[c * stride], num = numeric[c];
        if (!(fabs(a - num) <= tol * (fabs(num) + 0.1 * max_abs))) {
            if (!bad) first_bad = c * stride;
            bad++;
        }
    }
    CHECK_MSG(bad == 0 && max_abs > 0, "%s: %zu of %zu gradients off; first [%zu] analytic %g numeric %g",
              what, bad, count, first_bad, analytic[first_bad], numeric[first_bad / stride]);
    free(numeric);
}

/* ------------------------------------------------------------------ memory, gemm */
static void test_memory(void) {
    float *buf = K->alloc(1000 * sizeof(float));
    CHECK(buf != NULL && ((uintptr_t)buf % 64) == 0);
    int zero = 1;
    for (int i = 0; i < 1000; i++) zero &= buf[i] == 0.0f;
    CHECK(zero);
    float host[1000], back[1000], *other = K->alloc(1000 * sizeof(float));
    fill(host, 1000, -1, 1);
    K->upload(buf, host, sizeof host);
    K->copy(other, buf, sizeof host);
    K->download(back, other, sizeof host);
    CHECK(memcmp(host, back, sizeof host) == 0);
    K->zero(other, sizeof host);
    CHECK(other[0] == 0.0f && other[999] == 0.0f);
    void *empty = K->alloc(0);
    CHECK(empty != NULL);
    K->release(empty);
    K->release(other);
    K->release(buf);
}

static void write_text(const char *dir, const char *name, const char *text) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    CHECK_MSG(f != NULL, "cannot write %s", path);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

/* memory_held: each buffer counts its whole block (whole cache lines plus the 64-byte header)
 * while it lives; the peak keeps the most held at once; blocks stay 64-byte aligned. */
static void test_memory_held(void) {
    size_t now0, peak0, now, peak;
    cpu_memory_held(&now0, &peak0);
    CHECK(peak0 >= now0);
    float *a = cpu_alloc(1000), *b = cpu_alloc(0);
    CHECK(a && b && ((uintptr_t)a % 64) == 0 && ((uintptr_t)b % 64) == 0);
    CHECK(a[0] == 0.0f && a[249] == 0.0f);
    cpu_memory_held(&now, &peak);
    CHECK_MSG(now == now0 + (1024 + 64) + (64 + 64), "held %zu after 1000 + 0 bytes, %zu before", now, now0);
    CHECK(peak >= now);
    cpu_release(a);
    cpu_memory_held(&now, &peak);
    CHECK(now == now0 + 128 && peak >= now0 + 1088 + 128);
    cpu_release(b);
    cpu_release(NULL);
    cpu_memory_held(&now, &peak);
    CHECK(now == now0);
    void *big = cpu_alloc(((size_t)1 << 20) + 1);
    size_t before_release;
    cpu_memory_held(&before_release, &peak);
    cpu_release(big);
    cpu_memory_held(&now, &peak);
    CHECK(now == now0 && peak >= before_release && before_release == now0 + ((size_t)1 << 20) + 64 + 64);
}

/* memory_info: MemAvailable / MemTotal, bounded by the tightest cgroup on the way up from the
 * process's group (v2 memory.max - memory.current; v1 limit_in_bytes - usage_in_bytes, whose
 * "no limit" is a huge number); unreadable or malformed input: -1, zeros. */
static void test_memory_info(void) {
    char dir[] = "/tmp/ctune_meminfo_XXXXXX", sub[4200], meminfo[4200];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(meminfo, sizeof meminfo, "%s/meminfo", dir);
    write_text(dir, "meminfo", "MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:   12000000 kB\n");
    size_t free_b = 1, total_b = 1;
    CHECK(cpu_memory_info_from(meminfo, NULL, 0, &free_b, &total_b) == 0);
    CHECK(free_b == 12000000ull * 1024 && total_b == 16000000ull * 1024);
    /* v2: group a/b without a limit, its parent a held to 8 GiB with 6.5 used */
    snprintf(sub, sizeof sub, "%s/v2/a/b", dir);
    char mk[4300];
    snprintf(mk, sizeof mk, "mkdir -p %s %s/v1/job", sub, dir);
    CHECK(system(mk) == 0);
    snprintf(sub, sizeof sub, "%s/v2/a", dir);
    write_text(sub, "memory.max", "8589934592\n");
    write_text(sub, "memory.current", "6979321856\n");
    snprintf(sub, sizeof sub, "%s/v2/a/b", dir);
    write_text(sub, "memory.max", "max\n");
    write_text(sub, "memory.current", "1000\n");
    char root2[4200], root1[4200];
    snprintf(root2, sizeof root2, "%s/v2", dir);
    snprintf(root1, sizeof root1, "%s/v1", dir);
    cpu_cgroup v2 = {.root = root2, .path = "/a/b", .v1 = false};
    CHECK(cpu_memory_info_from(meminfo, &v2, 1, &free_b, &total_b) == 0);
    CHECK_MSG(free_b == 8589934592ull - 6979321856ull && total_b == 8589934592ull, "v2: free %zu, total %zu", free_b,
              total_b);
    /* v1 "no limit" changes nothing; a v1 limit below the RAM bounds it; usage over it: 0 */
    snprintf(sub, sizeof sub, "%s/v1/job", dir);
    write_text(sub, "memory.limit_in_bytes", "9223372036854771712\n");
    write_text(sub, "memory.usage_in_bytes", "180314112\n");
    cpu_cgroup v1 = {.root = root1, .path = "/job", .v1 = true};
    CHECK(cpu_memory_info_from(meminfo, &v1, 1, &free_b, &total_b) == 0);
    CHECK(free_b == 12000000ull * 1024 && total_b == 16000000ull * 1024);
    write_text(sub, "memory.limit_in_bytes", "4294967296\n");
    write_text(sub, "memory.usage_in_bytes", "5000000000\n");
    cpu_cgroup both[2] = {v2, v1};
    CHECK(cpu_memory_info_from(meminfo, both, 2, &free_b, &total_b) == 0);
    CHECK(free_b == 0 && total_b == 4294967296ull);
    /* a group path that does not exist: no limit read */
    cpu_cgroup gone = {.root = root2, .path = "/nowhere", .v1 = false};
    CHECK(cpu_memory_info_from(meminfo, &gone, 1, &free_b, &total_b) == 0 && free_b == 12000000ull * 1024);
    /* malformed or missing meminfo */
    write_text(dir, "meminfo", "MemTotal:       16000000 kB\n");
    CHECK(cpu_memory_info_from(meminfo, NULL, 0, &free_b, &total_b) == -1 && free_b == 0 && total_b == 0);
    write_text(dir, "meminfo", "MemTotal: lots\nMemAvailable: 5 kB\n");
    CHECK(cpu_memory_info_from(meminfo, NULL, 0, &free_b, &total_b) == -1);
    snprintf(sub, sizeof sub, "%s/absent", dir);
    CHECK(cpu_memory_info_from(sub, NULL, 0, &free_b, &total_b) == -1);
    snprintf(mk, sizeof mk, "rm -rf %s", dir);
    CHECK(system(mk) == 0);
    /* this machine: something free, no more than in all */
    CHECK(K->memory_info && K->memory_info(&free_b, &total_b) == 0);
    CHECK(total_b > 0 && free_b <= total_b);
}

/* Against double sums, with padded strides, for small products and for m = 1 (the gemv path
 * of a generated token: several column tiles and k slices at 1 x 600 x 700). */
static void test_gemm(void) {
    const int shapes[][3] = {{5, 7, 6}, {1, 7, 6}, {1, 600, 700}};
    for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++)
    for (int combo = 0; combo < 4; combo++) {
        const int m = shapes[sh][0], n = shapes[sh][1], k = shapes[sh][2], pad = 3, ldc = n + 2;
        bool ta = combo & 1, tb = combo & 2;
        int lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad;
        float *a = vec((size_t)(ta ? k : m) * lda, -1, 1), *b = vec((size_t)(tb ? n : k) * ldb, -1, 1);
        float *c = vec((size_t)m * ldc, -1, 1), *c0 = malloc((size_t)m * ldc * sizeof(float));
        memcpy(c0, c, (size_t)m * ldc * sizeof(float));
        K->gemm(ta, tb, m, n, k, 1.5f, a, lda, b, ldb, 0.5f, c, ldc);
        double worst = 0.0;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                double acc = 0.0;
                for (int p = 0; p < k; p++)
                    acc += (double)(ta ? a[p * lda + i] : a[i * lda + p]) *
                           (tb ? b[j * ldb + p] : b[p * ldb + j]);
                double want = 1.5 * acc + 0.5 * c0[i * ldc + j];
                worst = fmax(worst, fabs(c[i * ldc + j] - want));
            }
        CHECK_MSG(worst < 1e-5 * (1 + k / 64), "gemm %d x %d x %d ta=%d tb=%d max error %g", m, n, k, ta, tb, worst);
        CHECK(c[ldc - 1] == c0[ldc - 1] && c[ldc - 2] == c0[ldc - 2]); /* padding untouched */
        /* beta = 0: C is not read, so NaN there must not leak into the result */
        for (int i = 0; i < m * ldc; i++) c[i] = NAN;
        K->gemm(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
        int finite = 1;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) finite &= isfinite(c[i * ldc + j]) != 0;
        CHECK_MSG(finite, "gemm %d x %d x %d ta=%d tb=%d: NaN in C leaked through beta 0", m, n, k, ta, tb);
        free(a), free(b), free(c), free(c0);
    }
}

/* The same bits with 1, 2 or 3 threads, for products long enough (k up to 2000) that
 * OpenBLAS's single- and multi-threaded drivers would group the k sums differently (they do
 * from k = 321 at 128 x 128 on the test machines' Cooper Lake kernels): a rank count that
 * changes the threads per rank must not change the results. Also against double sums, so
 * that slicing k keeps alpha, beta and every slice. */
static void test_gemm_threads(void) {
    const int shapes[][3] = {{128, 128, 400}, {128, 128, 1000}, {300, 200, 2000}, {33, 17, 777}, {64, 96, 256},
                             {64, 96, 257}, {1, 600, 700}, {1, 1000, 2000}, {1, 17, 300}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int combo = 0; combo < 4; combo++) {
            const int m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
            const bool ta = combo & 1, tb = combo & 2;
            const int lda = (ta ? m : k) + 1, ldb = (tb ? k : n) + 2;
            float *a = vec((size_t)(ta ? k : m) * lda, -1, 1), *b = vec((size_t)(tb ? n : k) * ldb, -1, 1);
            float *c0 = vec((size_t)m * n, -1, 1), *c[3];
            for (int t = 0; t < 3; t++) {
                c[t] = malloc((size_t)m * n * sizeof(float));
                memcpy(c[t], c0, (size_t)m * n * sizeof(float));
                omp_set_num_threads(t + 1);
                K->gemm(ta, tb, m, n, k, 0.75f, a, lda, b, ldb, 0.5f, c[t], n);
            }
            omp_set_num_threads(2);
            CHECK_MSG(!memcmp(c[0], c[1], (size_t)m * n * sizeof(float)) &&
                          !memcmp(c[1], c[2], (size_t)m * n * sizeof(float)),
                      "gemm %d x %d x %d ta=%d tb=%d: other bits with 1, 2 and 3 threads", m, n, k, ta, tb);
            double worst = 0.0;
            for (int i = 0; i < m; i += 7)
                for (int j = 0; j < n; j += 5) {
                    double acc = 0.0;
                    for (int p = 0; p < k; p++)
                        acc += (double)(ta ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p]) *
                               (tb ? b[(size_t)j * ldb + p] : b[(size_t)p * ldb + j]);
                    const double want = 0.75 * acc + 0.5 * c0[(size_t)i * n + j];
                    worst = fmax(worst, fabs(c[0][(size_t)i * n + j] - want) / (1.0 + fabs(want)));
                }
            CHECK_MSG(worst < 1e-4, "gemm %d x %d x %d ta=%d tb=%d: error %g vs double sums", m, n, k, ta, tb, worst);
            free(a), free(b), free(c0), free(c[0]), free(c[1]), free(c[2]);
        }
}

/* ------------------------------------------------------------------ element-wise */
static void test_elementwise(void) {
    const size_t n = 100003;
    float *a = vec(n, -1, 1), *b = vec(n, -1, 1), *out = malloc(n * sizeof(float));
    K->add(out, a, b, n);
    CHECK(out[0] == a[0] + b[0] && out[n - 1] == a[n - 1] + b[n - 1]);
    float a7 = a[7];
    K->add(a, a, b, n); /* aliased output */
    CHECK(a[7] == a7 + b[7]);
    memcpy(out, b, n * sizeof(float));
    K->axpy(out, 0.25f, a, n);
    CHECK(out[n / 2] == b[n / 2] + 0.25f * a[n / 2]);
    K->scale(out, -2.0f, n);
    CHECK(out[n / 2] == -2.0f * (b[n / 2] + 0.25f * a[n / 2]));
    free(a), free(b), free(out);
}

static void test_sum_squares(void) {
    const size_t n = 4500001; /* > one group of 512 blocks of 8192, odd tail */
    float *x = vec(n, -2, 2);
    long double ref = 0.0L;
    for (size_t i = 0; i < n; i++) ref += (long double)x[i] * x[i];
    omp_set_num_threads(1);
    double one = K->sum_squares(x, n);
    omp_set_num_threads(2);
    double two = K->sum_squares(x, n);
    CHECK_MSG(fabs(two - (double)ref) <= 1e-12 * (double)ref, "%.17g vs %.17g", two, (double)ref);
    CHECK(one == two); /* bitwise independent of the thread count */
    CHECK(K->sum_squares(x, 0) == 0.0 && K->sum_squares(x, 1) == (double)x[0] * x[0]);
    /* Per block in one call: the bits of sum_squares on each block, short last block too. */
    const size_t blocks_n = 3 * 4096 + 123, block = 4096;
    double sums[5] = {-1, -1, -1, -1, -7};
    K->sum_squares_blocks(x, blocks_n, block, sums);
    for (int b = 0; b < 4; b++) {
        size_t len = blocks_n - b * block < block ? blocks_n - b * block : block;
        CHECK_MSG(sums[b] == K->sum_squares(x + b * block, len), "block %d", b);
    }
    CHECK(sums[4] == -7); /* nothing past the last block */
    free(x);
}

/* Reads "key v1 v2 ..." from a fixture file into vals; returns how many were read. */
static int read_fixture_line(const char *file, const char *key, double *vals, int max) {
    char path[1024], line[8192];
    FILE *f = fopen(check_source_path(file, path, sizeof path), "r");
    if (!f) return 0;
    size_t klen = strlen(key);
    int count = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, klen) != 0 || line[klen] != ' ') continue;
        char *p = line + klen, *end;
        while (count < max) {
            double d = strtod(p, &end);
            if (end == p) break;
            vals[count++] = d;
            p = end;
        }
        break;
    }
    fclose(f);
    return count;
}

static void test_dropout(void) {
    /* Against tests/fixtures/dropout_mask.txt (scripts/gen_dropout_fixture.py). */
    char path[1024], line[8192];
    FILE *f = fopen(check_source_path("tests/fixtures/dropout_mask.txt", path, sizeof path), "r");
    CHECK_MSG(f != NULL, "cannot open %s", path);
    int cases = 0;
    while (f && fgets(line, sizeof line, f)) {
        unsigned long long seed, offset;
        double p;
        int n;
        if (sscanf(line, "case %llu %llu %lf %d", &seed, &offset, &p, &n) != 4) continue;
        char top_line[8192], keep_line[8192];
        if (!fgets(top_line, sizeof top_line, f) || !fgets(keep_line, sizeof keep_line, f)) break;
        float ones[64], out[64];
        for (int i = 0; i < 64; i++) ones[i] = 1.0f;
        K->dropout(out, ones, (float)p, seed, offset, (size_t)n);
        char *tp = top_line + 6, *kp = keep_line + 5;
        int mismatches = 0;
        for (int i = 0; i < n; i++) {
            long top = strtol(tp, &tp, 10), keep = strtol(kp, &kp, 10);
            float want = keep ? 1.0f / (1.0f - (float)p) : 0.0f;
            mismatches += out[i] != want;
            /* the exact 24-bit draw: p equal to it keeps the element, one step above drops it */
            float kept, dropped;
            K->dropout(&kept, ones, (float)(top * 0x1p-24), seed, offset + (uint64_t)i, 1);
            K->dropout(&dropped, ones, (float)((top + 1) * 0x1p-24), seed, offset + (uint64_t)i, 1);
            mismatches += kept == 0.0f || dropped != 0.0f;
        }
        CHECK_MSG(mismatches == 0, "dropout case seed %llu offset %llu: %d mismatches", seed,
                  offset, mismatches);
        cases++;
    }
    if (f) fclose(f);
    CHECK(cases == 3);

    const size_t n = 200000;
    float *x = vec(n, 0.5f, 1.5f), *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    K->dropout(a, x, 0.3f, 99, 5000, n);
    size_t kept = 0, wrong_value = 0;
    for (size_t i = 0; i < n; i++) {
        kept += a[i] != 0.0f;
        wrong_value += a[i] != 0.0f && a[i] != x[i] / 0.7f;
    }
    CHECK_MSG(fabs((double)kept / n - 0.7) < 0.005, "kept fraction %g", (double)kept / n);
    CHECK(wrong_value == 0);
    K->dropout(b, x, 0.3f, 99, 5000, n);
    CHECK(memcmp(a, b, n * sizeof(float)) == 0);
    K->dropout(b, x + 10, 0.3f, 99, 5010, n - 10); /* the mask is a function of offset + i */
    CHECK(memcmp(a + 10, b, (n - 10) * sizeof(float)) == 0);
    K->dropout(b, x, 0.3f, 100, 5000, n);
    size_t differ = 0;
    for (size_t i = 0; i < n; i++) differ += (a[i] == 0.0f) != (b[i] == 0.0f);
    CHECK(differ > n / 4); /* another seed, another mask */
    K->dropout(b, x, 0.0f, 1, 0, n);
    CHECK(memcmp(b, x, n * sizeof(float)) == 0);

    /* dropout_add: the bits of dropout then axpy(y, 1, .); dropout_half: of dropout then
     * to_half, both formats (values spanning the formats' ranges, signed zeros and a NaN). */
    float *y0 = vec(n, -3.0f, 3.0f), *want = malloc(n * sizeof(float)), *got = malloc(n * sizeof(float));
    y0[0] = -0.0f, x[1] = -0.0f, x[2] = NAN, x[3] = 70000.0f, x[4] = 1e-30f;
    for (size_t i = 5; i < 1000; i++) x[i] = ldexpf(x[i], (int)(i % 60) - 30);
    const float probs[] = {0.0f, 0.05f, 0.5f, 1.0f};
    for (int c = 0; c < 4; c++) {
        memcpy(want, y0, n * sizeof(float));
        memcpy(got, y0, n * sizeof(float));
        K->dropout(a, x, probs[c], 7, 123, n);
        K->axpy(want, 1.0f, a, n);
        K->dropout_add(got, x, probs[c], 7, 123, n);
        CHECK_MSG(memcmp(want, got, n * sizeof(float)) == 0, "dropout_add p %g: not dropout + axpy bit for bit",
                  probs[c]);
        for (int f = KERNELS_BF16; f <= KERNELS_FP16; f++) {
            uint16_t *hw = malloc(n * sizeof(uint16_t)), *hg = malloc(n * sizeof(uint16_t));
            K->to_half(hw, a, n, (kernels_half_format)f);
            K->dropout_half((kernels_half_format)f, hg, x, probs[c], 7, 123, n);
            CHECK_MSG(memcmp(hw, hg, n * sizeof(uint16_t)) == 0, "dropout_half p %g fmt %d: not to_half(dropout)",
                      probs[c], f);
            free(hw), free(hg);
        }
    }
    free(y0), free(want), free(got);
    free(x), free(a), free(b);
}

/* ------------------------------------------------------------------ embedding */
typedef struct embed_ctx {
    float *table, *out, *w;
    const int32_t *ids;
    int n_tokens, hidden;
} embed_ctx;
static double embed_loss(void *p) {
    embed_ctx *c = p;
    K->embedding_fwd(c->out, c->table, c->ids, c->n_tokens, c->hidden);
    return weighted_sum(c->out, c->w, (size_t)c->n_tokens * c->hidden);
}

static void test_embedding(void) {
    const int32_t ids[] = {1, 4, 1, 1, 0, 5, 4, 1};
    const int vocab = 6, n_tokens = 8;
    for (int hidden = 5; hidden <= 130; hidden += 125) { /* 130: several column blocks */
        size_t nt = (size_t)vocab * hidden, no = (size_t)n_tokens * hidden;
        embed_ctx c = {vec(nt, -1, 1), malloc(no * sizeof(float)), vec(no, -1, 1), ids, n_tokens, hidden};
        embed_loss(&c);
        int same = 1;
        for (int t = 0; t < n_tokens; t++)
            same &= memcmp(c.out + (size_t)t * hidden, c.table + (size_t)ids[t] * hidden,
                           hidden * sizeof(float)) == 0;
        CHECK(same);
        float *dtable = vec(nt, -1, 1), *before = malloc(nt * sizeof(float));
        memcpy(before, dtable, nt * sizeof(float));
        K->embedding_bwd(dtable, c.w, ids, NULL, n_tokens, hidden);
        double worst = 0.0;
        for (size_t i = 0; i < nt; i++) dtable[i] -= before[i]; /* accumulated, not written */
        for (int v = 0; v < vocab; v++)
            for (int j = 0; j < hidden; j++) {
                double want = 0.0;
                for (int t = 0; t < n_tokens; t++)
                    if (ids[t] == v) want += c.w[(size_t)t * hidden + j];
                worst = fmax(worst, fabs(dtable[(size_t)v * hidden + j] - want));
            }
        CHECK_MSG(worst < 1e-6, "embedding_bwd error %g", worst);
        check_grad("embedding dtable", c.table, nt, dtable, embed_loss, &c, 1e-2f, 1e-2, 1);
        free(c.table), free(c.out), free(c.w), free(dtable), free(before);
    }
}

/* ------------------------------------------------------------------ rmsnorm */
typedef struct rms_ctx {
    float *x, *weight, *out, *rstd, *w;
    int rows, dim;
} rms_ctx;
static double rms_loss(void *p) {
    rms_ctx *c = p;
    K->rmsnorm_fwd(c->out, c->rstd, c->x, c->weight, c->rows, c->dim, 1e-5f);
    return weighted_sum(c->out, c->w, (size_t)c->rows * c->dim);
}

static void test_rmsnorm(void) {
    const int rows = 3, dim = 270; /* dim spans two column blocks of the dweight pass */
    size_t n = (size_t)rows * dim;
    rms_ctx c = {vec(n, -2, 2), vec(dim, 0.5f, 1.5f), malloc(n * sizeof(float)),
                 malloc(rows * sizeof(float)), vec(n, -1, 1), rows, dim};
    rms_loss(&c);
    double worst = 0.0;
    for (int r = 0; r < rows; r++) {
        double ms = 0.0;
        for (int j = 0; j < dim; j++) ms += (double)c.x[r * dim + j] * c.x[r * dim + j];
        double rs = 1.0 / sqrt(ms / dim + 1e-5);
        CHECK_CLOSE(c.rstd[r], rs, 1e-6);
        for (int j = 0; j < dim; j++)
            worst = fmax(worst, fabs(c.out[r * dim + j] - c.weight[j] * c.x[r * dim + j] * rs));
    }
    CHECK_MSG(worst < 1e-5, "rmsnorm forward error %g", worst);
    float *dx = malloc(n * sizeof(float)), *dx2 = malloc(n * sizeof(float));
    float *dweight = malloc(dim * sizeof(float));
    for (int j = 0; j < dim; j++) dweight[j] = 1.0f;
    K->rmsnorm_bwd(dx, dweight, c.w, c.x, c.weight, c.rstd, rows, dim, false);
    for (int j = 0; j < dim; j++) dweight[j] -= 1.0f; /* accumulated onto the 1s */
    check_grad("rmsnorm dx", c.x, n, dx, rms_loss, &c, 1e-2f, 1e-2, 1);
    check_grad("rmsnorm dweight", c.weight, dim, dweight, rms_loss, &c, 1e-2f, 1e-2, 1);
    for (size_t j = 0; j < n; j++) dx2[j] = NAN;
    K->rmsnorm_bwd(dx2, NULL, c.w, c.x, c.weight, c.rstd, rows, dim, false); /* frozen weight */
    CHECK(memcmp(dx, dx2, n * sizeof(float)) == 0);
    /* add_to_dx: the bits of writing dx then axpy(y, 1, dx) */
    float *y = vec(n, -2.0f, 2.0f), *want = malloc(n * sizeof(float));
    memcpy(want, y, n * sizeof(float));
    K->axpy(want, 1.0f, dx, n);
    K->rmsnorm_bwd(y, NULL, c.w, c.x, c.weight, c.rstd, rows, dim, true);
    CHECK_MSG(memcmp(y, want, n * sizeof(float)) == 0, "rmsnorm_bwd add_to_dx: not write + axpy bit for bit");
    free(y), free(want);
    free(c.x), free(c.weight), free(c.out), free(c.rstd), free(c.w), free(dx), free(dx2), free(dweight);
}

/* ------------------------------------------------------------------ rope */
typedef struct rope_ctx {
    float *x, *work, *w, *inv_freq;
    const int32_t *pos;
    int n_tokens, n_heads, head_dim;
} rope_ctx;
static double rope_loss(void *p) {
    rope_ctx *c = p;
    size_t n = (size_t)c->n_tokens * c->n_heads * c->head_dim;
    memcpy(c->work, c->x, n * sizeof(float));
    K->rope_fwd(c->work, c->pos, c->inv_freq, c->n_tokens, c->n_heads, c->head_dim);
    return weighted_sum(c->work, c->w, n);
}

static void test_rope(void) {
    const int32_t pos[] = {0, 1, 2, 7, 100, 1000};
    const int n_tokens = 6, n_heads = 3, d = 8, half = d / 2;
    size_t n = (size_t)n_tokens * n_heads * d;
    float inv_freq[4];
    for (int j = 0; j < half; j++) inv_freq[j] = (float)pow(10000.0, -2.0 * j / d);
    rope_ctx c = {vec(n, -1, 1), malloc(n * sizeof(float)), vec(n, -1, 1), inv_freq, pos,
                  n_tokens, n_heads, d};
    rope_loss(&c);
    double worst = 0.0;
    for (int t = 0; t < n_tokens; t++)
        for (int h = 0; h < n_heads; h++)
            for (int i = 0; i < d; i++) {
                /* q' = q cos + rotate_half(q) sin, rotate_half(q) = cat(-q[d/2:], q[:d/2]) */
                const float *x = c.x + ((size_t)t * n_heads + h) * d;
                float angle = (float)pos[t] * inv_freq[i % half];
                double rot = i < half ? -x[i + half] : x[i - half];
                double want = x[i] * cos(angle) + rot * sin(angle);
                worst = fmax(worst, fabs(c.work[((size_t)t * n_heads + h) * d + i] - want));
            }
    CHECK_MSG(worst < 1e-5, "rope forward error %g", worst);
    K->rope_bwd(c.work, pos, inv_freq, n_tokens, n_heads, d); /* inverse rotation */
    worst = 0.0;
    for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs(c.work[i] - c.x[i]));
    CHECK_MSG(worst < 1e-6, "rope_bwd(rope_fwd(x)) - x = %g", worst);
    float *dx = malloc(n * sizeof(float));
    memcpy(dx, c.w, n * sizeof(float));
    K->rope_bwd(dx, pos, inv_freq, n_tokens, n_heads, d);
    check_grad("rope dx", c.x, n, dx, rope_loss, &c, 1e-2f, 1e-3, 1);
    free(c.x), free(c.work), free(c.w), free(dx);
}

/* ------------------------------------------------------------------ swiglu */
typedef struct swiglu_ctx {
    float *gate, *up, *out, *w;
    size_t n;
} swiglu_ctx;
static double swiglu_loss(void *p) {
    swiglu_ctx *c = p;
    K->swiglu_fwd(c->out, c->gate, c->up, c->n);
    return weighted_sum(c->out, c->w, c->n);
}

static void test_swiglu(void) {
    const size_t n = 96;
    swiglu_ctx c = {vec(n, -5, 5), vec(n, -2, 2), malloc(n * sizeof(float)), vec(n, -1, 1), n};
    swiglu_loss(&c);
    double worst = 0.0;
    for (size_t i = 0; i < n; i++)
        worst = fmax(worst, fabs(c.out[i] - c.gate[i] / (1.0 + exp(-(double)c.gate[i])) * c.up[i]));
    CHECK_MSG(worst < 1e-5, "swiglu forward error %g", worst);
    float *dgate = malloc(n * sizeof(float)), *dup = malloc(n * sizeof(float));
    K->swiglu_bwd(dgate, dup, c.w, c.gate, c.up, n);
    check_grad("swiglu dgate", c.gate, n, dgate, swiglu_loss, &c, 1e-2f, 1e-2, 1);
    check_grad("swiglu dup", c.up, n, dup, swiglu_loss, &c, 1e-2f, 1e-2, 1);
    free(c.gate), free(c.up), free(c.out), free(c.w), free(dgate), free(dup);
}

/* ------------------------------------------------------------------ cpu_expf */
/* The softmaxes' vectorisable expf against exp in double, in ulp of the float result:
 * every 509th float of [-1, 1] (where the polynomial alone decides) and a
 * strided sweep of the whole domain (where the exponent bits do too). */
static double expf_ulp_error(float x) {
    double want = exp((double)x);
    int e;
    frexp(want, &e);
    return fabs(cpu_expf(x) - want) / ldexp(1.0, e - 24);
}
static void test_cpu_expf(void) {
    double worst = 0.0;
    float worst_x = 0.0f;
    uint32_t bits_lo, bits_hi;
    const float near_lo = -1.0f, near_hi = 1.0f;
    memcpy(&bits_lo, &near_lo, 4), memcpy(&bits_hi, &near_hi, 4);
    for (uint32_t u = 0x80000000u; u < bits_lo; u += 509) { /* [-1, -0] */
        float x;
        memcpy(&x, &u, 4);
        double err = expf_ulp_error(x);
        if (err > worst) worst = err, worst_x = x;
    }
    for (uint32_t u = 0; u < bits_hi; u += 509) { /* [0, 1] */
        float x;
        memcpy(&x, &u, 4);
        double err = expf_ulp_error(x);
        if (err > worst) worst = err, worst_x = x;
    }
    for (int i = 0; i <= 2000000; i++) {
        float x = -87.33f + (float)i * (175.63f / 2000000.0f);
        double err = expf_ulp_error(x);
        if (err > worst) worst = err, worst_x = x;
    }
    CHECK_MSG(worst <= 2.0, "cpu_expf: %.3f ulp off at x = %.9g", worst, worst_x);
    CHECK(cpu_expf(0.0f) == 1.0f && cpu_expf(-INFINITY) == 0.0f && cpu_expf(-100.0f) == 0.0f);
    CHECK(isnan(cpu_expf(NAN)) && cpu_expf(-87.3f) > 0.0f);
}

/* ------------------------------------------------------------------ attention */
typedef struct attn_ctx {
    float *q, *k, *v, *out, *lse, *w;
    const int32_t *doc;
    int batch, seq, nh, nkv, d;
    float scale;
} attn_ctx;
static double attn_loss(void *p) {
    attn_ctx *c = p;
    K->attention_fwd(c->out, c->lse, c->q, c->k, c->v, c->doc, c->batch, c->seq, c->nh, c->nkv,
                     c->d, c->scale);
    return weighted_sum(c->out, c->w, (size_t)c->batch * c->seq * c->nh * c->d);
}

/* The textbook computation in double, one materialised softmax row at a time; with dout
 * it also returns the gradients (written into zeroed dq, dk, dv). */
static void naive_attention(const attn_ctx *c, double *out, double *lse, const float *dout,
                            double *dq, double *dk, double *dv) {
    const int S = c->seq, H = c->nh, D = c->d, group = c->nh / c->nkv;
    const size_t qs = (size_t)H * D, ks = (size_t)c->nkv * D;
    double *prob = malloc(S * sizeof(double));
    for (int b = 0; b < c->batch; b++)
        for (int h = 0; h < H; h++)
            for (int s = 0; s < S; s++) {
                size_t qo = ((size_t)b * S + s) * qs + (size_t)h * D;
                size_t kb = (size_t)b * S * ks + (size_t)(h / group) * D;
                double mx = -INFINITY, sum = 0.0;
                for (int j = 0; j < S; j++) {
                    prob[j] = -INFINITY;
                    if (j > s || (c->doc && c->doc[b * S + j] != c->doc[b * S + s])) continue;
                    double sc = 0.0;
                    for (int i = 0; i < D; i++) sc += (double)c->q[qo + i] * c->k[kb + j * ks + i];
                    prob[j] = sc * c->scale;
                    mx = fmax(mx, prob[j]);
                }
                for (int j = 0; j < S; j++) sum += exp(prob[j] - mx);
                lse[((size_t)b * H + h) * S + s] = mx + log(sum);
                for (int i = 0; i < D; i++) out[qo + i] = 0.0;
                for (int j = 0; j < S; j++) {
                    prob[j] = exp(prob[j] - mx) / sum;
                    for (int i = 0; i < D; i++) out[qo + i] += prob[j] * c->v[kb + j * ks + i];
                }
                if (!dout) continue;
                double Dsum = 0.0;
                for (int i = 0; i < D; i++) Dsum += dout[qo + i] * out[qo + i];
                for (int j = 0; j < S; j++) {
                    if (prob[j] == 0.0) continue;
                    double dp = 0.0;
                    for (int i = 0; i < D; i++) dp += dout[qo + i] * c->v[kb + j * ks + i];
                    double ds = prob[j] * (dp - Dsum) * c->scale;
                    for (int i = 0; i < D; i++) {
                        dq[qo + i] += ds * c->k[kb + j * ks + i];
                        dk[kb + j * ks + i] += ds * c->q[qo + i];
                        dv[kb + j * ks + i] += prob[j] * dout[qo + i];
                    }
                }
            }
    free(prob);
}

static double max_diff(const float *a, const double *b, size_t n) {
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs(a[i] - b[i]));
    return worst;
}

/* fd_stride: check every fd_stride-th input element by finite differences. */
static void run_attention_case(const char *name, int batch, int seq, int nh, int nkv, int d,
                               const int32_t *doc, size_t fd_stride) {
    size_t nq = (size_t)batch * seq * nh * d, nk = (size_t)batch * seq * nkv * d;
    size_t nl = (size_t)batch * nh * seq;
    attn_ctx c = {vec(nq, -2, 2), vec(nk, -1, 1), vec(nk, -1, 1), malloc(nq * sizeof(float)),
                  malloc(nl * sizeof(float)), vec(nq, -1, 1), doc, batch, seq, nh, nkv, d,
                  1.0f / sqrtf((float)d)};
    attn_loss(&c);
    double *ref = calloc(nq + nl + nq + 2 * nk, sizeof(double));
    double *ref_lse = ref + nq, *ref_dq = ref_lse + nl, *ref_dk = ref_dq + nq, *ref_dv = ref_dk + nk;
    naive_attention(&c, ref, ref_lse, c.w, ref_dq, ref_dk, ref_dv);
    double err_out = max_diff(c.out, ref, nq), err_lse = max_diff(c.lse, ref_lse, nl);
    CHECK_MSG(err_out < 1e-5 && err_lse < 1e-5, "%s forward: out error %g, lse error %g", name,
              err_out, err_lse);

    float *grads = malloc((nq + 2 * nk) * sizeof(float)), *dq = grads, *dk = dq + nq, *dv = dk + nk;
    for (size_t i = 0; i < nq + 2 * nk; i++) grads[i] = NAN; /* all must be written */
    K->attention_bwd(dq, dk, dv, c.w, c.q, c.k, c.v, c.out, c.lse, doc, batch, seq, nh, nkv, d, c.scale);
    double err_dq = max_diff(dq, ref_dq, nq), err_dk = max_diff(dk, ref_dk, nk);
    double err_dv = max_diff(dv, ref_dv, nk);
    CHECK_MSG(err_dq < 1e-4 && err_dk < 1e-4 && err_dv < 1e-4,
              "%s backward vs naive: dq %g dk %g dv %g", name, err_dq, err_dk, err_dv);
    /* bitwise the same result on one thread as on two */
    float *again = malloc((nq + 2 * nk) * sizeof(float));
    omp_set_num_threads(1);
    K->attention_bwd(again, again + nq, again + nq + nk, c.w, c.q, c.k, c.v, c.out, c.lse, doc,
                     batch, seq, nh, nkv, d, c.scale);
    omp_set_num_threads(2);
    CHECK(memcmp(again, grads, (nq + 2 * nk) * sizeof(float)) == 0);
    /* and on three (the backward cuts its work differently for more threads than
     * (batch, kv head) pairs), forward included */
    float *out3 = malloc((nq + nl) * sizeof(float));
    omp_set_num_threads(3);
    K->attention_bwd(again, again + nq, again + nq + nk, c.w, c.q, c.k, c.v, c.out, c.lse, doc,
                     batch, seq, nh, nkv, d, c.scale);
    K->attention_fwd(out3, out3 + nq, c.q, c.k, c.v, doc, batch, seq, nh, nkv, d, c.scale);
    omp_set_num_threads(2);
    CHECK_MSG(memcmp(again, grads, (nq + 2 * nk) * sizeof(float)) == 0,
              "%s backward differs on 3 threads", name);
    CHECK_MSG(memcmp(out3, c.out, nq * sizeof(float)) == 0 &&
                  memcmp(out3 + nq, c.lse, nl * sizeof(float)) == 0,
              "%s forward differs on 3 threads", name);
    free(out3);
    char what[128];
    snprintf(what, sizeof what, "%s dq", name);
    check_grad(what, c.q, nq, dq, attn_loss, &c, 1e-2f, 1e-2, fd_stride);
    snprintf(what, sizeof what, "%s dk", name);
    check_grad(what, c.k, nk, dk, attn_loss, &c, 1e-2f, 1e-2, fd_stride);
    snprintf(what, sizeof what, "%s dv", name);
    check_grad(what, c.v, nk, dv, attn_loss, &c, 1e-2f, 1e-2, fd_stride);

    free(c.q), free(c.k), free(c.v), free(c.out), free(c.lse), free(c.w), free(ref), free(grads),
        free(again);
}

static void test_attention(void) {
    /* GQA: 4 query heads share 2 kv heads; batch 2 */
    run_attention_case("attention", 2, 7, 4, 2, 8, NULL, 1);
    const int32_t docs[] = {3, 3, 3, 4, 4, 4, 4, /* batch 1: */ 1, 2, 2, 2, 9, 9, 9};
    run_attention_case("attention doc-masked", 2, 7, 4, 2, 8, docs, 1);
    /* Longer than the 64-key tiles, a document boundary inside a tile, MQA (1 kv head). */
    int32_t long_docs[150];
    for (int s = 0; s < 150; s++) long_docs[s] = s < 70 ? 0 : 1;
    run_attention_case("attention long", 1, 150, 4, 1, 16, long_docs, 97);
    /* Several query blocks and key tiles with a ragged last one, at a real head size; one
     * sequence holds many short documents (whole tiles hidden), the other none. */
    int32_t many_docs[2 * 200];
    for (int s = 0; s < 200; s++) many_docs[s] = s / 23, many_docs[200 + s] = 5;
    run_attention_case("attention blocks", 2, 200, 6, 2, 64, NULL, 1999);
    run_attention_case("attention blocks doc-masked", 2, 200, 6, 2, 64, many_docs, 1999);
}

/* attention_cached: the last n_new queries of a sequence against all its keys must give the
 * rows attention_fwd gives over the whole sequence (to rounding: one pass per row instead of
 * tiles), for a prompt in one call (n_past 0) and for later tokens one or several at a time;
 * attention_cached_half is that on the widened 16-bit inputs, rounded once. */
static void cached_case(int seq, int n_new, int nh, int nkv, int d) {
    const size_t width = (size_t)nh * d, kv_width = (size_t)nkv * d;
    float *q = vec(seq * width, -1, 1), *k = vec(seq * kv_width, -1, 1), *v = vec(seq * kv_width, -1, 1);
    float *full = malloc(seq * width * sizeof(float)), *lse = malloc((size_t)nh * seq * sizeof(float));
    float *out = malloc((size_t)n_new * width * sizeof(float));
    const float scale = 1.0f / sqrtf((float)d);
    K->attention_fwd(full, lse, q, k, v, NULL, 1, seq, nh, nkv, d, scale);
    const int n_past = seq - n_new;
    K->attention_cached(out, q + (size_t)n_past * width, k, v, n_new, n_past, nh, nkv, d, scale);
    double worst = 0;
    for (size_t e = 0; e < (size_t)n_new * width; e++) {
        const double diff = fabs(out[e] - full[(size_t)n_past * width + e]);
        if (diff > worst) worst = diff;
    }
    CHECK_MSG(worst < 2e-6, "attention_cached seq %d new %d heads %d/%d d %d: max difference %.3g", seq, n_new, nh,
              nkv, d, worst);
    /* 16-bit: the fp32 result on the rounded inputs, rounded; out_half rows ld apart */
    const int ld = (int)width + 3;
    uint16_t *hq = malloc(seq * width * 2), *hk = malloc(seq * kv_width * 2), *hv = malloc(seq * kv_width * 2);
    uint16_t *h_out = malloc((size_t)n_new * ld * 2), *expect = malloc(width * 2);
    float *wq = malloc(seq * width * sizeof(float)), *wk = malloc(seq * kv_width * sizeof(float));
    float *wv = malloc(seq * kv_width * sizeof(float)), *out2 = malloc((size_t)n_new * width * sizeof(float));
    K->to_half(hq, q, seq * width, KERNELS_BF16);
    K->to_half(hk, k, seq * kv_width, KERNELS_BF16);
    K->to_half(hv, v, seq * kv_width, KERNELS_BF16);
    K->from_half(wq, hq, seq * width, KERNELS_BF16);
    K->from_half(wk, hk, seq * kv_width, KERNELS_BF16);
    K->from_half(wv, hv, seq * kv_width, KERNELS_BF16);
    K->attention_cached(out, wq + (size_t)n_past * width, wk, wv, n_new, n_past, nh, nkv, d, scale);
    for (size_t e = 0; e < (size_t)n_new * ld; e++) h_out[e] = 0x1234;
    K->attention_cached_half(KERNELS_BF16, h_out, ld, out2, hq + (size_t)n_past * width, hk, hv, n_new, n_past, nh,
                             nkv, d, scale);
    CHECK(memcmp(out, out2, (size_t)n_new * width * sizeof(float)) == 0);
    bool same = true, untouched = true;
    for (int i = 0; i < n_new; i++) {
        K->to_half(expect, out + (size_t)i * width, width, KERNELS_BF16);
        same &= memcmp(expect, h_out + (size_t)i * ld, width * 2) == 0;
        for (int c = (int)width; c < ld; c++) untouched &= h_out[(size_t)i * ld + c] == 0x1234;
    }
    CHECK_MSG(same && untouched, "attention_cached_half seq %d new %d: rounded output rows", seq, n_new);
    free(q), free(k), free(v), free(full), free(lse), free(out);
    free(hq), free(hk), free(hv), free(h_out), free(expect), free(wq), free(wk), free(wv), free(out2);
}

static void test_attention_cached(void) {
    cached_case(9, 9, 4, 2, 8);   /* a prompt: nothing cached yet */
    cached_case(9, 1, 4, 2, 8);   /* one new token */
    cached_case(70, 3, 6, 1, 16); /* several, MQA */
    cached_case(130, 1, 4, 4, 64);
}

/* ------------------------------------------------------------------ cross-entropy */
typedef struct ce_ctx {
    float *logits, *work, *loss;
    const int32_t *targets;
    int rows, vocab;
} ce_ctx;
static double ce_loss(void *p) {
    ce_ctx *c = p;
    memcpy(c->work, c->logits, (size_t)c->rows * c->vocab * sizeof(float));
    K->cross_entropy(c->work, c->loss, c->targets, c->rows, c->vocab, 0.0f);
    double total = 0.0;
    for (int r = 0; r < c->rows; r++) total += 0.5 * c->loss[r]; /* grad_scale 0.5 below */
    return total;
}

static void test_cross_entropy(void) {
    const int32_t targets[] = {3, 0, -1, 12, 7};
    const int rows = 5, vocab = 13;
    size_t n = (size_t)rows * vocab;
    ce_ctx c = {vec(n, -3, 3), malloc(n * sizeof(float)), malloc(rows * sizeof(float)), targets,
                rows, vocab};
    ce_loss(&c);
    CHECK(memcmp(c.work, c.logits, n * sizeof(float)) == 0); /* grad_scale 0: untouched */
    for (int r = 0; r < rows; r++) {
        double sum = 0.0;
        for (int i = 0; i < vocab; i++) sum += exp(c.logits[r * vocab + i]);
        double want = targets[r] < 0 ? 0.0 : log(sum) - c.logits[r * vocab + targets[r]];
        CHECK_CLOSE(c.loss[r], want, 1e-6);
    }
    float *grad = malloc(n * sizeof(float));
    memcpy(grad, c.logits, n * sizeof(float));
    K->cross_entropy(grad, c.loss, targets, rows, vocab, 0.5f);
    int ignored_zero = 1;
    for (int i = 0; i < vocab; i++) ignored_zero &= grad[2 * vocab + i] == 0.0f;
    CHECK(ignored_zero && c.loss[2] == 0.0f);
    check_grad("cross_entropy dlogits", c.logits, n, grad, ce_loss, &c, 1e-2f, 1e-2, 1);

    /* huge logits: max subtraction keeps it finite and shift-invariant */
    float big[13], shifted[13], loss_big, loss_shifted;
    const int32_t t3 = 3;
    for (int i = 0; i < vocab; i++) big[i] = 1000.0f + c.logits[i], shifted[i] = c.logits[i];
    K->cross_entropy(big, &loss_big, &t3, 1, vocab, 1.0f);
    K->cross_entropy(shifted, &loss_shifted, &t3, 1, vocab, 1.0f);
    CHECK(isfinite(loss_big) && fabsf(loss_big - loss_shifted) < 1e-3f);
    double gsum = 0.0;
    for (int i = 0; i < vocab; i++) gsum += big[i];
    CHECK(fabs(gsum) < 1e-5); /* softmax - onehot sums to zero */
    const int32_t bad = 13;   /* out of range: NaN loss, no out-of-bounds read */
    K->cross_entropy(shifted, &loss_big, &bad, 1, vocab, 0.0f);
    CHECK(isnan(loss_big));

    /* a wide vocabulary against softmax in double, loss and every gradient entry */
    const int wide_rows = 3, wide_vocab = 5003;
    const int32_t wide_targets[] = {0, 5002, 1234};
    size_t wn = (size_t)wide_rows * wide_vocab;
    float *wide = vec(wn, -30, 30), *wide_grad = malloc(wn * sizeof(float)), wide_loss[3];
    memcpy(wide_grad, wide, wn * sizeof(float));
    K->cross_entropy(wide_grad, wide_loss, wide_targets, wide_rows, wide_vocab, 0.25f);
    double worst_loss = 0.0, worst_grad = 0.0;
    for (int r = 0; r < wide_rows; r++) {
        const float *z = wide + (size_t)r * wide_vocab;
        double mx = -INFINITY, sum = 0.0;
        for (int i = 0; i < wide_vocab; i++) mx = fmax(mx, z[i]);
        for (int i = 0; i < wide_vocab; i++) sum += exp(z[i] - mx);
        double want = mx + log(sum) - z[wide_targets[r]];
        worst_loss = fmax(worst_loss, fabs(wide_loss[r] - want) / want);
        for (int i = 0; i < wide_vocab; i++) {
            double g = 0.25 * (exp(z[i] - mx) / sum - (i == wide_targets[r]));
            worst_grad = fmax(worst_grad, fabs(wide_grad[(size_t)r * wide_vocab + i] - g));
        }
    }
    CHECK_MSG(worst_loss < 1e-6 && worst_grad < 1e-7, "cross_entropy wide: loss rel %g grad %g",
              worst_loss, worst_grad);
    free(wide), free(wide_grad);
    free(c.logits), free(c.work), free(c.loss), free(grad);
}

/* ------------------------------------------------------------------ adamw */
static int close_rel(double a, double b, double rel) { return fabs(a - b) <= rel * fabs(b) + 1e-30; }

static void test_adamw(void) {
    const char *fx = "tests/fixtures/adamw_steps.txt";
    double lr, b1, b2, eps, wd, steps, p0[10];
    int ok = read_fixture_line(fx, "lr", &lr, 1) + read_fixture_line(fx, "beta1", &b1, 1) +
             read_fixture_line(fx, "beta2", &b2, 1) + read_fixture_line(fx, "eps", &eps, 1) +
             read_fixture_line(fx, "weight_decay", &wd, 1) + read_fixture_line(fx, "steps", &steps, 1) +
             read_fixture_line(fx, "param0", p0, 10);
    CHECK_MSG(ok == 16, "%s: expected 6 scalars and 10 initial params, read %d values", fx, ok);
    if (ok != 16) return;
    float param[10], m[10] = {0}, v[10] = {0}, grad[10];
    for (int i = 0; i < 10; i++) param[i] = (float)p0[i];
    for (int step = 1; step <= (int)steps; step++) {
        char key[32];
        double g[10], want_p[10], want_m[10], want_v[10];
        snprintf(key, sizeof key, "grad%d", step);
        int got = read_fixture_line(fx, key, g, 10);
        snprintf(key, sizeof key, "param%d", step);
        got += read_fixture_line(fx, key, want_p, 10);
        snprintf(key, sizeof key, "m%d", step);
        got += read_fixture_line(fx, key, want_m, 10);
        snprintf(key, sizeof key, "v%d", step);
        got += read_fixture_line(fx, key, want_v, 10);
        CHECK_MSG(got == 40, "%s: step %d has %d of 40 values", fx, step, got);
        for (int i = 0; i < 10; i++) grad[i] = (float)g[i];
        double bias1 = 1.0 - pow(b1, step), bias2 = 1.0 - pow(b2, step);
        kernels_adamw_step st = {lr, b1, b2, eps, wd, bias1, bias2, 1.0f, NULL, KERNELS_BF16, NULL};
        K->adamw(param, grad, m, v, 10, &st);
        int bad = 0;
        for (int i = 0; i < 10; i++)
            bad += !close_rel(param[i], want_p[i], 1e-6) || !close_rel(m[i], want_m[i], 1e-6) ||
                   !close_rel(v[i], want_v[i], 1e-6);
        CHECK_MSG(bad == 0, "adamw step %d: %d of 10 elements differ from torch", step, bad);
    }
}

/* grad_scale gives the bits of scaling the gradients first; half gets the updated values'
 * 16-bit rounding, in either format; the gradient buffer is left alone. */
static void test_adamw_scale_and_half(void) {
    enum { N = 4099 };
    static float p1[N], p2[N], p3[N], m1[N], m2[N], m3[N], v1[N], v2[N], v3[N], g[N], g_scaled[N], g_copy[N],
        want_half[N];
    static uint16_t half[N];
    uint64_t state = 77;
    for (int i = 0; i < N; i++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        float u = (float)(state >> 40) / 16777216.0f * 2.0f - 1.0f;
        p1[i] = p2[i] = u;
        m1[i] = m2[i] = 0.01f * u;
        v1[i] = v2[i] = 1e-4f * u * u;
        g[i] = g_copy[i] = 3.0f * u + 0.125f;
    }
    const float scale = 0.3f;
    for (int i = 0; i < N; i++) g_scaled[i] = g[i];
    K->scale(g_scaled, scale, N);
    const kernels_half_format formats[2] = {KERNELS_BF16, KERNELS_FP16};
    for (int f = 0; f < 2; f++) {
        kernels_adamw_step plain = {1e-3, 0.9, 0.999, 1e-8, 0.1, 0.1, 0.001, 1.0f, NULL, formats[f], NULL};
        kernels_adamw_step fused = plain;
        fused.grad_scale = scale;
        fused.half = half;
        K->adamw(p1, g_scaled, m1, v1, N, &plain);
        K->adamw(p2, g, m2, v2, N, &fused);
        CHECK_MSG(memcmp(p1, p2, sizeof p1) == 0 && memcmp(m1, m2, sizeof m1) == 0 && memcmp(v1, v2, sizeof v1) == 0,
                  "adamw with grad_scale differs from scale then adamw (format %d)", f);
        CHECK_MSG(memcmp(g, g_copy, sizeof g) == 0, "adamw changed its gradient buffer");
        uint16_t *want = (uint16_t *)want_half;
        K->to_half(want, p2, N, formats[f]);
        CHECK_MSG(memcmp(half, want, N * sizeof(uint16_t)) == 0, "adamw's 16-bit copy is not to_half of the update");
        /* The factor read from memory (clip_factor's) instead: the same bits; grad_scale is
         * then ignored. */
        kernels_adamw_step at = fused;
        at.grad_scale = 5.0f;
        at.grad_scale_at = &scale;
        memcpy(p3, p1, sizeof p3), memcpy(m3, m1, sizeof m3), memcpy(v3, v1, sizeof v3);
        K->adamw(p1, g_scaled, m1, v1, N, &plain);
        K->adamw(p3, g, m3, v3, N, &at);
        CHECK_MSG(memcmp(p1, p3, sizeof p1) == 0 && memcmp(m1, m3, sizeof m1) == 0 && memcmp(v1, v3, sizeof v1) == 0,
                  "adamw with grad_scale_at differs from scale then adamw (format %d)", f);
        /* A NaN factor (a skipped step) writes nothing: parameters, moments, 16-bit copy. */
        const float nan_factor = NAN;
        at.grad_scale_at = &nan_factor;
        memcpy(p2, p3, sizeof p2), memcpy(m2, m3, sizeof m2), memcpy(v2, v3, sizeof v2);
        memset(half, 0xA5, sizeof half);
        K->adamw(p3, g, m3, v3, N, &at);
        bool half_kept = true;
        for (int i = 0; i < N; i++) half_kept = half_kept && half[i] == 0xA5A5;
        CHECK_MSG(memcmp(p2, p3, sizeof p2) == 0 && memcmp(m2, m3, sizeof m2) == 0 && memcmp(v2, v3, sizeof v2) == 0 &&
                      half_kept,
                  "adamw with a NaN factor changed its state (format %d)", f);
    }
}

/* clip_factor against the rule written out here: block sums added in order within groups of
 * KERNELS_NORM_GROUP, the groups' totals in order, then clip_grad_norm_'s factor. The sums
 * span 40 binades, so another order changes the norm's bits (checked: the test pins the
 * order). */
static void test_clip_factor(void) {
    const size_t counts[] = {1, 255, 256, 257, 3 * 256 + 17};
    double *sums = malloc(sizeof(double) * 800), *work = malloc(sizeof(double) * 800);
    uint64_t state = 99;
    for (size_t i = 0; i < 800; i++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        sums[i] = ldexp((double)(state >> 11) * 0x1p-53, (int)((state >> 3) % 40) - 20);
    }
    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
        const size_t n = counts[c];
        double total = 0.0, plain = 0.0;
        for (size_t g = 0; g < n; g += 256) {
            double group = 0.0;
            for (size_t b = g; b < n && b < g + 256; b++) group += sums[b];
            total += group;
        }
        for (size_t b = 0; b < n; b++) plain += sums[b];
        if (n > 512) CHECK_MSG(plain != total, "%zu sums: the test data does not tell the orders apart", n);
        const double want_norm = sqrt(total);
        const double max_norm_ratios[] = {0.0, -1.0, 0.25, 4.0}; /* of the unscaled norm */
        const double scales[] = {1.0, 8.0};
        for (int mi = 0; mi < 4; mi++)
            for (int si = 0; si < 2; si++) {
                const double S = scales[si], unscaled = want_norm / S;
                const double max_norm = max_norm_ratios[mi] * (mi >= 2 ? unscaled : 1.0);
                double coef = max_norm > 0.0 ? max_norm / (unscaled + 1e-6) : 1.0;
                if (coef > 1.0) coef = 1.0;
                const float want_factor = (float)(coef / S);
                memcpy(work, sums, n * sizeof *work);
                double norm = -1.0;
                float factor = -1.0f;
                K->clip_factor(work, n, max_norm, S, &norm, &factor);
                CHECK_MSG(norm == unscaled && factor == want_factor,
                          "clip_factor %zu sums, max_norm %g, scale %g: norm %.17g factor %.9g, want %.17g %.9g", n,
                          max_norm, S, norm, factor, unscaled, want_factor);
                if (mi == 2) CHECK(factor < 1.0f / (float)S); /* it did clip */
            }
    }
    /* An overflow: the norm is not finite and the factor NaN (AdamW's skip). */
    const double bad[] = {INFINITY, NAN};
    for (int i = 0; i < 2; i++) {
        memcpy(work, sums, 300 * sizeof *work);
        work[270] = bad[i];
        double norm = 0.0;
        float factor = 0.0f;
        K->clip_factor(work, 300, 1.0, 1.0, &norm, &factor);
        CHECK_MSG(!isfinite(norm) && isnan(factor), "clip_factor on a %g sum: norm %g factor %g", bad[i], norm,
                  factor);
    }
    free(sums);
    free(work);
}

/* ------------------------------------------------------------------ DoRA */
/* dora_norm_scale against the spec written out (row sums of squares in double, the root
 * rounded once, an fp32 division): the same bits on 1 and 2 threads; a zero row's scale is
 * inf (or NaN with a zero magnitude), as peft's division gives. */
static void test_dora_norm_scale(void) {
    const int shapes[][2] = {{37, 19}, {1, 1}, {5, 1000}, {300, 257}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int rows = shapes[s][0], cols = shapes[s][1];
        const size_t n = (size_t)rows * cols;
        float *w = vec(n, -2, 2), *mag = vec(rows, 0.5f, 1.5f);
        if (rows > 2) {
            memset(w, 0, (size_t)2 * cols * sizeof(float)); /* rows 0 and 1: zero */
            mag[1] = 0.0f;
        }
        float *norm[2], *scale[2];
        for (int t = 0; t < 2; t++) {
            norm[t] = malloc(rows * sizeof(float)), scale[t] = malloc(rows * sizeof(float));
            for (int i = 0; i < rows; i++) norm[t][i] = scale[t][i] = NAN;
            omp_set_num_threads(t + 1);
            K->dora_norm_scale(norm[t], scale[t], w, mag, rows, cols);
        }
        omp_set_num_threads(2);
        int bad = 0, first = -1;
        for (int i = 0; i < rows; i++) {
            double sum = 0.0;
            for (int j = 0; j < cols; j++) sum += (double)w[(size_t)i * cols + j] * w[(size_t)i * cols + j];
            const float want_norm = (float)sqrt(sum), want_scale = mag[i] / want_norm;
            const bool ok = norm[0][i] == want_norm && (scale[0][i] == want_scale ||
                                                        (isnan(want_scale) && isnan(scale[0][i])));
            if (!ok && !bad++) first = i;
        }
        CHECK_MSG(bad == 0, "dora_norm_scale %d x %d: %d rows off, first %d", rows, cols, bad, first);
        CHECK_MSG(!memcmp(norm[0], norm[1], rows * sizeof(float)) && !memcmp(scale[0], scale[1], rows * sizeof(float)),
                  "dora_norm_scale %d x %d: other bits on 2 threads", rows, cols);
        if (rows > 2) CHECK(norm[0][0] == 0.0f && isinf(scale[0][0]) && scale[0][0] > 0 && isnan(scale[0][1]));
        free(w), free(mag), free(norm[0]), free(norm[1]), free(scale[0]), free(scale[1]);
    }
}

/* scale_cols' bits are the spec's: s = scale + offset, s * x and y + s x each rounded to fp32
 * on its own, reproduced here in double (a sum or product of two floats in double, rounded to
 * fp32, is the correctly rounded fp32 result: 53 >= 2 * 24 + 2 bits), then compared byte for
 * byte. An FMA would round otherwise about one time in six here. */
static void test_scale_cols(void) {
    const int shapes[][2] = {{37, 19}, {1, 1}, {300, 1000}};
    const float offsets[] = {-1.0f, 0.0f, 0.375f};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int oi = 0; oi < 3; oi++)
            for (int add = 0; add < 2; add++) {
                const int rows = shapes[s][0], cols = shapes[s][1];
                const size_t n = (size_t)rows * cols;
                const float offset = offsets[oi];
                float *x = vec(n, -2, 2), *scale = vec(cols, 0.5f, 1.5f), *y0 = vec(n, -2, 2);
                float *y = malloc(n * sizeof(float)), *want = malloc(n * sizeof(float));
                memcpy(y, y0, n * sizeof(float));
                for (size_t i = 0; i < n; i++) {
                    const float sj = (float)((double)scale[i % cols] + offset);
                    const float product = (float)((double)sj * x[i]);
                    want[i] = add ? (float)((double)y0[i] + product) : product;
                }
                K->scale_cols(y, x, scale, offset, rows, cols, add);
                CHECK_MSG(!memcmp(y, want, n * sizeof(float)), "scale_cols %d x %d offset %g add %d: other bits", rows,
                          cols, offset, add);
                if (!add) { /* in place */
                    K->scale_cols(x, x, scale, offset, rows, cols, false);
                    CHECK_MSG(!memcmp(x, want, n * sizeof(float)), "scale_cols %d x %d offset %g in place", rows, cols,
                              offset);
                }
                free(x), free(scale), free(y0), free(y), free(want);
            }
}

/* dora_magnitude_grad against a naive per-column sum in double (to 1e-6 relative: the spec
 * leaves the order of the sum free), written (over NaN) or added to in fp32; the same bits on
 * 1 and 2 threads. Widths past one and two column blocks of 256, odd and ragged. */
static void test_dora_magnitude_grad(void) {
    const int shapes[][2] = {{37, 19}, {1, 1}, {3000, 300}, {50, 513}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int accumulate = 0; accumulate < 2; accumulate++) {
            const int rows = shapes[s][0], cols = shapes[s][1];
            const size_t n = (size_t)rows * cols;
            float *dy = vec(n, -1, 1), *z = vec(n, -2, 2), *norm = vec(cols, 0.5f, 4.0f), *base = vec(cols, -1, 1);
            float *got[2];
            for (int t = 0; t < 2; t++) {
                got[t] = malloc(cols * sizeof(float));
                for (int j = 0; j < cols; j++) got[t][j] = accumulate ? base[j] : NAN;
                omp_set_num_threads(t + 1);
                K->dora_magnitude_grad(got[t], dy, z, norm, rows, cols, accumulate);
            }
            omp_set_num_threads(2);
            int bad = 0, first = -1;
            double first_got = 0.0, first_want = 0.0;
            for (int j = 0; j < cols; j++) {
                double sum = 0.0;
                for (int t = 0; t < rows; t++) sum += (double)dy[(size_t)t * cols + j] * z[(size_t)t * cols + j];
                /* the spec's fp32 addition; the tolerance scaled by its terms (they may cancel) */
                const float term = (float)(sum / norm[j]), start = accumulate ? base[j] : 0.0f;
                const float want = start + term;
                if (!(fabs(got[0][j] - want) <= 1e-6 * (fabs(start) + fabs(term))) && !bad++)
                    first = j, first_got = got[0][j], first_want = want;
            }
            CHECK_MSG(bad == 0, "dora_magnitude_grad %d x %d accumulate %d: %d columns off, first %d (%.9g vs %.9g)",
                      rows, cols, accumulate, bad, first, first_got, first_want);
            CHECK_MSG(!memcmp(got[0], got[1], cols * sizeof(float)),
                      "dora_magnitude_grad %d x %d: other bits on 2 threads", rows, cols);
            free(dy), free(z), free(norm), free(base), free(got[0]), free(got[1]);
        }
}

/* ------------------------------------------------------------------ cuda selection */
static void test_kernels_cuda(void) {
    const kernels *cuda = K;
    ct_error err = {{0}};
    int rc = kernels_cuda(&cuda, &err);
    if (rc == 0) { /* a GPU: the table is complete (tests/test_kernels_cuda.c checks its values) */
        CHECK(cuda != NULL && strcmp(cuda->name, "cuda") == 0);
        const void *const *fn = (const void *const *)&cuda->alloc;
        for (size_t i = 0; i < (sizeof *cuda - offsetof(kernels, alloc)) / sizeof(void *); i++)
            CHECK_MSG(fn[i] != NULL, "kernel table entry %zu is NULL", i);
        printf("kernels_cuda: a GPU is usable\n");
        return;
    }
    CHECK(rc == -1 && cuda == NULL);
    CHECK_CONTAINS(err.msg, "CUDA");
#ifdef CTUNE_HAVE_CUDA
    CHECK_MSG(strstr(err.msg, "no CUDA GPU found (") || strstr(err.msg, "found "),
              "unexpected message '%s'", err.msg);
#else
    CHECK_CONTAINS(err.msg, "built without CUDA");
#endif
    printf("kernels_cuda: %s\n", err.msg);
}

/* kernels_cpu_tune_blas, as ctune's main calls it: on a CPU with AVX2 or AVX-512 OpenBLAS no
 * longer runs its SSE3 fallback (unless the user forced a core); the GEMM tests below then
 * run on the kernels the command line uses. */
char *openblas_get_corename(void);
static void test_tune_blas(void) {
    const bool forced = getenv("OPENBLAS_CORETYPE") != NULL;
    kernels_cpu_tune_blas();
    const char *core = openblas_get_corename();
    printf("OpenBLAS kernels: %s%s\n", core, forced ? " (OPENBLAS_CORETYPE)" : "");
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (!forced && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        CHECK_MSG(strcasecmp(core, "Prescott") != 0, "an AVX2 CPU left on OpenBLAS's SSE3 fallback");
#endif
    kernels_cpu_tune_blas(); /* a second call changes nothing */
    CHECK(!strcmp(openblas_get_corename(), core));
}

int main(void) {
    test_tune_blas();
    K = kernels_cpu();
    CHECK(K != NULL && strcmp(K->name, "cpu") == 0);
    omp_set_num_threads(2);
    test_memory();
    test_memory_info();
    test_memory_held();
    test_gemm();
    test_gemm_threads();
    test_elementwise();
    test_sum_squares();
    test_dropout();
    test_embedding();
    test_rmsnorm();
    test_rope();
    test_swiglu();
    test_cpu_expf();
    test_attention();
    test_attention_cached();
    test_cross_entropy();
    test_adamw();
    test_adamw_scale_and_half();
    test_clip_factor();
    test_dora_norm_scale();
    test_scale_cols();
    test_dora_magnitude_grad();
    test_kernels_cuda();
    return check_summary("test_kernels_cpu");
}
