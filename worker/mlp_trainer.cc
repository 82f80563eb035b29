#include "worker/mlp_trainer.h"

#include <vector>

#include "absl/strings/str_format.h"
#include "common/logging.h"

namespace tessera {

absl::StatusOr<MlpParams> PullMlpParams(Client& client, const MlpTrainOptions& o) {
  MlpParams p = MlpParams::Zeros(o.shape);
  const std::vector<TableConfig> tables = MlpTables(o);
  CallGroup group;
  for (size_t l = 0; l < o.shape.num_layers(); ++l) {
    group.Add(client.PullDenseAsync(tables[2 * l].name, 0, absl::MakeSpan(p.w[l])));
    group.Add(client.PullDenseAsync(tables[2 * l + 1].name, 0, absl::MakeSpan(p.b[l])));
  }
  if (absl::Status s = group.Wait(); !s.ok()) return s;
  return p;
}

MlpStepModel::MlpStepModel(const IdxDataset& train, const MlpTrainOptions& options,
                           std::unique_ptr<NnBackend> backend)
    : train_(train),
      options_(options),
      tables_(MlpTables(options)),
      backend_(backend != nullptr ? std::move(backend) : MakeCpuBackend()) {
  for (MlpParams& p : params_) p = MlpParams::Zeros(options.shape);
}

uint32_t MlpStepModel::NumBatches() const {
  return options_.batch_size == 0 ? 0 : train_.num_examples / options_.batch_size;
}

void MlpStepModel::Pull(Client& client, uint32_t, int slot, CallGroup& group) {
  MlpParams& p = params_[slot];
  for (size_t l = 0; l < options_.shape.num_layers(); ++l) {
    group.Add(client.PullDenseAsync(tables_[2 * l].name, 0, absl::MakeSpan(p.w[l])));
    group.Add(client.PullDenseAsync(tables_[2 * l + 1].name, 0, absl::MakeSpan(p.b[l])));
  }
}

double MlpStepModel::Compute(uint32_t batch, int slot) {
  const size_t start = size_t{batch} * options_.batch_size;
  const float* x = train_.features.data() + start * train_.num_features;
  const uint8_t* labels = train_.labels.data() + start;
  absl::StatusOr<MlpBatchStats> stats = backend_->MlpForwardBackward(
      options_.shape, params_[slot], x, labels, options_.batch_size, &grads_);
  if (!stats.ok()) {  // a failing device is no reason to stop: the CPU computes the same
    LogWarning("%s; continuing on the CPU", stats.status().ToString());
    backend_ = MakeCpuBackend();
    stats = backend_->MlpForwardBackward(options_.shape, params_[slot], x, labels,
                                         options_.batch_size, &grads_);
  }
  return stats->loss;
}

void MlpStepModel::Push(Client& client, const PushOptions& push, float scale, CallGroup& group) {
  for (size_t l = 0; l < options_.shape.num_layers(); ++l) {
    if (scale != 1.0f) {
      for (float& g : grads_.w[l]) g *= scale;
      for (float& g : grads_.b[l]) g *= scale;
    }
    group.Add(client.PushDenseAsync(tables_[2 * l].name, 0, grads_.w[l], push));
    group.Add(client.PushDenseAsync(tables_[2 * l + 1].name, 0, grads_.b[l], push));
  }
}

absl::StatusOr<WorkerReport> TrainMlpWorker(Client& client, WorkerClock* clock,
                                            const IdxDataset& train, const MlpTrainOptions& o,
                                            TrainLoopOptions loop,
                                            const std::function<void(const StepReport&)>& on_step) {
  if (o.shape.sizes.size() < 2 || o.shape.sizes.front() != train.num_features ||
      o.shape.sizes.back() < train.num_classes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("bad MLP setup: input %u vs %u features, %u outputs vs %u classes",
                        o.shape.sizes.empty() ? 0 : o.shape.sizes.front(), train.num_features,
                        o.shape.sizes.empty() ? 0 : o.shape.sizes.back(), train.num_classes));
  }
  MlpStepModel model(train, o);
  loop.epochs = o.epochs;
  return RunTrainLoop(client, clock, model, loop, on_step);
}

}  // namespace tessera
