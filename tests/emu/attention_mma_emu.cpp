// kernels/cuda/attention_mma.cu compiled for the host emulator (cuda_emu.h): this directory
// comes first on the include path, so its CUDA headers, cuda_common.cuh and
// attention_mma_ptx.cuh stand in for the real ones; the kernels and launchers are the
// source's own.
#include "cuda_emu.h"

// What every kernel's `extern __shared__` array names: an H100's 227 KiB.
alignas(16) unsigned char am_smem[227 * 1024];
static const bool am_smem_registered = (emu_set_shared_memory(am_smem, sizeof am_smem), true);

#include "kernels/cuda/attention_mma.cu"
