/* dist_staging: the float collectives on a backend's memory never touch it from the host.
 *
 * "Device" buffers here are host buffers seen through a pointer shifted by a large offset:
 * an address no process maps, so any memcpy/memmove on it by dist (instead of the backend's
 * download/upload/copy, which shift it back) crashes. Run under mpirun with 1..N ranks:
 * reduce-scatter (in place and into a separate buffer) and all-gather must give the same
 * bits as the same calls on plain host memory, and the backend's transfers must have run.
 * Prints "dist_staging: ok (rank R of W)" on success, exits 1 otherwise. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "train/dist.h"

/* 2^44 bytes above the real buffer: inside the canonical user address range, never mapped
 * for these small test processes. */
#define FAKE_OFFSET ((uintptr_t)1 << 44)

static long transfers; /* this process's count of backend transfers */

static void *real(const void *fake) { return (void *)((uintptr_t)fake - FAKE_OFFSET); }
static float *fake_of(float *host) { return (float *)((uintptr_t)host + FAKE_OFFSET); }

static void fake_download(void *host_dst, const void *src, size_t bytes) {
    memcpy(host_dst, real(src), bytes);
    transfers++;
}
static void fake_upload(void *dst, const void *host_src, size_t bytes) {
    memcpy(real(dst), host_src, bytes);
    transfers++;
}
static void fake_copy(void *dst, const void *src, size_t bytes) {
    memmove(real(dst), real(src), bytes);
    transfers++;
}

static int fails;
#define EXPECT(cond, ...)                                       \
    do {                                                        \
        if (!(cond)) {                                          \
            fprintf(stderr, "dist_staging: " __VA_ARGS__);      \
            fputc('\n', stderr);                                \
            fails++;                                            \
        }                                                       \
    } while (0)

int main(int argc, char **argv) {
    dist d;
    ct_error err;
    if (dist_init(&d, &argc, &argv, &err)) {
        fprintf(stderr, "dist_staging: %s\n", err.msg);
        return 1;
    }
    kernels fake = *kernels_cpu();
    fake.name = "fake-device";
    fake.download = fake_download;
    fake.upload = fake_upload;
    fake.copy = fake_copy;

    const int W = d.world_size;
    /* Uneven parts, an empty one when W > 2, and a total not divisible by W. */
    const size_t n = 1000 + 7 * (size_t)W;
    size_t *offsets = malloc(((size_t)W + 1) * sizeof *offsets);
    offsets[0] = 0;
    for (int r = 0; r < W; r++) {
        size_t part = r == 1 ? 0 : n / (size_t)W + (size_t)r;
        offsets[r + 1] = r == W - 1 ? n : offsets[r] + part;
    }
    float *host = malloc(n * sizeof(float)), *dev = malloc(n * sizeof(float));
    float *host_out = malloc(n * sizeof(float)), *dev_out = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) host[i] = dev[i] = (float)((i * 37 + (size_t)d.rank * 11) % 101) * 0.013f + 0.1f * (float)d.rank;
    const size_t mine = offsets[d.rank + 1] - offsets[d.rank];

    dist on_device = d;
    on_device.memory = &fake;

    /* Reduce-scatter into a separate buffer (ZeRO 2's shard). */
    int rc = dist_reduce_scatter_floats(&d, host, host_out, offsets, &err);
    EXPECT(rc == 0, "host reduce-scatter: %s", err.msg);
    transfers = 0;
    rc = dist_reduce_scatter_floats(&on_device, fake_of(dev), fake_of(dev_out), offsets, &err);
    EXPECT(rc == 0, "staged reduce-scatter: %s", err.msg);
    EXPECT(memcmp(host_out, dev_out, mine * sizeof(float)) == 0, "separate reduce-scatter differs");
    EXPECT(mine == 0 || transfers > 0, "no backend transfer in the separate reduce-scatter");

    /* In place (ZeRO 0/1), then all-gather of the reduced parts. */
    rc = dist_reduce_scatter_floats(&d, host, host + offsets[d.rank], offsets, &err);
    EXPECT(rc == 0, "host in-place reduce-scatter: %s", err.msg);
    rc = dist_reduce_scatter_floats(&on_device, fake_of(dev), fake_of(dev) + offsets[d.rank], offsets, &err);
    EXPECT(rc == 0, "staged in-place reduce-scatter: %s", err.msg);
    rc = dist_all_gather_floats(&d, host, offsets, &err);
    EXPECT(rc == 0, "host all-gather: %s", err.msg);
    transfers = 0;
    rc = dist_all_gather_floats(&on_device, fake_of(dev), offsets, &err);
    EXPECT(rc == 0, "staged all-gather: %s", err.msg);
    EXPECT(memcmp(host, dev, n * sizeof(float)) == 0, "all-gathered vectors differ");
    EXPECT(W == 1 || transfers > 0, "no backend transfer in the all-gather");

    free(offsets);
    free(host);
    free(dev);
    free(host_out);
    free(dev_out);
    int any = fails;
    if (dist_sum_longs(&d, (long long[]){any}, 1, &err) == 0 && any == 0 && d.rank == 0)
        printf("dist_staging: ok (%d rank(s))\n", W);
    dist_finalize(&d);
    return fails ? 1 : 0;
}
