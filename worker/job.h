// A tessera-worker job: the model, data and training-loop options a JobConfig describes
// (proto/job.proto), ready for RunTrainLoop. Kept apart from the daemon so tests can run jobs
// in-process.
#ifndef TESSERA_WORKER_JOB_H_
#define TESSERA_WORKER_JOB_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "worker/train_loop.h"

namespace tessera {
namespace v1 {
class JobConfig;
}

struct ParameterReader;  // worker/ctr_trainer.h

struct PreparedJob {
  std::shared_ptr<const void> data;  // what the model reads (declared first: outlives it)
  std::unique_ptr<StepModel> model;
  TrainLoopOptions loop;    // epochs, prefetch, decay; the caller sets worker and num_workers
  std::string description;  // e.g. "MLP 784-256-10 on 60000 examples, batch 128"
  std::string backend;      // "cpu" or "gpu"
  // Worker 0's evaluation of what the cluster holds, e.g. "test accuracy 0.8712 (10000
  // examples)"; null when the job has no evaluation set.
  std::function<absl::StatusOr<std::string>(Client&)> evaluate;
  // The CTR model's test AUC with the parameters a reader gives (worker/ctr_trainer.h): the
  // cluster's, or a serving replica's at one version. Null for other jobs.
  std::function<absl::StatusOr<double>(const ParameterReader&)> test_auc;
};

// Loads the data and builds the model. INVALID_ARGUMENT (naming the field) for a config that
// does not make sense, NOT_FOUND / DATA_LOSS from the readers, UNAVAILABLE for backend GPU
// without a device. Logs the backend choice.
// Worker `worker` of `num_workers` (a Criteo training file is parsed only where this worker's
// batches are).
absl::StatusOr<PreparedJob> PrepareJob(const v1::JobConfig& config, uint32_t worker = 0,
                                       uint32_t num_workers = 1);

// Parses a JobConfig in protobuf text format; errors name the file, line and column.
absl::StatusOr<std::unique_ptr<v1::JobConfig>> LoadJobConfig(const std::string& path);

}  // namespace tessera

#endif  // TESSERA_WORKER_JOB_H_
