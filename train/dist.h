/* dist: the communicator of a run — rank discovery over MPI, the CPU collectives (all-reduce,
 * reduce-scatter, all-gather, broadcast, barrier), agreement on errors so that one rank's
 * failure stops every rank with one message instead of a hang, and a watchdog that ends the
 * job when a collective does not complete within the recipe's distributed.timeout_s.
 *
 * Two kinds of sums. dist_sum_* are MPI_Allreduce: the order of additions is MPI's, fine for
 * integers and for vectors where each element has one non-zero contributor (then every order
 * gives the same bits). dist_reduce_scatter_floats adds the ranks' values in one fixed tree
 * (DIST_TREE below) whatever MPI's algorithms, which is what makes training on 1, 2 or 4
 * ranks give the same bits (docs/distributed.md).
 *
 * This is the MPI back end (host memory). The NCCL back end for GPU ranks comes with the
 * CUDA kernels. Does not own: which samples a rank reads or how the optimizer is sharded
 * (trainer.c, optim/zero.h). */
#ifndef CTUNE_DIST_H
#define CTUNE_DIST_H

#include <stdbool.h>
#include <stddef.h>

#include "train/error.h"

typedef struct dist_runtime dist_runtime; /* watchdog and scratch buffers, owned by dist.c */

typedef struct dist {
    int rank;
    int world_size;
    int local_rank;      /* rank among the processes of this node */
    int local_size;
    bool owns_mpi;       /* this module called MPI_Init and must finalize */
    dist_runtime *rt;    /* set by dist_init; collectives between ranks need it */
    /* Where the buffers of dist_reduce_scatter_floats and dist_all_gather_floats live: a
     * kernels backend (GPU memory is staged through host scratch with its download/upload;
     * MPI never sees a device pointer), or NULL for host memory (the default). */
    const struct kernels *memory;
} dist;

/* Initialises MPI (singleton runs without mpirun work too) and fills the ranks. */
int dist_init(dist *d, int *argc, char ***argv, ct_error *err);
/* Stops the watchdog, frees the runtime, finalizes MPI when this module initialised it. */
void dist_finalize(dist *d);

/* Arms the watchdog: from now on, a collective of this module that has not returned after
 * timeout_s seconds prints "rank R: <operation> did not complete within N s" to stderr and
 * ends the whole job with MPI_Abort (a rank that hangs or died cannot answer any agreement,
 * so aborting is the only way out). Calling it again changes the timeout. No-op on 1 rank.
 * Deliberately the one place besides main that ends the process. */
int dist_set_timeout(const dist *d, double timeout_s, ct_error *err);

/* In-place sums over all ranks, in MPI's order (see above). */
int dist_sum_floats(const dist *d, float *values, size_t n, ct_error *err);
int dist_sum_doubles(const dist *d, double *values, size_t n, ct_error *err);
int dist_sum_longs(const dist *d, long long *values, size_t n, ct_error *err);
int dist_barrier(const dist *d, ct_error *err);
/* How many ranks of this node (same MPI processor name) passed the same key, this one
 * included: e.g. a GPU's PCI bus id, to count the ranks drawing on one GPU's memory. A
 * collective: every rank calls it. Keys are compared up to DIST_KEY_MAX - 1 bytes. */
enum { DIST_KEY_MAX = 128 };
int dist_count_same_key(const dist *d, const char *key, int *count, ct_error *err);
int dist_broadcast(const dist *d, void *data, size_t bytes, int root, ct_error *err);

/* DIST_TREE, the fixed summation order of n partial sums x[0..n-1] (ranks, micro-batches):
 * T(1) = x[0]; T(n) = T(first p) + T(rest) where p is the largest power of two below n.
 * For n a power of two it is the balanced pairwise tree; it is also what a binary-counter
 * stack that merges equal-sized neighbours builds when fed x[0], x[1], ... in order, and what
 * dist_tree_sum_inplace computes. Because T(a*b) = T over b blocks of T(a) when a is a power
 * of two, a sum split into contiguous blocks of a power-of-two size gives the same bits as
 * the whole. */

/* x[0] = T over the n vectors x[i*stride .. i*stride+len) (in place; the others are
 * clobbered). Host memory. */
void dist_tree_sum_inplace(float *x, int n, size_t stride, size_t len);

/* Splits of a flat vector over ranks: rank r owns [offsets[r], offsets[r+1]); offsets has
 * world_size + 1 non-decreasing entries starting at 0. */

/* out = sum over ranks of in[offsets[rank] ..  offsets[rank+1]), the ranks' values added in
 * the DIST_TREE order of ranks. Every rank passes its whole vector in (offsets[world_size]
 * floats). out may be in + offsets[rank] (in place). Memory of d->memory; collective. */
int dist_reduce_scatter_floats(const dist *d, const float *in, float *out, const size_t *offsets,
                               ct_error *err);
/* In place: rank r provides values[offsets[r] .. offsets[r+1]); afterwards every rank holds
 * every part. Memory of d->memory; collective. */
int dist_all_gather_floats(const dist *d, float *values, const size_t *offsets, ct_error *err);
/* The same for elements of elem_bytes (1 to 4) bytes: 16-bit weight copies. */
int dist_all_gather(const dist *d, void *values, size_t elem_bytes, const size_t *offsets, ct_error *err);
/* Rank r passes its part (host memory, offsets[r+1] - offsets[r] floats); root receives them
 * all into out[0 .. offsets[world_size]) (host memory; ignored on the other ranks): one tensor
 * of a checkpoint whose values are spread over the ranks. Collective. */
int dist_gather_floats(const dist *d, const float *part, float *out, const size_t *offsets, int root,
                       ct_error *err);

/* Bytes of scratch the two calls above keep on a rank (for memory estimates), when the
 * largest part has max_part floats. */
size_t dist_scratch_bytes(int world_size, size_t max_part);

/* Every rank passes its local status (0 ok, -1 failed) and its error; returns 0 when all
 * succeeded. Otherwise returns -1 on every rank, with err holding the message of the lowest
 * failing rank prefixed "rank N", so that rank 0 can print it once. */
int dist_agree(const dist *d, int local_status, ct_error *err);

/* Threads per rank: OMP_NUM_THREADS when set, else the cores of this node shared among its ranks. */
int dist_threads_per_rank(const dist *d);

#endif
