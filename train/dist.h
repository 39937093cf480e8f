/* dist: the communicator of a run — rank discovery over MPI, CPU collectives, agreement on
 * errors so that one rank's failure stops every rank with one message instead of a hang.
 *
 * Reductions here are MPI_Allreduce sums; the order of summation is MPI's. The NCCL back end
 * and deterministic (fixed-order) reductions belong to the distributed issue.
 * Does not own: which samples a rank reads (the training loop decides, from data.h). */
#ifndef CTUNE_DIST_H
#define CTUNE_DIST_H

#include <stdbool.h>
#include <stddef.h>

#include "train/error.h"

typedef struct dist {
    int rank;
    int world_size;
    int local_rank;      /* rank among the processes of this node */
    int local_size;
    bool owns_mpi;       /* this module called MPI_Init and must finalize */
} dist;

/* Initialises MPI (singleton runs without mpirun work too) and fills the ranks. */
int dist_init(dist *d, int *argc, char ***argv, ct_error *err);
void dist_finalize(dist *d);

/* In-place sums over all ranks. */
int dist_sum_floats(const dist *d, float *values, size_t n, ct_error *err);
int dist_sum_doubles(const dist *d, double *values, size_t n, ct_error *err);
int dist_sum_longs(const dist *d, long long *values, size_t n, ct_error *err);
int dist_barrier(const dist *d, ct_error *err);

/* Every rank passes its local status (0 ok, -1 failed) and its error; returns 0 when all
 * succeeded. Otherwise returns -1 on every rank, with err holding the message of the lowest
 * failing rank prefixed "rank N", so that rank 0 can print it once. */
int dist_agree(const dist *d, int local_status, ct_error *err);

/* Threads per rank: OMP_NUM_THREADS when set, else the cores of this node shared among its ranks. */
int dist_threads_per_rank(const dist *d);

#endif
