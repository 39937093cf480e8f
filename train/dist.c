#include "train/dist.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int mpi_check(int rc, const char *what, ct_error *err) {
    if (rc == MPI_SUCCESS) return 0;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    return ct_fail(err, "MPI %s failed: %s", what, text);
}

int dist_init(dist *d, int *argc, char ***argv, ct_error *err) {
    memset(d, 0, sizeof *d);
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
        int provided = 0;
        if (mpi_check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "init", err))
            return -1;
        d->owns_mpi = true;
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
    return 0;
}

void dist_finalize(dist *d) {
    if (d->owns_mpi) {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (!finalized) MPI_Finalize();
        d->owns_mpi = false;
    }
}

/* MPI counts are int: large buffers go in slices. */
static int sum_in_slices(void *values, size_t n, size_t elem_size, MPI_Datatype type,
                         const char *what, ct_error *err) {
    const size_t slice = (size_t)1 << 28;
    char *p = values;
    for (size_t done = 0; done < n; done += slice) {
        size_t count = n - done < slice ? n - done : slice;
        if (mpi_check(MPI_Allreduce(MPI_IN_PLACE, p + done * elem_size, (int)count, type, MPI_SUM,
                                    MPI_COMM_WORLD),
                      what, err))
            return -1;
    }
    return 0;
}

int dist_sum_floats(const dist *d, float *values, size_t n, ct_error *err) {
    if (d->world_size == 1) return 0;
    return sum_in_slices(values, n, sizeof(float), MPI_FLOAT, "all-reduce (float)", err);
}

int dist_sum_doubles(const dist *d, double *values, size_t n, ct_error *err) {
    if (d->world_size == 1) return 0;
    return sum_in_slices(values, n, sizeof(double), MPI_DOUBLE, "all-reduce (double)", err);
}

int dist_sum_longs(const dist *d, long long *values, size_t n, ct_error *err) {
    if (d->world_size == 1) return 0;
    return sum_in_slices(values, n, sizeof(long long), MPI_LONG_LONG, "all-reduce (long)", err);
}

int dist_barrier(const dist *d, ct_error *err) {
    if (d->world_size == 1) return 0;
    return mpi_check(MPI_Barrier(MPI_COMM_WORLD), "barrier", err);
}

int dist_agree(const dist *d, int local_status, ct_error *err) {
    if (d->world_size == 1) return local_status == 0 ? 0 : -1;
    /* The lowest failing rank's message wins: deterministic, and printed once by rank 0. */
    int mine = local_status == 0 ? d->world_size : d->rank;
    int first_failed = d->world_size;
    if (MPI_Allreduce(&mine, &first_failed, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD) != MPI_SUCCESS)
        return ct_fail(err, "MPI all-reduce failed while ranks compared their status");
    if (first_failed == d->world_size) return 0;
    char message[sizeof err->msg];
    memset(message, 0, sizeof message);
    if (d->rank == first_failed && err) memcpy(message, err->msg, sizeof message);
    MPI_Bcast(message, (int)sizeof message, MPI_CHAR, first_failed, MPI_COMM_WORLD);
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
