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

// The CUDA code lives in a shared library (libtessera_cuda.so) that the worker loads with
// dlopen(RTLD_LOCAL) when a GPU path is chosen: binaries never link the CUDA runtime or cuBLAS
// directly. (Linked into a binary, Debian's civetweb fails to start /metrics servers in that
// process; a CPU-only machine also needs no CUDA libraries at all this way.)
struct Api {
  int version;  // kApiVersion
  int (*device_count)(int* error, const char** message);
  LrContext* (*create_lr_context)(const char** message);
  void (*destroy_lr_context)(LrContext* ctx);
  int (*lr_forward_backward)(LrContext* ctx, const uint32_t* offsets, const uint32_t* slots,
                             const float* labels, size_t num_samples, size_t num_slots,
                             const float* weights, float* grads, uint32_t num_keys, double* loss,
                             const char** message);
};
inline constexpr int kApiVersion = 1;

}  // namespace tessera::cuda

// The library's one exported entry point.
extern "C" __attribute__((visibility("default"))) const tessera::cuda::Api* tessera_cuda_api();

#endif  // TESSERA_WORKER_LR_CUDA_H_
