// cuda_internal: the cuBLAS handle accessor (device.cu), kept apart from cuda_common.cuh so
// only the sources that call cuBLAS include its header.
#ifndef CTUNE_CUDA_INTERNAL_CUH
#define CTUNE_CUDA_INTERNAL_CUH

#include <cublas_v2.h>

// The process's handle (created on first use, TF32 off); NULL, with the failure recorded,
// when cuBLAS cannot be initialised.
cublasHandle_t ctune_cublas_handle(void);

#endif
