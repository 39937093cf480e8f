// The dynamic shared-memory arrays that kernels/cuda's sources declare `extern __shared__`
// (`thread_local` on the emulator, tests/emu/cuda_emu.h), each as large as an H100 allows a
// block, registered with the emulator (filled with 0xFF, bounds of shared accesses checked).
// A source naming a new one needs it added here.
#include "cuda_emu.h"

alignas(128) thread_local float smem[EMU_SMEM_OPTIN / sizeof(float)];  // attention.cu
alignas(128) thread_local unsigned char ah_smem[EMU_SMEM_OPTIN];        // attention_half.cu
alignas(128) thread_local unsigned char am_smem[EMU_SMEM_OPTIN];        // attention_mma.cu

namespace {
// Kernels run on the thread that loads the program (the tests' main thread), whose copies these are.
const bool registered = (emu_add_shared_memory((unsigned char *)smem, sizeof smem),
                         emu_add_shared_memory(ah_smem, sizeof ah_smem),
                         emu_add_shared_memory(am_smem, sizeof am_smem), true);
}  // namespace
