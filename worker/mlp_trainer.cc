#include "worker/mlp_trainer.h"

#include <vector>

#include "absl/strings/str_format.h"

namespace tessera {

absl::StatusOr<MlpParams> PullMlpParams(Client& client, const MlpTrainOptions& o) {
  MlpParams p = MlpParams::Zeros(o.shape);
  const std::vector<TableConfig> tables = MlpTables(o);
  for (size_t l = 0; l < o.shape.num_layers(); ++l) {
    if (absl::Status s = client.PullDense(tables[2 * l].name, 0, absl::MakeSpan(p.w[l])); !s.ok()) {
      return s;
    }
    if (absl::Status s = client.PullDense(tables[2 * l + 1].name, 0, absl::MakeSpan(p.b[l]));
        !s.ok()) {
      return s;
    }
  }
  return p;
}

absl::StatusOr<MlpWorkerReport> TrainMlpWorker(Client& client, WorkerClock* clock,
                                               const IdxDataset& train, const MlpTrainOptions& o,
                                               uint32_t worker, uint32_t num_workers) {
  if (o.shape.sizes.size() < 2 || o.shape.sizes.front() != train.num_features ||
      o.shape.sizes.back() < train.num_classes || o.batch_size == 0 || num_workers == 0 ||
      worker >= num_workers) {
    return absl::InvalidArgumentError(
        absl::StrFormat("bad MLP worker setup: input %u vs %u features, worker %u of %u, batch %u",
                        o.shape.sizes.empty() ? 0 : o.shape.sizes.front(), train.num_features,
                        worker, num_workers, o.batch_size));
  }
  const std::vector<TableConfig> tables = MlpTables(o);
  for (const TableConfig& t : tables) {
    if (absl::StatusOr<TableConfig> r = client.CreateTable(t); !r.ok()) return r.status();
  }
  MlpWorkerReport report;
  MlpParams params = MlpParams::Zeros(o.shape), grads;
  MlpWorkspace ws;
  double loss_sum = 0;
  const uint32_t batches = train.num_examples / o.batch_size;
  for (int epoch = 0; epoch < o.epochs; ++epoch) {
    for (uint32_t k = worker; k < batches; k += num_workers) {
      if (clock != nullptr) {
        if (absl::StatusOr<JobProgress> p = clock->WaitToStart(); !p.ok()) return p.status();
      }
      absl::StatusOr<MlpParams> pulled = PullMlpParams(client, o);
      if (!pulled.ok()) return pulled.status();
      params = *std::move(pulled);
      const size_t start = size_t{k} * o.batch_size;
      loss_sum +=
          MlpForwardBackward(o.shape, params, train.features.data() + start * train.num_features,
                             train.labels.data() + start, o.batch_size, &grads, &ws)
              .loss;
      for (size_t l = 0; l < o.shape.num_layers(); ++l) {
        if (absl::Status s = client.PushDense(tables[2 * l].name, 0, grads.w[l]); !s.ok()) {
          return s;
        }
        if (absl::Status s = client.PushDense(tables[2 * l + 1].name, 0, grads.b[l]); !s.ok()) {
          return s;
        }
      }
      ++report.steps;
      if (clock != nullptr) {
        if (absl::Status s = clock->Finish(); !s.ok()) return s;
      }
    }
  }
  report.train_loss = report.steps > 0 ? loss_sum / report.steps : 0;
  return report;
}

}  // namespace tessera
