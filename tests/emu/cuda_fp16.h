// Host emulation stand-in for <cuda_fp16.h> (tests/emu/cuda_emu.h says how kernels run here).
#include "cuda_emu.h"
