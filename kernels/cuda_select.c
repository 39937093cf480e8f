/* kernels_cuda: hands out the CUDA backend table, or says clearly why there is none.
 * Built without nvcc this reports that; built with it, it asks the CUDA runtime for a
 * device first, because a CUDA build routinely runs on machines without a GPU or driver
 * (CI), where the first runtime call fails ("CUDA driver version is insufficient ..."). */
#include <stddef.h>

#include "kernels/kernels.h"

#ifdef CTUNE_HAVE_CUDA
/* Defined in kernels/cuda/device.cu. Returns the number of devices (>= 0), or -1 with the
 * CUDA runtime's error string in msg when the runtime cannot be used at all. */
int ctune_cuda_device_count(char *msg, size_t msg_size);
#endif

int kernels_cuda(const kernels **out, ct_error *err) {
    if (out) *out = NULL;
#ifdef CTUNE_HAVE_CUDA
    char cuda_msg[512] = "";
    int count = ctune_cuda_device_count(cuda_msg, sizeof cuda_msg);
    if (count < 0) return ct_fail(err, "no CUDA GPU found (%s)", cuda_msg);
    if (count == 0) return ct_fail(err, "no CUDA GPU found (the CUDA runtime reports 0 devices)");
    return ct_fail(err,
                   "found %d CUDA GPU(s), but the CUDA kernels are not implemented yet; "
                   "use the cpu backend",
                   count);
#else
    return ct_fail(err, "this ctune was built without CUDA (nvcc was not found at configure "
                        "time); use the cpu backend");
#endif
}
