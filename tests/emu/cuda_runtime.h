// Host emulation stand-in for <cuda_runtime.h> (tests/emu/cuda_emu.h says how kernels run here).
#include "cuda_emu.h"
