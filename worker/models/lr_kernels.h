// Forward and backward pass of sparse logistic regression over one batch, on the CPU and (when
// built with CUDA and a device is present) on the GPU, with the same semantics: see
// lr_kernels_test.cc, which fails if the two disagree.
#ifndef TESSERA_WORKER_LR_KERNELS_H_
#define TESSERA_WORKER_LR_KERNELS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace tessera {

// One batch in CSR form over the batch's distinct keys: sample i's active features are the
// distinct-key slots slots[offsets[i], offsets[i + 1]) (each with value 1).
struct LrBatch {
  std::vector<uint32_t> offsets;  // num_samples + 1
  std::vector<uint32_t> slots;    // indices into the batch's distinct keys
  std::vector<float> labels;      // 0 or 1, one per sample
  uint32_t num_keys = 0;          // distinct keys in the batch

  size_t num_samples() const { return labels.size(); }
};

// Given the weights of the batch's distinct keys, writes the gradient of the batch's mean
// log-loss for each distinct key into grads (overwritten) and returns the mean log-loss.
// REQUIRES: weights.size() == grads.size() == batch.num_keys.
double LrForwardBackwardCpu(const LrBatch& batch, absl::Span<const float> weights,
                            absl::Span<float> grads);

// The GPU path. Thread-compatible (one per worker thread).
class LrGpu {
 public:
  // UNAVAILABLE when Tessera was built without CUDA or no device is present.
  static absl::StatusOr<std::unique_ptr<LrGpu>> Create();
  virtual ~LrGpu() = default;
  virtual absl::StatusOr<double> ForwardBackward(const LrBatch& batch,
                                                 absl::Span<const float> weights,
                                                 absl::Span<float> grads) = 0;
};

// Number of CUDA devices, 0 without CUDA or devices; *why (optional) says why there are none.
int CudaDeviceCount(std::string* why = nullptr);

}  // namespace tessera

#endif  // TESSERA_WORKER_LR_KERNELS_H_
