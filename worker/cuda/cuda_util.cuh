// Helpers shared by the CUDA sources of libtessera_cuda.so (nvcc only).
#ifndef TESSERA_WORKER_CUDA_UTIL_CUH_
#define TESSERA_WORKER_CUDA_UTIL_CUH_

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>

namespace tessera::cuda {

// A device buffer that grows (by 1.5x) and never shrinks.
template <typename T>
struct Buffer {
  T* ptr = nullptr;
  size_t cap = 0;

  cudaError_t Reserve(size_t want) {
    if (want <= cap) return cudaSuccess;
    cudaFree(ptr);
    ptr = nullptr;
    cap = 0;
    const size_t n = want + want / 2 + 1;
    const cudaError_t e = cudaMalloc(reinterpret_cast<void**>(&ptr), n * sizeof(T));
    if (e == cudaSuccess) cap = n;
    return e;
  }
  void Free() {
    cudaFree(ptr);
    ptr = nullptr;
    cap = 0;
  }
};

// A new context (a struct with a `cublasHandle_t blas`) with its cuBLAS handle (host pointer
// mode); null with *message on failure.
template <typename Context>
Context* NewBlasContext(const char** message) {
  auto* ctx = new Context();
  if (cublasCreate(&ctx->blas) != CUBLAS_STATUS_SUCCESS) {
    *message = "cublasCreate failed";
    delete ctx;
    return nullptr;
  }
  cublasSetPointerMode(ctx->blas, CUBLAS_POINTER_MODE_HOST);
  return ctx;
}

}  // namespace tessera::cuda

#endif  // TESSERA_WORKER_CUDA_UTIL_CUH_
