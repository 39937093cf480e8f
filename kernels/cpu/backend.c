/* The CPU reference backend: a const table of the functions of kernels/cpu. */
#include "kernels/kernels.h"
#include "kernels/cpu/cpu_ops.h"

static const kernels cpu_backend = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .release = cpu_release,
    .zero = cpu_zero,
    .copy = cpu_copy,
    .upload = cpu_copy,
    .download = cpu_copy,
    .gemm = cpu_gemm,
    .add = cpu_add,
    .axpy = cpu_axpy,
    .scale = cpu_scale,
    .dropout = cpu_dropout,
    .sum_squares = cpu_sum_squares,
    .sum_squares_blocks = cpu_sum_squares_blocks,
    .embedding_fwd = cpu_embedding_fwd,
    .embedding_bwd = cpu_embedding_bwd,
    .rmsnorm_fwd = cpu_rmsnorm_fwd,
    .rmsnorm_bwd = cpu_rmsnorm_bwd,
    .rope_fwd = cpu_rope_fwd,
    .rope_bwd = cpu_rope_bwd,
    .swiglu_fwd = cpu_swiglu_fwd,
    .swiglu_bwd = cpu_swiglu_bwd,
    .attention_fwd = cpu_attention_fwd,
    .attention_bwd = cpu_attention_bwd,
    .cross_entropy = cpu_cross_entropy,
    .to_half = cpu_to_half,
    .from_half = cpu_from_half,
    .to_half_2d = cpu_to_half_2d,
    .gemm_half = cpu_gemm_half,
    .rmsnorm_fwd_half = cpu_rmsnorm_fwd_half,
    .swiglu_fwd_half = cpu_swiglu_fwd_half,
    .swiglu_bwd_half = cpu_swiglu_bwd_half,
    .cross_entropy_half = cpu_cross_entropy_half,
    .attention_fwd_half = cpu_attention_fwd_half,
    .attention_bwd_half = cpu_attention_bwd_half,
    .adamw = cpu_adamw,
};

const kernels *kernels_cpu(void) { return &cpu_backend; }
