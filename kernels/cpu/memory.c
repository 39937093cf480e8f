/* CPU backend memory: host memory, 64-byte aligned (one cache line, the widest SIMD load)
 * and zero-filled like calloc. Transfers are plain copies. The free memory is the kernel's
 * MemAvailable estimate, bounded by the process's cgroup v2 limit where there is one. */
#include <errno.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_ops.h"

#define CPU_ALIGNMENT 64

/* What the buffers of cpu_alloc hold (cpu_memory_held). Each buffer starts one alignment unit
 * into its block, after a header that records its size for cpu_release. Atomic: a kernel's
 * OpenMP threads never allocate, but nothing here depends on that. */
static _Atomic size_t held_now, held_peak;

typedef struct cpu_block_header {
    size_t bytes; /* of the block, header included */
} cpu_block_header;

void *cpu_alloc(size_t bytes) {
    /* Round up to whole cache lines; a zero-byte request still gets a unique pointer. */
    if (bytes > SIZE_MAX - 2 * CPU_ALIGNMENT) return NULL;
    size_t rounded = (bytes + CPU_ALIGNMENT - 1) / CPU_ALIGNMENT * CPU_ALIGNMENT;
    if (rounded == 0) rounded = CPU_ALIGNMENT;
    rounded += CPU_ALIGNMENT;
    void *block = NULL;
    if (posix_memalign(&block, CPU_ALIGNMENT, rounded) != 0) return NULL;
    memset(block, 0, rounded);
    ((cpu_block_header *)block)->bytes = rounded;
    size_t now = atomic_fetch_add(&held_now, rounded) + rounded;
    size_t peak = atomic_load(&held_peak);
    while (now > peak && !atomic_compare_exchange_weak(&held_peak, &peak, now)) {
    }
    return (char *)block + CPU_ALIGNMENT;
}

void cpu_release(void *ptr) {
    if (!ptr) return;
    void *block = (char *)ptr - CPU_ALIGNMENT;
    atomic_fetch_sub(&held_now, ((cpu_block_header *)block)->bytes);
    free(block);
}

void cpu_memory_held(size_t *now, size_t *peak) {
    *now = atomic_load(&held_now);
    *peak = atomic_load(&held_peak);
}

void cpu_zero(void *ptr, size_t bytes) {
    if (bytes) memset(ptr, 0, bytes);
}

void cpu_copy(void *dst, const void *src, size_t bytes) {
    if (bytes && dst != src) memmove(dst, src, bytes);
}

/* The value in kB of "key:" in a /proc/meminfo-style file, in bytes; -1 if absent. */
static int meminfo_value(FILE *f, const char *key, size_t *bytes) {
    char line[256];
    const size_t len = strlen(key);
    rewind(f);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, len) != 0 || line[len] != ':') continue;
        char *end;
        errno = 0;
        unsigned long long kb = strtoull(line + len + 1, &end, 10);
        if (errno || end == line + len + 1 || kb > SIZE_MAX / 1024) return -1;
        *bytes = (size_t)kb * 1024;
        return 0;
    }
    return -1;
}

/* A cgroup file holding one number ("max": none); -1 when absent or not a number. */
static int cgroup_value(const char *dir, const char *name, size_t *value, bool *unlimited) {
    char path[4096], text[64];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path) return -1;
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    const bool got = fgets(text, sizeof text, f) != NULL;
    fclose(f);
    if (!got) return -1;
    *unlimited = strncmp(text, "max", 3) == 0;
    if (*unlimited) return 0;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text) return -1;
    *value = v > SIZE_MAX ? SIZE_MAX : (size_t)v;
    return 0;
}

/* The tightest room (limit - usage) and limit of the groups from g->root + g->path up to
 * g->root, read from the files of its cgroup version. */
static void cgroup_room(const cpu_cgroup *g, size_t *room, size_t *limit) {
    const char *max_file = g->v1 ? "memory.limit_in_bytes" : "memory.max";
    const char *used_file = g->v1 ? "memory.usage_in_bytes" : "memory.current";
    char dir[4096];
    if (snprintf(dir, sizeof dir, "%s%s", g->root, g->path) >= (int)sizeof dir) return;
    const size_t root_len = strlen(g->root);
    for (;;) {
        size_t max = 0, used = 0;
        bool unlimited = true, ignored;
        if (cgroup_value(dir, max_file, &max, &unlimited) == 0 && !unlimited &&
            cgroup_value(dir, used_file, &used, &ignored) == 0) {
            const size_t left = used < max ? max - used : 0;
            if (left < *room) *room = left;
            if (max < *limit) *limit = max;
        }
        char *slash = strrchr(dir, '/');
        if (!slash || (size_t)(slash - dir) < root_len) break;
        *slash = '\0';
    }
}

int cpu_memory_info_from(const char *meminfo_path, const cpu_cgroup *groups, int n_groups, size_t *free_bytes,
                         size_t *total_bytes) {
    *free_bytes = *total_bytes = 0;
    FILE *f = fopen(meminfo_path, "r");
    if (!f) return -1;
    size_t avail, total;
    const int status = meminfo_value(f, "MemAvailable", &avail) || meminfo_value(f, "MemTotal", &total);
    fclose(f);
    if (status) return -1;
    /* A container or a Slurm job sees the whole host's RAM but is held to its groups' limits
     * (v1's "no limit" is a huge number: larger than the RAM, so it changes nothing). */
    for (int i = 0; i < n_groups; i++) cgroup_room(&groups[i], &avail, &total);
    *free_bytes = avail;
    *total_bytes = total;
    return 0;
}

int cpu_memory_info(size_t *free_bytes, size_t *total_bytes) {
    /* /proc/self/cgroup names this process's groups: "0::/path" (v2), "N:...memory...:/path" (v1) */
    static const char *const roots[2] = {"/sys/fs/cgroup", "/sys/fs/cgroup/memory"};
    char line[4096], paths[2][4096];
    cpu_cgroup groups[2];
    int n = 0;
    FILE *f = fopen("/proc/self/cgroup", "r");
    while (f && n < 2 && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        char *controllers = strchr(line, ':'), *path = controllers ? strchr(controllers + 1, ':') : NULL;
        if (!path) continue;
        *path++ = '\0';
        controllers++;
        const bool v2 = strcmp(line, "0") == 0 && *controllers == '\0';
        const bool v1 = strstr(controllers, "memory") != NULL;
        if (!v1 && !v2) continue;
        snprintf(paths[n], sizeof paths[n], "%s", strcmp(path, "/") ? path : "");
        groups[n] = (cpu_cgroup){.root = roots[v1], .path = paths[n], .v1 = v1};
        n++;
    }
    if (f) fclose(f);
    return cpu_memory_info_from("/proc/meminfo", groups, n, free_bytes, total_bytes);
}
