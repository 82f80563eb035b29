// The CUDA code's interface (libtessera_cuda.so: lr_cuda.cu, nn_cuda.cu), plain C++ without
// Abseil so that nvcc compiles only the kernels. Errors are CUDA codes (-1: cuBLAS); 0 is
// success, and *message describes a failure.
#ifndef TESSERA_WORKER_CUDA_API_H_
#define TESSERA_WORKER_CUDA_API_H_

#include <cstddef>
#include <cstdint>
#include <string>

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

struct NnContext;  // device buffers and a cuBLAS handle for the MLP and CTR models

NnContext* CreateNnContext(const char** message);
void DestroyNnContext(NnContext* ctx);

// Same contract as tessera::MlpForwardBackward (worker/mlp.h) with host arrays: w[l], b[l],
// gw[l], gb[l] per layer l < layers, sizes[layers + 1]; dx may be null.
int MlpForwardBackward(NnContext* ctx, uint32_t layers, const uint32_t* sizes,
                       const float* const* w, const float* const* b, const float* x,
                       const uint8_t* labels, uint32_t batch, float* const* gw, float* const* gb,
                       float* dx, double* loss, uint32_t* correct, const char** message);

// Same contract as tessera::EmbMlpForwardBackward (worker/emb_mlp.h): row[batch * fields]
// indexes rows (num_unique x dim); emb_grads gets num_unique x dim.
int EmbMlpForwardBackward(NnContext* ctx, uint32_t fields, uint32_t dim, uint32_t dense_width,
                          int interactions, uint32_t layers, const uint32_t* sizes,
                          const float* const* w, const float* const* b, const uint32_t* row,
                          uint32_t num_unique, const float* rows, const float* dense,
                          const uint8_t* labels, uint32_t batch, float* const* gw, float* const* gb,
                          float* emb_grads, double* loss, uint32_t* correct, const char** message);

// The distinct keys of keys[0, n) in ascending order (unique, n entries of room) and each
// key's index among them (row[n]).
int UniqueKeys(NnContext* ctx, const uint64_t* keys, uint32_t n, uint64_t* unique, uint32_t* row,
               uint32_t* num_unique, const char** message);

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
  NnContext* (*create_nn_context)(const char** message);
  void (*destroy_nn_context)(NnContext* ctx);
  decltype(&MlpForwardBackward) mlp_forward_backward;
  decltype(&EmbMlpForwardBackward) emb_mlp_forward_backward;
  decltype(&UniqueKeys) unique_keys;
};
inline constexpr int kApiVersion = 2;

}  // namespace tessera::cuda

namespace tessera {
// The library's API, loaded once per process (dlopen: $TESSERA_CUDA_LIBRARY, the build tree's
// copy, then libtessera_cuda.so on the loader's path); null with the reason in *why. Host side
// (worker/lr_gpu.cc).
const cuda::Api* LoadCudaLibrary(std::string* why);
}  // namespace tessera

// The library's one exported entry point.
extern "C" __attribute__((visibility("default"))) const tessera::cuda::Api* tessera_cuda_api();

#endif  // TESSERA_WORKER_CUDA_API_H_
