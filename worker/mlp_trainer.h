// One data-parallel worker training the MLP classifier against a Tessera cluster: each step
// waits for its clock (BSP / SSP / async), pulls the parameters, computes the gradients of its
// batch on the CPU and pushes them; the servers apply the optimizer (docs/worker.md).
#ifndef TESSERA_WORKER_MLP_TRAINER_H_
#define TESSERA_WORKER_MLP_TRAINER_H_

#include <cstdint>
#include <functional>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "client/worker_clock.h"
#include "worker/data/idx.h"
#include "worker/models/backend.h"
#include "worker/models/mlp_reference.h"
#include "worker/train_loop.h"

namespace tessera {

// The MLP classifier as a StepModel: batch k is examples [k * batch, (k + 1) * batch) of
// `train`; every step pulls all layers and pushes their gradients. With one worker and BSP this
// is exactly TrainMlpReference's sequence.
class MlpStepModel : public StepModel {
 public:
  // `backend` null: the CPU.
  MlpStepModel(const IdxDataset& train, const MlpTrainOptions& options,
               std::unique_ptr<NnBackend> backend = nullptr);

  std::vector<TableConfig> Tables() const override { return tables_; }
  uint32_t NumBatches() const override;
  uint32_t BatchSize() const override { return options_.batch_size; }
  void Pull(Client& client, uint32_t batch, int slot, CallGroup& group) override;
  double Compute(uint32_t batch, int slot) override;
  void Push(Client& client, const PushOptions& options, float scale, CallGroup& group) override;

 private:
  const IdxDataset& train_;
  const MlpTrainOptions options_;
  const std::vector<TableConfig> tables_;
  MlpParams params_[2];
  MlpParams grads_;
  std::unique_ptr<NnBackend> backend_;
};

// Trains through RunTrainLoop for options.epochs (loop.epochs is ignored).
absl::StatusOr<WorkerReport> TrainMlpWorker(
    Client& client, WorkerClock* clock, const IdxDataset& train, const MlpTrainOptions& options,
    TrainLoopOptions loop, const std::function<void(const StepReport&)>& on_step = nullptr);

// The parameters the cluster holds now.
absl::StatusOr<MlpParams> PullMlpParams(Client& client, const MlpTrainOptions& options);

}  // namespace tessera

#endif  // TESSERA_WORKER_MLP_TRAINER_H_
