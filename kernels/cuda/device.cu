// device: the CUDA runtime probe behind kernels_cuda (kernels/cuda_select.c), the
// process's cuBLAS handle, and the sticky error slot of cuda_status.h.
//
// Global state, and why it is unavoidable: the table's signatures (kernels/kernels.h)
// carry no context pointer, so the cuBLAS handle (expensive to create, one per process
// and device) and the first recorded failure (the ops return void) live here, in two
// statics. The handle is created exactly once under pthread_once and never changes;
// the error slot is guarded by a mutex. Both belong to the device that was current when
// the backend was first used (a rank selects its GPU with cudaSetDevice before that).
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_internal.cuh"

extern "C" int ctune_cuda_device_count(char *msg, size_t msg_size) {
    // Any error of the first runtime call means there is no usable GPU here: on a machine
    // with the toolkit but no driver, cudaGetDeviceCount fails with "CUDA driver version
    // is insufficient for CUDA runtime version" rather than cudaErrorNoDevice.
    int count = 0;
    cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess) {
        snprintf(msg, msg_size, "%s", cudaGetErrorString(status));
        cudaGetLastError();  // reset the runtime's last-error state for whoever calls next
        return -1;
    }
    return count;
}

static bool backend_started(void);

// ---- the error slot ----
static pthread_mutex_t error_lock = PTHREAD_MUTEX_INITIALIZER;
static char error_message[1024];
static bool error_held = false;

void ctune_cuda_record(const char *file, int line, const char *what, const char *message) {
    pthread_mutex_lock(&error_lock);
    if (!error_held) {
        snprintf(error_message, sizeof error_message, "%s:%d: %s: %s", file, line, what, message);
        error_held = true;
    }
    pthread_mutex_unlock(&error_lock);
}

extern "C" int ctune_cuda_take_error(char *msg, size_t msg_size) {
    // Execution errors of earlier kernels surface here. Before the backend was handed out
    // there is nothing to wait for (and on a machine without a GPU the call would fail).
    if (backend_started()) CUDA_CHECK(cudaDeviceSynchronize());
    return ctune_cuda_take_recorded(msg, msg_size);
}

extern "C" int ctune_cuda_take_recorded(char *msg, size_t msg_size) {
    pthread_mutex_lock(&error_lock);
    int rc = 0;
    if (error_held) {
        snprintf(msg, msg_size, "%s", error_message);
        error_held = false;
        rc = -1;
    }
    pthread_mutex_unlock(&error_lock);
    return rc;
}

extern "C" int ctune_cuda_set_device(int index, char *msg, size_t msg_size) {
    cudaError_t status = cudaSetDevice(index);
    if (status != cudaSuccess) {
        snprintf(msg, msg_size, "cudaSetDevice(%d): %s", index, cudaGetErrorString(status));
        cudaGetLastError();
        return -1;
    }
    return 0;
}

extern "C" int ctune_cuda_bus_id(int index, char *id, size_t id_size, char *msg, size_t msg_size) {
    cudaError_t status = cudaDeviceGetPCIBusId(id, (int)id_size, index);
    if (status != cudaSuccess) {
        snprintf(msg, msg_size, "cudaDeviceGetPCIBusId(%d): %s", index, cudaGetErrorString(status));
        cudaGetLastError();
        return -1;
    }
    return 0;
}

// ---- the cuBLAS handle ----
static pthread_once_t handle_once = PTHREAD_ONCE_INIT;
static cublasHandle_t handle = NULL;
static cublasStatus_t handle_status = CUBLAS_STATUS_NOT_INITIALIZED;

// Stream-ordered scratch (attention's 16-bit inputs, reduction partials) comes from the
// device's default pool, whose release threshold is 0 by default: every synchronisation
// (one a step, to read the loss) would hand its memory back to the driver and the next step
// would map it again. Keeping it makes later requests sub-allocations of what the first step
// reserved: the memory is allocated once. A device without pools is left as it is (its
// stream-ordered allocations then fail with the runtime's message).
static void keep_pool_memory(void) {
    int device = 0, pools = 0;
    cudaMemPool_t pool;
    uint64_t keep = UINT64_MAX;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device) != cudaSuccess || !pools ||
        cudaDeviceGetDefaultMemPool(&pool, device) != cudaSuccess ||
        cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep) != cudaSuccess)
        cudaGetLastError();
}

static void create_handle(void) {
    keep_pool_memory();
    cublasHandle_t created = NULL;
    cublasStatus_t status = cublasCreate(&created);
    if (status == CUBLAS_STATUS_SUCCESS) {
        // fp32 must stay fp32 (no TF32 tensor cores, no reduced-precision shortcuts): the
        // backend has to agree with the CPU reference to ~1e-6. The default stream, as
        // every other op of this backend uses, keeps all work in one order.
        status = cublasSetMathMode(created, CUBLAS_PEDANTIC_MATH);
        if (status == CUBLAS_STATUS_SUCCESS) status = cublasSetStream(created, 0);
        if (status != CUBLAS_STATUS_SUCCESS) {
            cublasDestroy(created);
            created = NULL;
        }
    }
    pthread_mutex_lock(&error_lock);
    handle = created;
    handle_status = status;
    pthread_mutex_unlock(&error_lock);
}

extern "C" int ctune_cuda_init(char *msg, size_t msg_size) {
    pthread_once(&handle_once, create_handle);
    if (handle_status != CUBLAS_STATUS_SUCCESS) {
        snprintf(msg, msg_size, "cuBLAS could not be initialised: %s",
                 cublasGetStatusString(handle_status));
        return -1;
    }
    return 0;
}

// Whether kernels_cuda succeeded (the handle exists), without creating anything.
static bool backend_started(void) {
    pthread_mutex_lock(&error_lock);  // orders the read after create_handle's writes
    bool started = handle != NULL;
    pthread_mutex_unlock(&error_lock);
    return started;
}

cublasHandle_t ctune_cublas_handle(void) {
    pthread_once(&handle_once, create_handle);
    if (handle_status != CUBLAS_STATUS_SUCCESS)
        ctune_cuda_record(__FILE__, __LINE__, "cublasCreate", cublasGetStatusString(handle_status));
    return handle;
}
