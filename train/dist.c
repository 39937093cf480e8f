#include "train/dist.h"

#include <limits.h>
#include <mpi.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels/kernels.h"

/* Reduce-scatter and all-gather move at most this many floats per peer per round, so their
 * scratch stays bounded (and MPI's int counts never overflow) whatever the model size. */
#define DIST_ROUND_FLOATS ((size_t)1 << 22)

struct dist_runtime {
    int rank;
    int thread_level;       /* what MPI provided: the watchdog aborts from its own thread */
    /* watchdog */
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pthread_t thread;
    bool thread_running;
    bool stop;
    double timeout_s;
    const char *operation;  /* the collective in progress, or NULL */
    double since;           /* when it began (monotonic seconds) */
    /* scratch of the chunked collectives, grown on first use and kept */
    float *send, *recv;
    size_t scratch_floats;
    int *counts, *displs, *recv_counts, *recv_displs;
};

static double monotonic_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int mpi_check(int rc, const char *what, ct_error *err) {
    if (rc == MPI_SUCCESS) return 0;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    return ct_fail(err, "MPI %s failed: %s", what, text);
}

/* ---- watchdog ---- */

static void watch_begin(const dist *d, const char *operation) {
    dist_runtime *rt = d->rt;
    if (!rt) return;
    pthread_mutex_lock(&rt->lock);
    rt->operation = operation;
    rt->since = monotonic_seconds();
    pthread_mutex_unlock(&rt->lock);
}

static void watch_end(const dist *d) {
    dist_runtime *rt = d->rt;
    if (!rt) return;
    pthread_mutex_lock(&rt->lock);
    rt->operation = NULL;
    pthread_mutex_unlock(&rt->lock);
}

static void *watchdog_main(void *arg) {
    dist_runtime *rt = arg;
    pthread_mutex_lock(&rt->lock);
    while (!rt->stop) {
        double now = monotonic_seconds();
        if (rt->operation && now - rt->since >= rt->timeout_s) {
            fprintf(stderr,
                    "ctune: rank %d: %s did not complete within %g s (distributed.timeout_s): another "
                    "rank has stopped or hangs; aborting the job\n",
                    rt->rank, rt->operation, rt->timeout_s);
            fflush(stderr);
            fflush(stdout);
            /* Without MPI_THREAD_MULTIPLE, MPI may not be called from this thread; a process that
             * exits without MPI_Finalize makes mpirun end the job as well. */
            if (rt->thread_level == MPI_THREAD_MULTIPLE) MPI_Abort(MPI_COMM_WORLD, 3);
            _exit(3);
        }
        /* Poll at a fraction of the timeout (at most 1 s): detection is late by that much. */
        double wait = rt->timeout_s / 4 < 1.0 ? rt->timeout_s / 4 : 1.0;
        if (rt->operation && rt->since + rt->timeout_s - now < wait) wait = rt->since + rt->timeout_s - now;
        if (wait < 0.005) wait = 0.005;
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        long long ns = (long long)until.tv_nsec + (long long)(wait * 1e9);
        until.tv_sec += (time_t)(ns / 1000000000LL);
        until.tv_nsec = (long)(ns % 1000000000LL);
        pthread_cond_timedwait(&rt->wake, &rt->lock, &until);
    }
    pthread_mutex_unlock(&rt->lock);
    return NULL;
}

int dist_set_timeout(const dist *d, double timeout_s, ct_error *err) {
    if (!(timeout_s > 0)) return ct_fail(err, "distributed.timeout_s must be > 0 (got %g)", timeout_s);
    dist_runtime *rt = d->rt;
    if (d->world_size == 1 || !rt) return 0; /* nothing to wait for */
    pthread_mutex_lock(&rt->lock);
    rt->timeout_s = timeout_s;
    bool start = !rt->thread_running;
    pthread_cond_signal(&rt->wake);
    pthread_mutex_unlock(&rt->lock);
    if (start) {
        if (pthread_create(&rt->thread, NULL, watchdog_main, rt) != 0)
            return ct_fail(err, "cannot start the collective watchdog thread");
        rt->thread_running = true;
    }
    return 0;
}

/* ---- setup ---- */

static void runtime_free(dist_runtime *rt) {
    if (!rt) return;
    if (rt->thread_running) {
        pthread_mutex_lock(&rt->lock);
        rt->stop = true;
        pthread_cond_signal(&rt->wake);
        pthread_mutex_unlock(&rt->lock);
        pthread_join(rt->thread, NULL);
    }
    pthread_cond_destroy(&rt->wake);
    pthread_mutex_destroy(&rt->lock);
    free(rt->send);
    free(rt->recv);
    free(rt->counts);
    free(rt->displs);
    free(rt->recv_counts);
    free(rt->recv_displs);
    free(rt);
}

static int runtime_create(dist *d, int thread_level, ct_error *err) {
    dist_runtime *rt = calloc(1, sizeof *rt);
    if (!rt) return ct_fail(err, "out of memory");
    rt->rank = d->rank;
    rt->thread_level = thread_level;
    rt->timeout_s = 1800;
    pthread_mutex_init(&rt->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&rt->wake, &attr);
    pthread_condattr_destroy(&attr);
    size_t n = (size_t)d->world_size;
    rt->counts = calloc(n, sizeof(int));
    rt->displs = calloc(n, sizeof(int));
    rt->recv_counts = calloc(n, sizeof(int));
    rt->recv_displs = calloc(n, sizeof(int));
    if (!rt->counts || !rt->displs || !rt->recv_counts || !rt->recv_displs) {
        runtime_free(rt);
        return ct_fail(err, "out of memory for %d ranks", d->world_size);
    }
    d->rt = rt;
    return 0;
}

int dist_init(dist *d, int *argc, char ***argv, ct_error *err) {
    memset(d, 0, sizeof *d);
    int initialized = 0, provided = MPI_THREAD_SINGLE;
    MPI_Initialized(&initialized);
    if (!initialized) {
        /* MULTIPLE: the watchdog thread may call MPI_Abort while the main thread is inside a
         * collective. */
        if (mpi_check(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided), "init", err))
            return -1;
        d->owns_mpi = true;
    } else {
        MPI_Query_thread(&provided);
    }
    /* Errors come back as codes so that ctune can report them instead of MPI aborting. */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &d->world_size);
    MPI_Comm node;
    if (mpi_check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, d->rank,
                                      MPI_INFO_NULL, &node),
                  "node split", err))
        return -1;
    MPI_Comm_rank(node, &d->local_rank);
    MPI_Comm_size(node, &d->local_size);
    MPI_Comm_free(&node);
    return runtime_create(d, provided, err);
}

void dist_finalize(dist *d) {
    runtime_free(d->rt);
    d->rt = NULL;
    if (d->owns_mpi) {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (!finalized) MPI_Finalize();
        d->owns_mpi = false;
    }
}

/* ---- MPI-ordered sums ---- */

/* MPI counts are int: large buffers go in slices. */
static int sum_in_slices(const dist *d, void *values, size_t n, size_t elem_size, MPI_Datatype type,
                         const char *what, ct_error *err) {
    const size_t slice = (size_t)1 << 28;
    char *p = values;
    for (size_t done = 0; done < n; done += slice) {
        size_t count = n - done < slice ? n - done : slice;
        watch_begin(d, what);
        int rc = MPI_Allreduce(MPI_IN_PLACE, p + done * elem_size, (int)count, type, MPI_SUM, MPI_COMM_WORLD);
        watch_end(d);
        if (mpi_check(rc, what, err)) return -1;
    }
    return 0;
}

int dist_sum_floats(const dist *d, float *values, size_t n, ct_error *err) {
    if (d->world_size == 1) return 0;
    return sum_in_slices(d, values, n, sizeof(float), MPI_FLOAT, "all-reduce (float)", err);
}

int dist_sum_doubles(const dist *d, double *values, size_t n, ct_error *err) {
    if (d->world_size == 1) return 0;
    return sum_in_slices(d, values, n, sizeof(double), MPI_DOUBLE, "all-reduce (double)", err);
}

int dist_sum_longs(const dist *d, long long *values, size_t n, ct_error *err) {
    if (d->world_size == 1) return 0;
    return sum_in_slices(d, values, n, sizeof(long long), MPI_LONG_LONG, "all-reduce (long)", err);
}

int dist_barrier(const dist *d, ct_error *err) {
    if (d->world_size == 1) return 0;
    watch_begin(d, "barrier");
    int rc = MPI_Barrier(MPI_COMM_WORLD);
    watch_end(d);
    return mpi_check(rc, "barrier", err);
}

int dist_broadcast(const dist *d, void *data, size_t bytes, int root, ct_error *err) {
    if (d->world_size == 1) return 0;
    const size_t slice = (size_t)1 << 30;
    for (size_t done = 0; done < bytes; done += slice) {
        size_t count = bytes - done < slice ? bytes - done : slice;
        watch_begin(d, "broadcast");
        int rc = MPI_Bcast((char *)data + done, (int)count, MPI_BYTE, root, MPI_COMM_WORLD);
        watch_end(d);
        if (mpi_check(rc, "broadcast", err)) return -1;
    }
    return 0;
}

int dist_count_same_key(const dist *d, const char *key, int *count, ct_error *err) {
    /* one record per rank: the processor name, then the key */
    enum { RECORD = MPI_MAX_PROCESSOR_NAME + DIST_KEY_MAX };
    char mine[RECORD];
    memset(mine, 0, sizeof mine);
    int name_len = 0;
    if (mpi_check(MPI_Get_processor_name(mine, &name_len), "processor name", err)) return -1;
    snprintf(mine + MPI_MAX_PROCESSOR_NAME, DIST_KEY_MAX, "%s", key);
    *count = 1;
    if (d->world_size == 1) return 0;
    char *all = malloc((size_t)d->world_size * RECORD);
    if (!all) return ct_fail(err, "out of memory gathering %d ranks' keys", d->world_size);
    watch_begin(d, "all-gather of device keys");
    int rc = MPI_Allgather(mine, RECORD, MPI_CHAR, all, RECORD, MPI_CHAR, MPI_COMM_WORLD);
    watch_end(d);
    if (mpi_check(rc, "all-gather of device keys", err)) {
        free(all);
        return -1;
    }
    int same = 0;
    for (int r = 0; r < d->world_size; r++) same += memcmp(all + (size_t)r * RECORD, mine, RECORD) == 0;
    free(all);
    *count = same;
    return 0;
}

/* ---- fixed-order reduce-scatter and all-gather ---- */

void dist_tree_sum_inplace(float *x, int n, size_t stride, size_t len) {
    /* Pairs at distance 1, then 2, 4...: the left block of each pair absorbs the right one.
     * A block without a partner at some distance waits for the next, which yields DIST_TREE. */
    for (size_t s = 1; s < (size_t)n; s *= 2)
        for (size_t i = 0; i + s < (size_t)n; i += 2 * s) {
            float *left = x + i * stride;
            const float *right = x + (i + s) * stride;
#pragma omp parallel for if (len >= 65536) schedule(static)
            for (size_t j = 0; j < len; j++) left[j] += right[j];
        }
}

static size_t part_length(const size_t *offsets, int r, size_t done, size_t round) {
    size_t len = offsets[r + 1] - offsets[r];
    if (len <= done) return 0;
    return len - done < round ? len - done : round;
}

static size_t round_floats(int world_size, size_t max_part) {
    size_t per_peer = DIST_ROUND_FLOATS / (size_t)world_size;
    if (per_peer < 1) per_peer = 1;
    return max_part < per_peer ? max_part : per_peer;
}

size_t dist_scratch_bytes(int world_size, size_t max_part) {
    if (world_size <= 1) return 0;
    return 2 * round_floats(world_size, max_part) * (size_t)world_size * sizeof(float);
}

/* Per-peer floats in one round, and scratch for world * that many floats each way. */
static int prepare_rounds(const dist *d, const size_t *offsets, size_t *round, size_t *max_part,
                          ct_error *err) {
    dist_runtime *rt = d->rt;
    if (!rt) return ct_fail(err, "dist: collectives between ranks need dist_init");
    *max_part = 0;
    for (int r = 0; r < d->world_size; r++) {
        if (offsets[r + 1] < offsets[r]) return ct_fail(err, "dist: part offsets decrease at rank %d", r);
        size_t len = offsets[r + 1] - offsets[r];
        if (len > *max_part) *max_part = len;
    }
    *round = round_floats(d->world_size, *max_part);
    size_t need = *round * (size_t)d->world_size;
    if (need > rt->scratch_floats) {
        float *send = realloc(rt->send, need * sizeof(float)), *recv = NULL;
        if (send) rt->send = send;
        if (send) recv = realloc(rt->recv, need * sizeof(float));
        if (recv) rt->recv = recv;
        if (!send || !recv) return ct_fail(err, "dist: out of memory for 2 x %zu floats of scratch", need);
        rt->scratch_floats = need;
    }
    return 0;
}

/* Host scratch <-> the collective's buffers, which may be a backend's (GPU) memory. */
static void bytes_to_host(const dist *d, void *host, const void *src, size_t n) {
    if (d->memory) d->memory->download(host, src, n);
    else memcpy(host, src, n);
}

static void bytes_from_host(const dist *d, void *dst, const void *host, size_t n) {
    if (d->memory) d->memory->upload(dst, host, n);
    else memcpy(dst, host, n);
}

int dist_reduce_scatter_floats(const dist *d, const float *in, float *out, const size_t *offsets,
                               ct_error *err) {
    const int world = d->world_size, me = d->rank;
    if (world == 1) {
        size_t n = offsets[1] - offsets[0];
        if (out == in + offsets[0] || n == 0) return 0;
        /* out is a separate buffer (ZeRO 2's shard), or in place: never a partial overlap. */
        if (d->memory) d->memory->copy(out, in + offsets[0], n * sizeof(float));
        else memmove(out, in + offsets[0], n * sizeof(float));
        return 0;
    }
    size_t round, max_part;
    if (prepare_rounds(d, offsets, &round, &max_part, err)) return -1;
    dist_runtime *rt = d->rt;
    /* All-to-all: every rank sends each owner its slice of the owner's part; the owner then
     * adds the world's slices in DIST_TREE order itself, so MPI never chooses an order. */
    for (size_t done = 0; done < max_part; done += round) {
        for (int r = 0; r < world; r++) {
            size_t len = part_length(offsets, r, done, round);
            if (len) bytes_to_host(d, rt->send + (size_t)r * round, in + offsets[r] + done, len * sizeof(float));
            rt->counts[r] = (int)len;
            rt->displs[r] = (int)((size_t)r * round);
        }
        size_t mine = part_length(offsets, me, done, round);
        for (int r = 0; r < world; r++) {
            rt->recv_counts[r] = (int)mine;
            rt->recv_displs[r] = (int)((size_t)r * round);
        }
        watch_begin(d, "reduce-scatter");
        int rc = MPI_Alltoallv(rt->send, rt->counts, rt->displs, MPI_FLOAT, rt->recv, rt->recv_counts,
                               rt->recv_displs, MPI_FLOAT, MPI_COMM_WORLD);
        watch_end(d);
        if (mpi_check(rc, "reduce-scatter (all-to-all)", err)) return -1;
        dist_tree_sum_inplace(rt->recv, world, round, mine);
        /* When out aliases in, this round's slice was packed above and later rounds read
         * only further slices. */
        if (mine) bytes_from_host(d, out + done, rt->recv, mine * sizeof(float));
    }
    return 0;
}

int dist_all_gather(const dist *d, void *values, size_t elem_bytes, const size_t *offsets, ct_error *err) {
    const int world = d->world_size, me = d->rank;
    if (world == 1) return 0;
    if (elem_bytes == 0 || elem_bytes > sizeof(float))
        return ct_fail(err, "dist: all-gather of %zu-byte elements (1 to 4 supported)", elem_bytes);
    /* Rounds of `round` elements per peer: at most the float scratch, in bytes. */
    size_t round, max_part;
    if (prepare_rounds(d, offsets, &round, &max_part, err)) return -1;
    dist_runtime *rt = d->rt;
    char *base = values, *send = (char *)rt->send, *recv = (char *)rt->recv;
    const size_t slot = round * elem_bytes;
    for (size_t done = 0; done < max_part; done += round) {
        size_t mine = part_length(offsets, me, done, round);
        if (mine) bytes_to_host(d, send, base + (offsets[me] + done) * elem_bytes, mine * elem_bytes);
        for (int r = 0; r < world; r++) {
            rt->recv_counts[r] = (int)(part_length(offsets, r, done, round) * elem_bytes);
            rt->recv_displs[r] = (int)((size_t)r * slot);
        }
        watch_begin(d, "all-gather");
        int rc = MPI_Allgatherv(send, (int)(mine * elem_bytes), MPI_BYTE, recv, rt->recv_counts, rt->recv_displs,
                                MPI_BYTE, MPI_COMM_WORLD);
        watch_end(d);
        if (mpi_check(rc, "all-gather", err)) return -1;
        for (int r = 0; r < world; r++)
            if (rt->recv_counts[r])
                bytes_from_host(d, base + (offsets[r] + done) * elem_bytes, recv + (size_t)r * slot,
                                (size_t)rt->recv_counts[r]);
    }
    return 0;
}

int dist_all_gather_floats(const dist *d, float *values, const size_t *offsets, ct_error *err) {
    return dist_all_gather(d, values, sizeof(float), offsets, err);
}

int dist_gather_floats(const dist *d, const float *part, float *out, const size_t *offsets, int root,
                       ct_error *err) {
    const int world = d->world_size, me = d->rank;
    const size_t mine = offsets[me + 1] - offsets[me];
    if (world == 1) {
        if (mine) memcpy(out, part, mine * sizeof(float));
        return 0;
    }
    dist_runtime *rt = d->rt;
    if (!rt) return ct_fail(err, "dist: collectives between ranks need dist_init");
    if (offsets[world] > (size_t)INT_MAX)
        return ct_fail(err, "dist: a gather of %zu floats passes MPI's int counts", offsets[world]);
    for (int r = 0; r < world; r++) {
        rt->recv_counts[r] = (int)(offsets[r + 1] - offsets[r]);
        rt->recv_displs[r] = (int)offsets[r];
    }
    watch_begin(d, "gather");
    int rc = MPI_Gatherv(part, (int)mine, MPI_FLOAT, me == root ? out : NULL, rt->recv_counts, rt->recv_displs,
                         MPI_FLOAT, root, MPI_COMM_WORLD);
    watch_end(d);
    return mpi_check(rc, "gather", err);
}

/* ---- agreement ---- */

int dist_agree(const dist *d, int local_status, ct_error *err) {
    if (d->world_size == 1) return local_status == 0 ? 0 : -1;
    /* The lowest failing rank's message wins: deterministic, and printed once by rank 0. */
    int mine = local_status == 0 ? d->world_size : d->rank;
    int first_failed = d->world_size;
    watch_begin(d, "agreement on the ranks' status");
    int rc = MPI_Allreduce(&mine, &first_failed, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    watch_end(d);
    if (rc != MPI_SUCCESS) return ct_fail(err, "MPI all-reduce failed while ranks compared their status");
    if (first_failed == d->world_size) return 0;
    char message[sizeof err->msg];
    memset(message, 0, sizeof message);
    if (d->rank == first_failed && err) memcpy(message, err->msg, sizeof message);
    watch_begin(d, "broadcast of an error message");
    MPI_Bcast(message, (int)sizeof message, MPI_CHAR, first_failed, MPI_COMM_WORLD);
    watch_end(d);
    message[sizeof message - 1] = '\0';
    if (err) snprintf(err->msg, sizeof err->msg, "rank %d: %.2000s", first_failed, message);
    return -1;
}

int dist_threads_per_rank(const dist *d) {
    const char *env = getenv("OMP_NUM_THREADS");
    if (env && atoi(env) > 0) return atoi(env);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores < 1) cores = 1;
    long per_rank = cores / (d->local_size > 0 ? d->local_size : 1);
    return per_rank < 1 ? 1 : (int)per_rank;
}
