/* cuda_status: how CUDA failures reach a caller of the kernel table.
 *
 * The table's functions return void (kernels/kernels.h), and kernel launches are
 * asynchronous anyway, so the CUDA backend records the FIRST failed CUDA or cuBLAS call
 * ("kernels/cuda/gemm.cu:52: cublasSgemm: CUBLAS_STATUS_INVALID_VALUE") in one
 * process-wide slot and carries on; later ops may then compute garbage. A caller checks
 * at the points where it would act on results anyway (after a step, before a checkpoint).
 * The slot is the backend's only mutable state besides the cuBLAS handle (device.cu). */
#ifndef CTUNE_CUDA_STATUS_H
#define CTUNE_CUDA_STATUS_H

#include "train/error.h"

/* Waits for the device to finish the work queued so far, then returns 0 when no CUDA
 * call failed since the last check, or -1 with the first failure in err (and clears it).
 * Without CUDA in the build it returns 0. */
int kernels_cuda_status(ct_error *err);
/* kernels_cuda_status without the wait: the failures recorded so far, for a caller that has
 * just synchronised with the device anyway (a download), which a kernel's execution error
 * surfaces in. */
int kernels_cuda_check(ct_error *err);

/* One GPU per rank: makes GPU (local_rank mod the GPUs this process sees) current, so that
 * ranks of a node spread over its GPUs (several ranks share one when there are more ranks
 * than GPUs). Call before the first kernels_cuda. Returns 0 and the GPU's PCI bus id
 * ("0000:3b:00.0": the same physical GPU has the same id in every process of the node,
 * whatever CUDA_VISIBLE_DEVICES renumbers; bus_id may be NULL), or -1 where no GPU can be
 * used (the same message kernels_cuda would give). */
int kernels_cuda_bind_rank(int local_rank, char *bus_id, size_t bus_id_size, ct_error *err);

#endif
