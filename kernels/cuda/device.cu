// device: the CUDA runtime probe behind kernels_cuda (kernels/cuda_select.c).
// Any error of the first runtime call means there is no usable GPU here: on a machine with
// the toolkit but no driver, cudaGetDeviceCount fails with "CUDA driver version is
// insufficient for CUDA runtime version" rather than cudaErrorNoDevice.
#include <cuda_runtime.h>
#include <stdio.h>

extern "C" int ctune_cuda_device_count(char *msg, size_t msg_size) {
    int count = 0;
    cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess) {
        snprintf(msg, msg_size, "%s", cudaGetErrorString(status));
        cudaGetLastError();  // reset the runtime's last-error state for whoever calls next
        return -1;
    }
    return count;
}
