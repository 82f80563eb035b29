// The CUDA side of LrGpu, behind a plain C++ interface (no Abseil, so nvcc compiles only the
// kernels). Errors are CUDA/cuBLAS codes; 0 is success.
#ifndef TESSERA_WORKER_LR_CUDA_H_
#define TESSERA_WORKER_LR_CUDA_H_

#include <cstddef>
#include <cstdint>

namespace tessera::cuda {

// Number of devices; on failure 0, with the CUDA error in *error and its text in *message.
int DeviceCount(int* error, const char** message);

struct LrContext;  // device buffers and a cuBLAS handle, grown on demand

// nullptr on failure, with the reason in *message.
LrContext* CreateLrContext(const char** message);
void DestroyLrContext(LrContext* ctx);

// Same contract as LrForwardBackwardCpu. Returns 0 or an error code; *message describes it.
int LrForwardBackward(LrContext* ctx, const uint32_t* offsets, const uint32_t* slots,
                      const float* labels, size_t num_samples, size_t num_slots,
                      const float* weights, float* grads, uint32_t num_keys, double* loss,
                      const char** message);

}  // namespace tessera::cuda

#endif  // TESSERA_WORKER_LR_CUDA_H_
