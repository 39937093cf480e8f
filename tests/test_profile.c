/* Tests of kernels/profile.c (CTUNE_PROFILE=1): the wrapped table gives the wrapped
 * backend's results bit for bit, counts every call under its op and shape, reports TFLOP/s
 * for products and GB/s for memory-bound ops, forgets on reset, refuses a second profile,
 * and can be started again after a stop. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/profile.h"
#include "tests/check.h"

static void fill(float *x, size_t n, float offset) {
    for (size_t i = 0; i < n; i++) x[i] = offset + (float)((i * 37) % 101) / 50.0f - 1.0f;
}

/* The report of the running profile, as a malloc'd string. */
static char *report(int steps, double wall) {
    char *text = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&text, &size);
    kernels_profile_report(f, steps, wall);
    fclose(f);
    return text;
}

/* The report line whose op column is exactly `key`, or NULL. */
static const char *row_of(const char *text, const char *key) {
    size_t n = strlen(key);
    for (const char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        if (len >= n + 2 && !strncmp(line + len - n, key, n) && line[len - n - 1] == ' ' && line[len - n - 2] == ' ')
            return line;
    }
    return NULL;
}

static void test_results_and_rows(void) {
    const kernels *cpu = kernels_cpu(), *k = NULL;
    ct_error err;
    CHECK(kernels_profile_start(cpu, &k, &err) == 0);
    CHECK(k != NULL && k != cpu && !strcmp(k->name, "cpu"));
    const kernels *again = NULL;
    CHECK(kernels_profile_start(cpu, &again, &err) != 0);
    CHECK_CONTAINS(err.msg, "already running");

    enum { M = 24, N = 40, K = 16 };
    float a[M * K], b[N * K], want[M * N], got[M * N];
    fill(a, M * K, 0.1f);
    fill(b, N * K, -0.2f);
    cpu->gemm(false, true, M, N, K, 1.0f, a, K, b, K, 0.0f, want, N);
    float *da = k->alloc(sizeof a), *db = k->alloc(sizeof b), *dc = k->alloc(sizeof got);
    CHECK(da && db && dc);
    k->upload(da, a, sizeof a);
    k->upload(db, b, sizeof b);
    for (int i = 0; i < 3; i++) k->gemm(false, true, M, N, K, 1.0f, da, K, db, K, 0.0f, dc, N);
    k->gemm(true, false, K, K, M, 1.0f, da, K, da, K, 1.0f, dc, K); /* another shape, +C */
    k->download(got, dc, sizeof got);
    /* The last product wrote a [K, K] block at the start of dc: the rest is the first's. */
    CHECK(memcmp(got + K * K, want + K * K, sizeof got - K * K * sizeof(float)) == 0);
    float x[1000];
    fill(x, 1000, 0.0f);
    float *dx = k->alloc(sizeof x);
    k->upload(dx, x, sizeof x);
    k->scale(dx, 0.5f, 1000);
    float y[1000];
    k->download(y, dx, sizeof y);
    for (int i = 0; i < 1000; i++) CHECK_MSG(y[i] == x[i] * 0.5f, "scale through the profile, element %d", i);
    /* A strided cast: the wrapped bits, keyed by format. */
    uint16_t want_h[40 * 25] = {0}, got_h[40 * 25];
    uint16_t *dh = k->alloc(sizeof got_h);
    cpu->to_half_2d(KERNELS_BF16, want_h + 3, 25, y, 20, 40, 20, 2.5f); /* dx holds y */
    k->to_half_2d(KERNELS_BF16, dh + 3, 25, dx, 20, 40, 20, 2.5f);
    k->download(got_h, dh, sizeof got_h);
    CHECK(memcmp(got_h, want_h, sizeof got_h) == 0);
    k->release(dh);

    char *text = report(2, 1.0);
    CHECK_CONTAINS(text, "profile (CTUNE_PROFILE=1, backend cpu): 2 step(s), 500.0 ms of wall time per step");
    const char *g1 = row_of(text, "gemm fp32 NT m 24 n 40 k 16");
    const char *g2 = row_of(text, "gemm fp32 TN m 16 n 16 k 24");
    const char *sc = row_of(text, "scale");
    const char *th = row_of(text, "to_half_2d bf16");
    CHECK_MSG(g1 && g2 && sc && th, "rows missing in:\n%s", text);
    /* calls per step: 3 products over 2 steps = 1.5; one scale = 0.5 */
    double ms = 0, share = 0, calls = 0;
    if (g1) CHECK(sscanf(g1, "%lf %lf %lf", &ms, &share, &calls) == 3 && calls == 1.5 && ms >= 0);
    if (sc) CHECK(sscanf(sc, "%lf %lf %lf", &ms, &share, &calls) == 3 && calls == 0.5);
    CHECK(row_of(text, "alloc") && row_of(text, "upload") && row_of(text, "download"));
    CHECK_CONTAINS(text, "outside the ops");
    free(text);

    kernels_profile_reset();
    text = report(1, 0.5);
    CHECK_MSG(row_of(text, "scale") == NULL && row_of(text, "gemm fp32 NT m 24 n 40 k 16") == NULL,
              "rows survived a reset:\n%s", text);
    free(text);
    k->release(da), k->release(db), k->release(dc), k->release(dx);
    kernels_profile_stop();
    /* Stopped: a new profile may start, over another backend. */
    CHECK(kernels_profile_start(kernels_shadow(), &k, &err) == 0);
    CHECK(!strcmp(k->name, "cpu-shadow"));
    kernels_profile_stop();
}

int main(void) {
    test_results_and_rows();
    return check_summary("test_profile");
}
