/* kernels_cuda: hands out the CUDA backend table, or says clearly why there is none.
 * Built without nvcc this reports that; built with it, it asks the CUDA runtime for a
 * device first, because a CUDA build routinely runs on machines without a GPU or driver
 * (CI), where the first runtime call fails ("CUDA driver version is insufficient ..."),
 * then creates the cuBLAS handle so that a broken installation fails here, not in gemm.
 * The table is assembled here, in C, from the functions of kernels/cuda (cuda_ops.h).
 * It uses the device current at the first call (a rank calls cudaSetDevice before). */
#include <stdbool.h>
#include <stddef.h>

#include "kernels/cuda/cuda_status.h"
#include "kernels/kernels.h"

#ifdef CTUNE_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"

static const kernels cuda_backend = {
    .name = "cuda",
    .alloc = cuda_alloc,
    .release = cuda_release,
    .memory_info = cuda_memory_info,
    .memory_held = cuda_memory_held,
    .attention_scratch_bytes = cuda_attention_scratch_bytes,
    .half_workspace_bytes = CUDA_HALF_WORKSPACE_BYTES,
    .zero = cuda_zero,
    .copy = cuda_copy,
    .upload = cuda_upload,
    .download = cuda_download,
    .gemm = cuda_gemm,
    .add = cuda_add,
    .axpy = cuda_axpy,
    .scale = cuda_scale,
    .dropout = cuda_dropout,
    .dropout_add = cuda_dropout_add,
    .dropout_half = cuda_dropout_half,
    .sum_squares = cuda_sum_squares,
    .sum_squares_blocks = cuda_sum_squares_blocks,
    .sum_squares_blocks_to = cuda_sum_squares_blocks_to,
    .clip_factor = cuda_clip_factor,
    .embedding_fwd = cuda_embedding_fwd,
    .embedding_bwd = cuda_embedding_bwd,
    .rmsnorm_fwd = cuda_rmsnorm_fwd,
    .rmsnorm_bwd = cuda_rmsnorm_bwd,
    .rope_fwd = cuda_rope_fwd,
    .rope_bwd = cuda_rope_bwd,
    .swiglu_fwd = cuda_swiglu_fwd,
    .swiglu_bwd = cuda_swiglu_bwd,
    .attention_fwd = cuda_attention_fwd,
    .attention_bwd = cuda_attention_bwd,
    .attention_cached = cuda_attention_cached,
    .cross_entropy = cuda_cross_entropy,
    .to_half = cuda_to_half,
    .from_half = cuda_from_half,
    .embedding_fwd_half = cuda_embedding_fwd_half,
    .to_half_2d = cuda_to_half_2d,
    .to_half_2d_many = cuda_to_half_2d_many,
    .nf4_to_half_2d = cuda_nf4_to_half_2d,
    .gemm_half = cuda_gemm_half,
    .gemm_half_add = cuda_gemm_half_add,
    .gemm_half_to_half = cuda_gemm_half_to_half,
    .rmsnorm_fwd_half = cuda_rmsnorm_fwd_half,
    .rmsnorm_bwd_half = cuda_rmsnorm_bwd_half,
    .rope_fwd_half = cuda_rope_fwd_half,
    .rope_bwd_half = cuda_rope_bwd_half,
    .swiglu_fwd_half = cuda_swiglu_fwd_half,
    .swiglu_bwd_half = cuda_swiglu_bwd_half,
    .cross_entropy_half = cuda_cross_entropy_half,
    .attention_fwd_half = cuda_attention_fwd_half,
    .attention_bwd_half = cuda_attention_bwd_half,
    .attention_cached_half = cuda_attention_cached_half,
    .dora_norm_scale = cuda_dora_norm_scale,
    .scale_cols = cuda_scale_cols,
    .dora_magnitude_grad = cuda_dora_magnitude_grad,
    .adamw = cuda_adamw,
};
#endif

int kernels_cuda(const kernels **out, ct_error *err) {
    if (out) *out = NULL;
#ifdef CTUNE_HAVE_CUDA
    char cuda_msg[512] = "";
    int count = ctune_cuda_device_count(cuda_msg, sizeof cuda_msg);
    if (count < 0) return ct_fail(err, "no CUDA GPU found (%s)", cuda_msg);
    if (count == 0) return ct_fail(err, "no CUDA GPU found (the CUDA runtime reports 0 devices)");
    if (ctune_cuda_init(cuda_msg, sizeof cuda_msg) != 0)
        return ct_fail(err, "found %d CUDA GPU(s), but %s", count, cuda_msg);
    if (out) *out = &cuda_backend;
    return 0;
#else
    return ct_fail(err, "this ctune was built without CUDA (nvcc was not found at configure "
                        "time); use the cpu backend");
#endif
}

/* The backend's first recorded failure as an error, after waiting for the device or not. */
static int take_cuda_error(bool wait, ct_error *err) {
#ifdef CTUNE_HAVE_CUDA
    char cuda_msg[1024] = "";
    int rc = wait ? ctune_cuda_take_error(cuda_msg, sizeof cuda_msg)
                  : ctune_cuda_take_recorded(cuda_msg, sizeof cuda_msg);
    if (rc != 0) return ct_fail(err, "CUDA backend: %s", cuda_msg);
#else
    (void)wait;
    (void)err;
#endif
    return 0;
}

int kernels_cuda_status(ct_error *err) {
    return take_cuda_error(true, err);
}

int kernels_cuda_check(ct_error *err) {
    return take_cuda_error(false, err);
}

int kernels_cuda_bind_rank(int local_rank, char *bus_id, size_t bus_id_size, ct_error *err) {
    if (bus_id && bus_id_size) bus_id[0] = '\0';
#ifdef CTUNE_HAVE_CUDA
    char cuda_msg[512] = "";
    int count = ctune_cuda_device_count(cuda_msg, sizeof cuda_msg);
    if (count < 0) return ct_fail(err, "no CUDA GPU found (%s)", cuda_msg);
    if (count == 0) return ct_fail(err, "no CUDA GPU found (the CUDA runtime reports 0 devices)");
    int index = (local_rank < 0 ? 0 : local_rank) % count;
    if (ctune_cuda_set_device(index, cuda_msg, sizeof cuda_msg) != 0)
        return ct_fail(err, "local rank %d: %s", local_rank, cuda_msg);
    if (bus_id && bus_id_size && ctune_cuda_bus_id(index, bus_id, bus_id_size, cuda_msg, sizeof cuda_msg) != 0)
        return ct_fail(err, "local rank %d: %s", local_rank, cuda_msg);
    return 0;
#else
    (void)local_rank;
    (void)bus_id_size;
    return ct_fail(err, "this ctune was built without CUDA (nvcc was not found at configure "
                        "time); use the cpu backend");
#endif
}
