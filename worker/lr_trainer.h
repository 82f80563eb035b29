// Sparse logistic regression as a StepModel (worker/train_loop.h): one sparse table of weights
// (dim 1), binary features, the forward/backward pass on the CPU or the GPU (worker/lr_kernels.h,
// identical semantics, chosen at start).
#ifndef TESSERA_WORKER_LR_TRAINER_H_
#define TESSERA_WORKER_LR_TRAINER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/data/text_data.h"
#include "worker/models/lr_kernels.h"
#include "worker/train_loop.h"

namespace tessera {

struct LrModelOptions {
  OptimizerConfig optimizer = {.kind = OptimizerKind::kAdagrad, .learning_rate = 0.1f};
  uint32_t batch_size = 512;
  std::string table = "lr.w";
};

// INVALID_ARGUMENT unless every feature value is 1 (the model takes binary features) and every
// label is 0 or 1.
absl::Status CheckLrData(const SparseDataset& data);

class LrStepModel : public StepModel {
 public:
  // `gpu` null: the CPU path. REQUIRES: CheckLrData(train).ok().
  LrStepModel(const SparseDataset& train, const LrModelOptions& options,
              std::unique_ptr<LrGpu> gpu);

  std::vector<TableConfig> Tables() const override;
  uint32_t NumBatches() const override;
  uint32_t BatchSize() const override { return options_.batch_size; }
  absl::Status Prepare(uint32_t batch, int slot) override;
  void Pull(Client& client, uint32_t batch, int slot, CallGroup& group) override;
  double Compute(uint32_t batch, int slot) override;
  void Push(Client& client, const PushOptions& options, float scale, CallGroup& group) override;

 private:
  struct Slot {
    std::vector<uint64_t> keys;  // the batch's distinct keys
    LrBatch batch;
    std::vector<float> weights;
  };
  friend absl::StatusOr<double> LrAuc(Client& client, const LrModelOptions& options,
                                      const SparseDataset& test);
  // Fills slot's keys and batch from examples [start, start + n) of `data`.
  static void Layout(const SparseDataset& data, size_t start, uint32_t n, Slot& slot);

  const SparseDataset& train_;
  const LrModelOptions options_;
  std::unique_ptr<LrGpu> gpu_;
  Slot slots_[2];
  int computed_ = 0;
  std::vector<float> grads_;
};

// Test AUC of the weights the cluster holds now.
absl::StatusOr<double> LrAuc(Client& client, const LrModelOptions& options,
                             const SparseDataset& test);

}  // namespace tessera

#endif  // TESSERA_WORKER_LR_TRAINER_H_
