// CUDA kernels for sparse logistic regression: one thread per sample computes the score,
// the sample's log-loss and scatters (p - y) / n into the distinct-key gradients with
// atomicAdd; cuBLAS sums the per-sample losses. Same math as LrForwardBackwardCpu.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "worker/cuda/cuda_api.h"
#include "worker/cuda/cuda_util.cuh"

namespace tessera::cuda {

struct LrContext {
  cublasHandle_t blas = nullptr;
  Buffer<uint32_t> offsets, slots;
  Buffer<float> labels, losses, weights, grads;
};

namespace {

__global__ void LrKernel(const uint32_t* offsets, const uint32_t* slots, const float* labels,
                         size_t n, const float* weights, float* grads, float* losses) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  float score = 0;
  for (uint32_t j = offsets[i]; j < offsets[i + 1]; ++j) score += weights[slots[j]];
  const float p = 1.0f / (1.0f + expf(-score));
  const float y = labels[i];
  const float m = y > 0.5f ? -score : score;
  losses[i] = m > 0 ? m + log1pf(expf(-m)) : log1pf(expf(m));
  const float g = (p - y) / static_cast<float>(n);
  for (uint32_t j = offsets[i]; j < offsets[i + 1]; ++j) atomicAdd(&grads[slots[j]], g);
}

}  // namespace

int DeviceCount(int* error, const char** message) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  *error = static_cast<int>(e);
  *message = cudaGetErrorString(e);
  return e == cudaSuccess ? n : 0;
}

LrContext* CreateLrContext(const char** message) { return NewBlasContext<LrContext>(message); }

void DestroyLrContext(LrContext* ctx) {
  if (ctx == nullptr) return;
  ctx->offsets.Free();
  ctx->slots.Free();
  ctx->labels.Free();
  ctx->losses.Free();
  ctx->weights.Free();
  ctx->grads.Free();
  if (ctx->blas != nullptr) cublasDestroy(ctx->blas);
  delete ctx;
}

int LrForwardBackward(LrContext* ctx, const uint32_t* offsets, const uint32_t* slots,
                      const float* labels, size_t num_samples, size_t num_slots,
                      const float* weights, float* grads, uint32_t num_keys, double* loss,
                      const char** message) {
  *message = "ok";
  cudaError_t e = ctx->offsets.Reserve(num_samples + 1);
  if (e == cudaSuccess) e = ctx->slots.Reserve(num_slots + 1);
  if (e == cudaSuccess) e = ctx->labels.Reserve(num_samples + 1);
  if (e == cudaSuccess) e = ctx->losses.Reserve(num_samples + 1);
  if (e == cudaSuccess) e = ctx->weights.Reserve(num_keys + 1);
  if (e == cudaSuccess) e = ctx->grads.Reserve(num_keys + 1);
  if (e == cudaSuccess) {
    e = cudaMemcpy(ctx->offsets.ptr, offsets, (num_samples + 1) * sizeof(uint32_t),
                   cudaMemcpyHostToDevice);
  }
  if (e == cudaSuccess) {
    e = cudaMemcpy(ctx->slots.ptr, slots, num_slots * sizeof(uint32_t), cudaMemcpyHostToDevice);
  }
  if (e == cudaSuccess) {
    e = cudaMemcpy(ctx->labels.ptr, labels, num_samples * sizeof(float), cudaMemcpyHostToDevice);
  }
  if (e == cudaSuccess) {
    e = cudaMemcpy(ctx->weights.ptr, weights, num_keys * sizeof(float), cudaMemcpyHostToDevice);
  }
  if (e == cudaSuccess) e = cudaMemset(ctx->grads.ptr, 0, num_keys * sizeof(float));
  if (e != cudaSuccess) {
    *message = cudaGetErrorString(e);
    return static_cast<int>(e);
  }
  if (num_samples > 0) {
    const int threads = 256;
    const int blocks = static_cast<int>((num_samples + threads - 1) / threads);
    LrKernel<<<blocks, threads>>>(ctx->offsets.ptr, ctx->slots.ptr, ctx->labels.ptr, num_samples,
                                  ctx->weights.ptr, ctx->grads.ptr, ctx->losses.ptr);
    e = cudaGetLastError();
  }
  float sum = 0;
  if (e == cudaSuccess && num_samples > 0) {
    // Losses are >= 0, so their sum is their absolute sum.
    if (cublasSasum(ctx->blas, static_cast<int>(num_samples), ctx->losses.ptr, 1, &sum) !=
        CUBLAS_STATUS_SUCCESS) {
      *message = "cublasSasum failed";
      return -1;
    }
  }
  if (e == cudaSuccess) {
    e = cudaMemcpy(grads, ctx->grads.ptr, num_keys * sizeof(float), cudaMemcpyDeviceToHost);
  }
  if (e != cudaSuccess) {
    *message = cudaGetErrorString(e);
    return static_cast<int>(e);
  }
  *loss = num_samples > 0 ? static_cast<double>(sum) / static_cast<double>(num_samples) : 0.0;
  return 0;
}

}  // namespace tessera::cuda

extern "C" __attribute__((visibility("default"))) const tessera::cuda::Api* tessera_cuda_api() {
  static const tessera::cuda::Api api = {
      tessera::cuda::kApiVersion,           tessera::cuda::DeviceCount,
      tessera::cuda::CreateLrContext,       tessera::cuda::DestroyLrContext,
      tessera::cuda::LrForwardBackward,     tessera::cuda::CreateNnContext,
      tessera::cuda::DestroyNnContext,      tessera::cuda::MlpForwardBackward,
      tessera::cuda::EmbMlpForwardBackward, tessera::cuda::UniqueKeys,
  };
  return &api;
}
