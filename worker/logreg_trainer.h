// Data-parallel sparse logistic regression against a Tessera cluster: several worker threads
// each pull the weights of their batch's distinct keys, compute gradients (CPU or GPU) and push
// them; the servers apply the optimizer. Used by `tessera local`.
#ifndef TESSERA_WORKER_LOGREG_TRAINER_H_
#define TESSERA_WORKER_LOGREG_TRAINER_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "common/table_config.h"
#include "worker/data/synthetic.h"

namespace tessera {

struct LrTrainOptions {
  std::string table = "lr_weights";
  int threads = 4;            // worker threads, each with its own slice of the data
  uint32_t batch_size = 512;  // samples per step
  int epochs = 2;             // passes over the training set
  bool use_gpu = false;       // forward/backward on the GPU (needs a device)
  absl::Duration report_every = absl::Seconds(1);
  OptimizerConfig optimizer = {.kind = OptimizerKind::kAdagrad, .learning_rate = 0.1f};
};

struct LrProgress {
  uint64_t steps = 0;  // batches pushed so far, all threads
  uint64_t samples = 0;
  double train_loss = 0;  // mean batch loss since the previous report
  double keys_per_s = 0;  // keys pulled + pushed per second since the previous report
  double elapsed_s = 0;
};

struct LrTrainResult {
  LrEval before;   // test set, before training
  LrEval after;    // test set, after training
  LrEval planted;  // test set, the planted model
  uint64_t steps = 0;
  uint64_t keys_moved = 0;
  double seconds = 0;
};

// Creates the weights table (sparse, dim 1, zeros), trains, and evaluates. on_progress runs
// every report_every on a reporting thread.
absl::StatusOr<LrTrainResult> TrainLogisticRegression(
    Client& client, const PlantedLrProblem& problem, const LrTrainOptions& options,
    const std::function<void(const LrProgress&)>& on_progress);

}  // namespace tessera

#endif  // TESSERA_WORKER_LOGREG_TRAINER_H_
