// The embedding + MLP CTR model (worker/emb_mlp.h) trained through a Tessera cluster: the
// embeddings of every categorical field in one sparse table (keys are per-field, so fields
// never share rows), the MLP's layers in dense tables, optimizers on the servers.
#ifndef TESSERA_WORKER_CTR_TRAINER_H_
#define TESSERA_WORKER_CTR_TRAINER_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/data/text_data.h"
#include "worker/models/backend.h"
#include "worker/models/emb_mlp.h"
#include "worker/train_loop.h"

namespace tessera {

struct CtrTrainOptions {
  EmbMlpShape shape;
  // Adagrad everywhere by default: per-coordinate steps suit rare keys.
  OptimizerConfig optimizer = {.kind = OptimizerKind::kAdagrad, .learning_rate = 0.05f};
  std::optional<OptimizerConfig> embedding_optimizer;  // the embedding table's; unset: optimizer
  LifecycleConfig embedding_lifecycle;                 // the embedding table's; default: none
  float embedding_stddev = 0.05f;                      // initial embeddings ~ normal(0, stddev)
  uint32_t batch_size = 256;
  int epochs = 3;
  uint64_t seed = 1;
  std::string prefix = "ctr";  // tables <prefix>.emb, <prefix>.w<l>, <prefix>.b<l>
};

// The sparse embedding table, then the MLP's tables (as MlpTables).
std::vector<TableConfig> CtrTables(const CtrTrainOptions& options);

// INVALID_ARGUMENT unless every example of `data` has exactly shape.fields keys (in field
// order) and shape.dense dense features. (Data still being read: CtrStepModel::Prepare checks
// each batch's examples as it gets to them; pass check_examples = false.)
absl::Status CheckCtrData(const SparseDataset& data, const EmbMlpShape& shape,
                          bool check_examples = true);

// Where an evaluation reads the model's parameters: pulls from the training cluster, or
// lookups of a serving replica at one version (docs/online_serving.md). Both answer a key
// without a row with the table's initializer values, so the same parameters give the same
// scores bit for bit.
struct ParameterReader {
  std::function<absl::Status(const std::string& table, absl::Span<const uint64_t> keys,
                             absl::Span<float> rows)>
      sparse;
  std::function<absl::Status(const std::string& table, absl::Span<float> values)> dense;
};
class CtrStepModel : public StepModel {
 public:
  // REQUIRES: CheckCtrData(train, options.shape).ok(). `backend` computes, `key_backend`
  // finds each batch's distinct keys (in Prepare, which may run beside Compute: so two
  // backends); null: the CPU.
  CtrStepModel(const SparseDataset& train, const CtrTrainOptions& options,
               std::unique_ptr<NnBackend> backend = nullptr,
               std::unique_ptr<NnBackend> key_backend = nullptr);

  std::vector<TableConfig> Tables() const override { return tables_; }
  uint32_t NumBatches() const override;
  uint32_t BatchSize() const override { return options_.batch_size; }
  absl::Status Prepare(uint32_t batch, int slot) override;
  void Pull(Client& client, uint32_t batch, int slot, CallGroup& group) override;
  double Compute(uint32_t batch, int slot) override;
  void Push(Client& client, const PushOptions& options, float scale, CallGroup& group) override;

 private:
  struct Slot {
    BatchKeys keys;
    std::vector<float> rows;  // keys.unique x dim
    MlpParams params;
  };

  friend absl::StatusOr<double> CtrAuc(const ParameterReader& reader,
                                       const CtrTrainOptions& options, const SparseDataset& test);
  void PrepareKeys(const uint64_t* keys, uint32_t n, Slot& slot);
  void PullSlot(Client& client, Slot& slot, CallGroup& group);

  const SparseDataset& train_;
  const CtrTrainOptions options_;
  const std::vector<TableConfig> tables_;
  Slot slots_[2];
  int computed_ = 0;  // the slot whose gradients are in grads_ / emb_grads_
  MlpParams grads_;
  std::vector<float> emb_grads_;
  std::vector<uint8_t> labels_;
  std::unique_ptr<NnBackend> backend_;  // Compute's
  std::unique_ptr<NnBackend> keys_;     // Prepare's
};

// Pulls from `client`.
ParameterReader PullsFrom(Client& client);

// The model's test AUC with the parameters `reader` gives: the MLP's tables read once, then the
// embeddings of each batch of test examples.
absl::StatusOr<double> CtrAuc(const ParameterReader& reader, const CtrTrainOptions& options,
                              const SparseDataset& test);
// With the parameters the cluster holds now.
absl::StatusOr<double> CtrAuc(Client& client, const CtrTrainOptions& options,
                              const SparseDataset& test);

}  // namespace tessera

#endif  // TESSERA_WORKER_CTR_TRAINER_H_
