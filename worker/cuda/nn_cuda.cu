// The MLP and the embedding + MLP CTR model on the GPU: cuBLAS GEMMs, kernels for bias,
// ReLU, softmax cross-entropy, the embedding gather (with the pairwise dot products) and the
// per-key gradient scatter, and CUB radix sort for the batch's distinct keys. The same math as
// worker/mlp.cc and worker/emb_mlp.cc (row-major tensors; see nn_gpu_test.cc, which compares
// them). Row-major X (r x c) is column-major X^T, which is how the GEMMs below are written.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cub/cub.cuh>
#include <vector>

#include "worker/cuda/cuda_api.h"
#include "worker/cuda/cuda_util.cuh"

namespace tessera::cuda {
namespace {

constexpr int kThreads = 256;
int Blocks(size_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

__global__ void BroadcastBias(const float* b, size_t batch, uint32_t out, float* z) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i < batch * out) z[i] = b[i % out];
}

__global__ void Relu(const float* z, size_t n, float* h) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i < n) h[i] = z[i] > 0 ? z[i] : 0.0f;
}

__global__ void ReluBackward(const float* z, size_t n, float* dh) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i < n && z[i] <= 0) dh[i] = 0;
}

// One thread per example: its loss, whether its argmax is the label, and d(mean loss)/dz.
__global__ void SoftmaxCrossEntropy(const float* logits, const uint8_t* labels, uint32_t batch,
                                    uint32_t classes, double* losses, uint32_t* correct,
                                    float* dz) {
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= batch) return;
  const float* row = logits + static_cast<size_t>(i) * classes;
  uint32_t best = 0;
  for (uint32_t c = 1; c < classes; ++c) {
    if (row[c] > row[best]) best = c;
  }
  const float top = row[best];
  double sum = 0;
  for (uint32_t c = 0; c < classes; ++c) sum += exp(static_cast<double>(row[c] - top));
  const double log_sum = log(sum) + top;
  losses[i] = log_sum - row[labels[i]];
  correct[i] = best == labels[i];
  for (uint32_t c = 0; c < classes; ++c) {
    const double p = exp(static_cast<double>(row[c]) - log_sum);
    dz[static_cast<size_t>(i) * classes + c] =
        static_cast<float>((p - (c == labels[i] ? 1.0 : 0.0)) / batch);
  }
}

// db[c] = sum over examples of dz[i, c], in example order.
__global__ void ColumnSums(const float* dz, uint32_t batch, uint32_t out, float* db) {
  const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= out) return;
  float s = 0;
  for (uint32_t i = 0; i < batch; ++i) s += dz[static_cast<size_t>(i) * out + c];
  db[c] = s;
}

// The MLP's input per example: embeddings field by field, the dot products of every pair
// (a < b), the dense features. One thread per example.
__global__ void Gather(const uint32_t* row, const float* rows, const float* dense, uint32_t batch,
                       uint32_t fields, uint32_t dim, uint32_t dense_width, int interactions,
                       size_t width, float* x) {
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= batch) return;
  float* out = x + i * width;
  for (uint32_t f = 0; f < fields; ++f) {
    const float* e = rows + static_cast<size_t>(row[static_cast<size_t>(i) * fields + f]) * dim;
    for (uint32_t k = 0; k < dim; ++k) out[f * dim + k] = e[k];
  }
  size_t p = static_cast<size_t>(fields) * dim;
  for (uint32_t a = 0; interactions && a < fields; ++a) {
    for (uint32_t b = a + 1; b < fields; ++b) {
      float dot = 0;
      for (uint32_t k = 0; k < dim; ++k) dot += out[a * dim + k] * out[b * dim + k];
      out[p++] = dot;
    }
  }
  for (uint32_t k = 0; k < dense_width; ++k)
    out[p + k] = dense[static_cast<size_t>(i) * dense_width + k];
}

// One thread per (example, field, k): the embedding's gradient (its own input slot plus what
// the dot products pass back) added to its key's row.
__global__ void Scatter(const uint32_t* row, const float* x, const float* dx, uint32_t batch,
                        uint32_t fields, uint32_t dim, int interactions, size_t width,
                        float* emb_grads) {
  const size_t t = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (t >= static_cast<size_t>(batch) * fields * dim) return;
  const uint32_t k = t % dim;
  const uint32_t f = (t / dim) % fields;
  const uint32_t i = t / (static_cast<size_t>(dim) * fields);
  const float* g = dx + i * width;
  const float* xi = x + i * width;
  float sum = g[f * dim + k];
  if (interactions) {
    // Pair (a, b), a < b, sits at fields * dim + (index of the pair in row-major order).
    size_t p = static_cast<size_t>(fields) * dim;
    for (uint32_t a = 0; a < fields; ++a) {
      for (uint32_t b = a + 1; b < fields; ++b, ++p) {
        if (a == f) sum += g[p] * xi[b * dim + k];
        if (b == f) sum += g[p] * xi[a * dim + k];
      }
    }
  }
  atomicAdd(&emb_grads[static_cast<size_t>(row[static_cast<size_t>(i) * fields + f]) * dim + k],
            sum);
}

__global__ void Iota(uint32_t n, uint32_t* out) {
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = i;
}

// head[j] = 1 where sorted[j] starts a run of equal keys.
__global__ void RunHeads(const uint64_t* sorted, uint32_t n, uint32_t* head) {
  const uint32_t j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j < n) head[j] = (j == 0 || sorted[j] != sorted[j - 1]) ? 1u : 0u;
}

// With run[j] = (inclusive sum of heads) - 1: the distinct keys in order, and each original
// position's row.
__global__ void RunOutputs(const uint64_t* sorted, const uint32_t* order, const uint32_t* run,
                           uint32_t n, uint64_t* unique, uint32_t* row) {
  const uint32_t j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= n) return;
  const uint32_t r = run[j] - 1;
  row[order[j]] = r;
  if (j == 0 || sorted[j] != sorted[j - 1]) unique[r] = sorted[j];
}

}  // namespace

struct NnContext {
  cublasHandle_t blas = nullptr;
  std::vector<Buffer<float>> w, b, gw, gb, z, h;
  Buffer<float> x, dx, dz, dh, rows, dense, emb_grads;
  Buffer<uint8_t> labels;
  Buffer<double> losses;
  Buffer<uint32_t> correct, row;
  // Distinct keys.
  Buffer<uint64_t> keys, sorted_keys, unique;
  Buffer<uint32_t> order_in, order, heads, runs, key_rows;
  Buffer<unsigned char> temp;
};

namespace {

#define TESSERA_CUDA_TRY(expr)           \
  do {                                   \
    const cudaError_t e_ = (expr);       \
    if (e_ != cudaSuccess) {             \
      *message = cudaGetErrorString(e_); \
      return static_cast<int>(e_);       \
    }                                    \
  } while (0)

#define TESSERA_CUBLAS_TRY(expr)           \
  do {                                     \
    if ((expr) != CUBLAS_STATUS_SUCCESS) { \
      *message = #expr " failed";          \
      return -1;                           \
    }                                      \
  } while (0)

template <typename T>
cudaError_t Upload(Buffer<T>& dst, const T* src, size_t n) {
  cudaError_t e = dst.Reserve(n);
  if (e == cudaSuccess && n > 0)
    e = cudaMemcpy(dst.ptr, src, n * sizeof(T), cudaMemcpyHostToDevice);
  return e;
}

// Forward and backward of the MLP on device input x (batch x sizes[0]); the parameters are
// host arrays, uploaded here. Leaves dx (device) when want_dx.
int MlpOnDevice(NnContext* ctx, uint32_t layers, const uint32_t* sizes, const float* const* w,
                const float* const* b, const float* x, const uint8_t* labels, uint32_t batch,
                float* const* gw, float* const* gb, bool want_dx, double* loss, uint32_t* correct,
                const char** message) {
  if (batch == 0) {  // (no kernel launches of zero blocks) the CPU's answer: zeros
    for (uint32_t l = 0; l < layers; ++l) {
      for (size_t i = 0; i < static_cast<size_t>(sizes[l]) * sizes[l + 1]; ++i) gw[l][i] = 0;
      for (uint32_t i = 0; i < sizes[l + 1]; ++i) gb[l][i] = 0;
    }
    *loss = 0;
    *correct = 0;
    return 0;
  }
  ctx->w.resize(layers);
  ctx->b.resize(layers);
  ctx->gw.resize(layers);
  ctx->gb.resize(layers);
  ctx->z.resize(layers);
  ctx->h.resize(layers);
  const float one = 1.0f, zero = 0.0f;
  const float* in = x;
  for (uint32_t l = 0; l < layers; ++l) {
    const uint32_t din = sizes[l], dout = sizes[l + 1];
    TESSERA_CUDA_TRY(Upload(ctx->w[l], w[l], static_cast<size_t>(din) * dout));
    TESSERA_CUDA_TRY(Upload(ctx->b[l], b[l], dout));
    TESSERA_CUDA_TRY(ctx->z[l].Reserve(static_cast<size_t>(batch) * dout));
    BroadcastBias<<<Blocks(static_cast<size_t>(batch) * dout), kThreads>>>(ctx->b[l].ptr, batch,
                                                                           dout, ctx->z[l].ptr);
    // z (batch x dout) += in (batch x din) W (din x dout).
    TESSERA_CUBLAS_TRY(cublasSgemm(ctx->blas, CUBLAS_OP_N, CUBLAS_OP_N, dout, batch, din, &one,
                                   ctx->w[l].ptr, dout, in, din, &one, ctx->z[l].ptr, dout));
    if (l + 1 < layers) {
      TESSERA_CUDA_TRY(ctx->h[l + 1].Reserve(static_cast<size_t>(batch) * dout));
      Relu<<<Blocks(static_cast<size_t>(batch) * dout), kThreads>>>(
          ctx->z[l].ptr, static_cast<size_t>(batch) * dout, ctx->h[l + 1].ptr);
      in = ctx->h[l + 1].ptr;
    }
  }
  const uint32_t classes = sizes[layers];
  TESSERA_CUDA_TRY(Upload(ctx->labels, labels, batch));
  TESSERA_CUDA_TRY(ctx->losses.Reserve(batch));
  TESSERA_CUDA_TRY(ctx->correct.Reserve(batch));
  TESSERA_CUDA_TRY(ctx->dz.Reserve(static_cast<size_t>(batch) * classes));
  SoftmaxCrossEntropy<<<Blocks(batch), kThreads>>>(ctx->z[layers - 1].ptr, ctx->labels.ptr, batch,
                                                   classes, ctx->losses.ptr, ctx->correct.ptr,
                                                   ctx->dz.ptr);
  TESSERA_CUDA_TRY(cudaGetLastError());
  for (uint32_t l = layers; l-- > 0;) {
    const uint32_t din = sizes[l], dout = sizes[l + 1];
    const float* layer_in = l == 0 ? x : ctx->h[l].ptr;
    TESSERA_CUDA_TRY(ctx->gw[l].Reserve(static_cast<size_t>(din) * dout));
    TESSERA_CUDA_TRY(ctx->gb[l].Reserve(dout));
    // dW (din x dout) = in^T (din x batch) dz (batch x dout).
    TESSERA_CUBLAS_TRY(cublasSgemm(ctx->blas, CUBLAS_OP_N, CUBLAS_OP_T, dout, din, batch, &one,
                                   ctx->dz.ptr, dout, layer_in, din, &zero, ctx->gw[l].ptr, dout));
    ColumnSums<<<Blocks(dout), kThreads>>>(ctx->dz.ptr, batch, dout, ctx->gb[l].ptr);
    if (l == 0 && !want_dx) break;
    // dh (batch x din) = dz (batch x dout) W^T (dout x din).
    Buffer<float>& target = l == 0 ? ctx->dx : ctx->dh;
    TESSERA_CUDA_TRY(target.Reserve(static_cast<size_t>(batch) * din));
    TESSERA_CUBLAS_TRY(cublasSgemm(ctx->blas, CUBLAS_OP_T, CUBLAS_OP_N, din, batch, dout, &one,
                                   ctx->w[l].ptr, dout, ctx->dz.ptr, dout, &zero, target.ptr, din));
    if (l == 0) break;
    ReluBackward<<<Blocks(static_cast<size_t>(batch) * din), kThreads>>>(
        ctx->z[l - 1].ptr, static_cast<size_t>(batch) * din, ctx->dh.ptr);
    std::swap(ctx->dz, ctx->dh);
  }
  TESSERA_CUDA_TRY(cudaGetLastError());
  for (uint32_t l = 0; l < layers; ++l) {
    TESSERA_CUDA_TRY(cudaMemcpy(gw[l], ctx->gw[l].ptr,
                                static_cast<size_t>(sizes[l]) * sizes[l + 1] * sizeof(float),
                                cudaMemcpyDeviceToHost));
    TESSERA_CUDA_TRY(
        cudaMemcpy(gb[l], ctx->gb[l].ptr, sizes[l + 1] * sizeof(float), cudaMemcpyDeviceToHost));
  }
  // The batch's loss and hits, summed on the host in example order (as the CPU path does).
  std::vector<double> losses(batch);
  std::vector<uint32_t> hits(batch);
  TESSERA_CUDA_TRY(
      cudaMemcpy(losses.data(), ctx->losses.ptr, batch * sizeof(double), cudaMemcpyDeviceToHost));
  TESSERA_CUDA_TRY(
      cudaMemcpy(hits.data(), ctx->correct.ptr, batch * sizeof(uint32_t), cudaMemcpyDeviceToHost));
  double sum = 0;
  uint32_t right = 0;
  for (uint32_t i = 0; i < batch; ++i) {
    sum += losses[i];
    right += hits[i];
  }
  *loss = sum / (batch > 0 ? batch : 1);
  *correct = right;
  return 0;
}

}  // namespace

NnContext* CreateNnContext(const char** message) { return NewBlasContext<NnContext>(message); }

void DestroyNnContext(NnContext* ctx) {
  if (ctx == nullptr) return;
  for (auto* v : {&ctx->w, &ctx->b, &ctx->gw, &ctx->gb, &ctx->z, &ctx->h}) {
    for (Buffer<float>& buf : *v) buf.Free();
  }
  for (Buffer<float>* buf :
       {&ctx->x, &ctx->dx, &ctx->dz, &ctx->dh, &ctx->rows, &ctx->dense, &ctx->emb_grads}) {
    buf->Free();
  }
  ctx->labels.Free();
  ctx->losses.Free();
  for (Buffer<uint32_t>* buf : {&ctx->correct, &ctx->row, &ctx->order_in, &ctx->order, &ctx->heads,
                                &ctx->runs, &ctx->key_rows}) {
    buf->Free();
  }
  ctx->keys.Free();
  ctx->sorted_keys.Free();
  ctx->unique.Free();
  ctx->temp.Free();
  if (ctx->blas != nullptr) cublasDestroy(ctx->blas);
  delete ctx;
}

int MlpForwardBackward(NnContext* ctx, uint32_t layers, const uint32_t* sizes,
                       const float* const* w, const float* const* b, const float* x,
                       const uint8_t* labels, uint32_t batch, float* const* gw, float* const* gb,
                       float* dx, double* loss, uint32_t* correct, const char** message) {
  *message = "ok";
  TESSERA_CUDA_TRY(Upload(ctx->x, x, static_cast<size_t>(batch) * sizes[0]));
  const int rc = MlpOnDevice(ctx, layers, sizes, w, b, ctx->x.ptr, labels, batch, gw, gb,
                             dx != nullptr, loss, correct, message);
  if (rc != 0 || dx == nullptr) return rc;
  TESSERA_CUDA_TRY(cudaMemcpy(dx, ctx->dx.ptr,
                              static_cast<size_t>(batch) * sizes[0] * sizeof(float),
                              cudaMemcpyDeviceToHost));
  return 0;
}

int EmbMlpForwardBackward(NnContext* ctx, uint32_t fields, uint32_t dim, uint32_t dense_width,
                          int interactions, uint32_t layers, const uint32_t* sizes,
                          const float* const* w, const float* const* b, const uint32_t* row,
                          uint32_t num_unique, const float* rows, const float* dense,
                          const uint8_t* labels, uint32_t batch, float* const* gw, float* const* gb,
                          float* emb_grads, double* loss, uint32_t* correct, const char** message) {
  *message = "ok";
  const size_t width = sizes[0];
  if (batch == 0) {
    for (size_t i = 0; i < static_cast<size_t>(num_unique) * dim; ++i) emb_grads[i] = 0;
    return MlpOnDevice(ctx, layers, sizes, w, b, nullptr, labels, 0, gw, gb, false, loss, correct,
                       message);
  }
  TESSERA_CUDA_TRY(Upload(ctx->row, row, static_cast<size_t>(batch) * fields));
  TESSERA_CUDA_TRY(Upload(ctx->rows, rows, static_cast<size_t>(num_unique) * dim));
  TESSERA_CUDA_TRY(Upload(ctx->dense, dense, static_cast<size_t>(batch) * dense_width));
  TESSERA_CUDA_TRY(ctx->x.Reserve(batch * width));
  Gather<<<Blocks(batch), kThreads>>>(ctx->row.ptr, ctx->rows.ptr, ctx->dense.ptr, batch, fields,
                                      dim, dense_width, interactions, width, ctx->x.ptr);
  TESSERA_CUDA_TRY(cudaGetLastError());
  const int rc = MlpOnDevice(ctx, layers, sizes, w, b, ctx->x.ptr, labels, batch, gw, gb,
                             /*want_dx=*/true, loss, correct, message);
  if (rc != 0) return rc;
  TESSERA_CUDA_TRY(ctx->emb_grads.Reserve(static_cast<size_t>(num_unique) * dim));
  TESSERA_CUDA_TRY(
      cudaMemset(ctx->emb_grads.ptr, 0, static_cast<size_t>(num_unique) * dim * sizeof(float)));
  const size_t threads = static_cast<size_t>(batch) * fields * dim;
  Scatter<<<Blocks(threads), kThreads>>>(ctx->row.ptr, ctx->x.ptr, ctx->dx.ptr, batch, fields, dim,
                                         interactions, width, ctx->emb_grads.ptr);
  TESSERA_CUDA_TRY(cudaGetLastError());
  TESSERA_CUDA_TRY(cudaMemcpy(emb_grads, ctx->emb_grads.ptr,
                              static_cast<size_t>(num_unique) * dim * sizeof(float),
                              cudaMemcpyDeviceToHost));
  return 0;
}

int UniqueKeys(NnContext* ctx, const uint64_t* keys, uint32_t n, uint64_t* unique, uint32_t* row,
               uint32_t* num_unique, const char** message) {
  *message = "ok";
  *num_unique = 0;
  if (n == 0) return 0;
  TESSERA_CUDA_TRY(Upload(ctx->keys, keys, n));
  TESSERA_CUDA_TRY(ctx->sorted_keys.Reserve(n));
  TESSERA_CUDA_TRY(ctx->order_in.Reserve(n));
  TESSERA_CUDA_TRY(ctx->order.Reserve(n));
  TESSERA_CUDA_TRY(ctx->heads.Reserve(n));
  TESSERA_CUDA_TRY(ctx->runs.Reserve(n));
  TESSERA_CUDA_TRY(ctx->unique.Reserve(n));
  TESSERA_CUDA_TRY(ctx->key_rows.Reserve(n));
  Iota<<<Blocks(n), kThreads>>>(n, ctx->order_in.ptr);
  // Sort (key, position) pairs; runs of equal keys are the distinct keys, in ascending order.
  size_t sort_bytes = 0, scan_bytes = 0;
  TESSERA_CUDA_TRY(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, ctx->keys.ptr,
                                                   ctx->sorted_keys.ptr, ctx->order_in.ptr,
                                                   ctx->order.ptr, static_cast<int>(n)));
  TESSERA_CUDA_TRY(cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, ctx->heads.ptr, ctx->runs.ptr,
                                                 static_cast<int>(n)));
  TESSERA_CUDA_TRY(ctx->temp.Reserve(sort_bytes > scan_bytes ? sort_bytes : scan_bytes));
  TESSERA_CUDA_TRY(cub::DeviceRadixSort::SortPairs(ctx->temp.ptr, sort_bytes, ctx->keys.ptr,
                                                   ctx->sorted_keys.ptr, ctx->order_in.ptr,
                                                   ctx->order.ptr, static_cast<int>(n)));
  RunHeads<<<Blocks(n), kThreads>>>(ctx->sorted_keys.ptr, n, ctx->heads.ptr);
  TESSERA_CUDA_TRY(cub::DeviceScan::InclusiveSum(ctx->temp.ptr, scan_bytes, ctx->heads.ptr,
                                                 ctx->runs.ptr, static_cast<int>(n)));
  RunOutputs<<<Blocks(n), kThreads>>>(ctx->sorted_keys.ptr, ctx->order.ptr, ctx->runs.ptr, n,
                                      ctx->unique.ptr, ctx->key_rows.ptr);
  TESSERA_CUDA_TRY(cudaGetLastError());
  uint32_t count = 0;
  TESSERA_CUDA_TRY(
      cudaMemcpy(&count, ctx->runs.ptr + (n - 1), sizeof(uint32_t), cudaMemcpyDeviceToHost));
  TESSERA_CUDA_TRY(
      cudaMemcpy(unique, ctx->unique.ptr, count * sizeof(uint64_t), cudaMemcpyDeviceToHost));
  TESSERA_CUDA_TRY(
      cudaMemcpy(row, ctx->key_rows.ptr, n * sizeof(uint32_t), cudaMemcpyDeviceToHost));
  *num_unique = count;
  return 0;
}

}  // namespace tessera::cuda
