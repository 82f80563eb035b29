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
#include "worker/idx.h"
#include "worker/mlp_reference.h"

namespace tessera {

// One step of a worker, for progress lines and metrics.
struct MlpStepReport {
  uint64_t step = 0;  // this worker's steps so far
  double loss = 0;    // of this step's batch
  uint32_t samples = 0;
  double wait_s = 0;  // clock waits (consistency)
  double pull_s = 0;
  double compute_s = 0;
  double push_s = 0;       // pushes, and applying the step (BSP leader)
  uint64_t staleness = 0;  // this worker's clock minus the slowest live worker's
};

struct MlpWorkerReport {
  uint64_t steps = 0;     // this worker's steps so far
  double train_loss = 0;  // mean over those steps
};

// Creates the model's tables (idempotent: every worker may), then trains on the batches of
// `train` whose index is worker (mod num_workers), epoch after epoch, in order: with one worker
// this is exactly TrainMlpReference's sequence. `clock` may be null (no coordination).
absl::StatusOr<MlpWorkerReport> TrainMlpWorker(
    Client& client, WorkerClock* clock, const IdxDataset& train, const MlpTrainOptions& options,
    uint32_t worker, uint32_t num_workers,
    const std::function<void(const MlpStepReport&)>& on_step = nullptr);

// The parameters the cluster holds now.
absl::StatusOr<MlpParams> PullMlpParams(Client& client, const MlpTrainOptions& options);

}  // namespace tessera

#endif  // TESSERA_WORKER_MLP_TRAINER_H_
