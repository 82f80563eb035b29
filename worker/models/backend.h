// The compute backends of the MLP and CTR models (docs/worker.md): the CPU (OpenBLAS) and the
// GPU (cuBLAS and CUDA kernels in libtessera_cuda.so, CUB for distinct keys) run the same math;
// nn_gpu_test.cc compares them. Chosen once at start.
#ifndef TESSERA_WORKER_BACKEND_H_
#define TESSERA_WORKER_BACKEND_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/models/emb_mlp.h"
#include "worker/models/mlp.h"

namespace tessera {

// Thread-compatible: one per training loop.
class NnBackend {
 public:
  virtual ~NnBackend() = default;
  virtual std::string name() const = 0;  // "cpu" or "gpu"

  // MlpForwardBackward's contract.
  virtual absl::StatusOr<MlpBatchStats> MlpForwardBackward(const MlpShape& shape,
                                                           const MlpParams& params, const float* x,
                                                           const uint8_t* labels, uint32_t batch,
                                                           MlpParams* grads,
                                                           float* dx = nullptr) = 0;
  // EmbMlpForwardBackward's contract.
  virtual absl::StatusOr<MlpBatchStats> EmbMlpForwardBackward(
      const EmbMlpShape& shape, const MlpParams& params, const BatchKeys& keys, const float* rows,
      const float* dense, const uint8_t* labels, uint32_t batch, MlpParams* grads,
      std::vector<float>* emb_grads) = 0;
  // The distinct keys and each key's row. The order of `unique` is the backend's (CPU: first
  // use; GPU: ascending); every caller goes through `row`.
  virtual absl::StatusOr<BatchKeys> UniqueKeys(const uint64_t* keys, size_t n) = 0;
};

std::unique_ptr<NnBackend> MakeCpuBackend();
// UNAVAILABLE ("no GPU: <why>") without CUDA, a device or libtessera_cuda.so.
absl::StatusOr<std::unique_ptr<NnBackend>> MakeGpuBackend();

}  // namespace tessera

#endif  // TESSERA_WORKER_BACKEND_H_
