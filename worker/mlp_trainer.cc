#include "worker/mlp_trainer.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

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

absl::StatusOr<MlpWorkerReport> TrainMlpWorker(
    Client& client, WorkerClock* clock, const IdxDataset& train, const MlpTrainOptions& o,
    uint32_t worker, uint32_t num_workers,
    const std::function<void(const MlpStepReport&)>& on_step) {
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
  // BSP aggregates each step's gradients on the servers: every worker pushes into the step's
  // sums (clock 2s - 1: "pushed"), the lowest live worker applies the step once with the mean
  // (clock 2s: "applied"); the next step starts when every worker is at 2s.
  const bool aggregate = clock != nullptr && clock->options().mode == ConsistencyMode::kBsp;
  MlpWorkerReport report;
  MlpParams params = MlpParams::Zeros(o.shape), grads;
  MlpWorkspace ws;
  double loss_sum = 0;
  const uint32_t batches = train.num_examples / o.batch_size;
  for (int epoch = 0; epoch < o.epochs; ++epoch) {
    for (uint32_t k = worker; k < batches; k += num_workers) {
      MlpStepReport r;
      absl::Time t0 = absl::Now();
      JobProgress progress;
      if (clock != nullptr) {
        absl::StatusOr<JobProgress> p = clock->WaitToStart();
        if (!p.ok()) return p.status();
        progress = *std::move(p);
        r.staleness = clock->clock() - std::min(clock->clock(), progress.min_clock);
      }
      absl::Time t1 = absl::Now();
      r.wait_s = absl::ToDoubleSeconds(t1 - t0);
      const uint64_t step = aggregate ? clock->clock() / 2 + 1 : 0;
      PushOptions push;
      push.accumulate_step = step;
      absl::StatusOr<MlpParams> pulled = PullMlpParams(client, o);
      if (!pulled.ok()) return pulled.status();
      params = *std::move(pulled);
      t0 = absl::Now();
      r.pull_s = absl::ToDoubleSeconds(t0 - t1);
      const size_t start = size_t{k} * o.batch_size;
      r.loss =
          MlpForwardBackward(o.shape, params, train.features.data() + start * train.num_features,
                             train.labels.data() + start, o.batch_size, &grads, &ws)
              .loss;
      loss_sum += r.loss;
      t1 = absl::Now();
      r.compute_s = absl::ToDoubleSeconds(t1 - t0);
      for (size_t l = 0; l < o.shape.num_layers(); ++l) {
        if (absl::Status s = client.PushDense(tables[2 * l].name, 0, grads.w[l], push); !s.ok()) {
          return s;
        }
        if (absl::Status s = client.PushDense(tables[2 * l + 1].name, 0, grads.b[l], push);
            !s.ok()) {
          return s;
        }
      }
      ++report.steps;
      if (clock != nullptr) {
        if (absl::Status s = clock->Finish(); !s.ok()) return s;  // (BSP: "pushed")
      }
      if (aggregate) {
        uint32_t leader = 0;
        while (std::find(progress.dead_workers.begin(), progress.dead_workers.end(), leader) !=
               progress.dead_workers.end()) {
          ++leader;
        }
        if (worker == leader) {
          absl::StatusOr<JobProgress> pushed = clock->WaitToStart();  // every worker pushed
          if (!pushed.ok()) return pushed.status();
          const float scale = 1.0f / std::max<uint32_t>(pushed->live_workers, 1);
          for (const TableConfig& t : tables) {
            if (absl::Status s = client.ApplyStep(t.name, step, scale); !s.ok()) return s;
          }
        }
        if (absl::Status s = clock->Finish(); !s.ok()) return s;  // "applied" (the leader's)
      }
      r.push_s = absl::ToDoubleSeconds(absl::Now() - t1);
      r.step = report.steps;
      r.samples = o.batch_size;
      if (on_step) on_step(r);
    }
  }
  report.train_loss = report.steps > 0 ? loss_sum / report.steps : 0;
  return report;
}

}  // namespace tessera
