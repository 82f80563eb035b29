// The MLP classifier's tables on the servers, and the reference path: the same model trained
// without any server, with the servers' own initializer and optimizer code. BSP with one
// worker must reproduce it (docs/worker.md).
#ifndef TESSERA_WORKER_MLP_REFERENCE_H_
#define TESSERA_WORKER_MLP_REFERENCE_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/table_config.h"
#include "worker/data/idx.h"
#include "worker/models/mlp.h"

namespace tessera {

struct MlpTrainOptions {
  MlpShape shape;
  OptimizerConfig optimizer = {.kind = OptimizerKind::kAdam, .learning_rate = 1e-3f};
  uint32_t batch_size = 128;
  int epochs = 2;
  uint64_t seed = 1;           // initial weights
  std::string prefix = "mlp";  // table names: <prefix>.w<l>, <prefix>.b<l>
};

// Per layer l: dense table "<prefix>.w<l>" (sizes[l] x sizes[l+1], normal with stddev
// sqrt(2 / sizes[l]) (He), seed + l) and "<prefix>.b<l>" (zeros), both with the optimizer.
std::vector<TableConfig> MlpTables(const MlpTrainOptions& options);

// The initial parameters those tables hold.
absl::StatusOr<MlpParams> MlpInitialParams(const MlpTrainOptions& options);

struct MlpEpochReport {
  int epoch = 0;
  double train_loss = 0;  // mean over the epoch's batches
  double test_accuracy = 0;
};

struct MlpReferenceResult {
  MlpParams params;
  std::vector<MlpEpochReport> epochs;
};

// Trains on `train` in order (batch k of an epoch = examples [k * batch, (k + 1) * batch)),
// evaluating on `test` after every epoch.
absl::StatusOr<MlpReferenceResult> TrainMlpReference(
    const IdxDataset& train, const IdxDataset& test, const MlpTrainOptions& options,
    const std::function<void(const MlpEpochReport&)>& on_epoch = nullptr);

// Test-set accuracy of `params`.
double MlpAccuracy(const MlpShape& shape, const MlpParams& params, const IdxDataset& data);

}  // namespace tessera

#endif  // TESSERA_WORKER_MLP_REFERENCE_H_
