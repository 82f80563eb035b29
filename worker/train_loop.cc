#include "worker/train_loop.h"

#include <algorithm>
#include <future>
#include <utility>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace tessera {

namespace {

double SecondsSince(absl::Time t) { return absl::ToDoubleSeconds(absl::Now() - t); }

// The lowest worker index the coordinator does not count as dead: it applies BSP steps.
uint32_t Leader(const JobProgress& progress) {
  uint32_t leader = 0;
  while (std::find(progress.dead_workers.begin(), progress.dead_workers.end(), leader) !=
         progress.dead_workers.end()) {
    ++leader;
  }
  return leader;
}

}  // namespace

absl::StatusOr<WorkerReport> RunTrainLoop(Client& client, WorkerClock* clock, StepModel& model,
                                          const TrainLoopOptions& o,
                                          const std::function<void(const StepReport&)>& on_step) {
  if (o.num_workers == 0 || o.worker >= o.num_workers || model.BatchSize() == 0 ||
      model.NumBatches() < o.num_workers) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "bad worker setup: worker %u of %u, batch size %u, %u batches per epoch (at least one "
        "per worker needed)",
        o.worker, o.num_workers, model.BatchSize(), model.NumBatches()));
  }
  const std::vector<TableConfig> tables = model.Tables();
  for (const TableConfig& t : tables) {
    if (absl::StatusOr<TableConfig> r = client.CreateTable(t); !r.ok()) return r.status();
  }
  const ConsistencyMode mode = clock != nullptr ? clock->options().mode : ConsistencyMode::kAsync;
  // BSP aggregates each step's gradients on the servers: every worker pushes into the step's
  // sums (clock 2s - 1: "pushed"), the lowest live worker applies the step once with the mean
  // (clock 2s: "applied"); the next step starts when every worker is at 2s.
  const bool aggregate = mode == ConsistencyMode::kBsp;
  const bool prefetch =
      o.prefetch && (mode == ConsistencyMode::kAsync ||
                     (mode == ConsistencyMode::kSsp && clock->options().staleness >= 1));
  std::vector<uint32_t> order;
  for (int epoch = 0; epoch < o.epochs; ++epoch) {
    // Every worker runs the same number of steps (the last NumBatches % num_workers batches of
    // an epoch are left out), so that BSP barriers and the end of the job line up.
    const uint32_t per_worker = model.NumBatches() / o.num_workers;
    for (uint32_t j = 0; j < per_worker; ++j) order.push_back(o.worker + j * o.num_workers);
  }
  if (o.max_steps > 0 && order.size() > o.max_steps) order.resize(o.max_steps);

  // Declared before anything the pulls write into outlives them: the groups' destructors wait.
  CallGroup pulls[2];
  CallGroup pushes;
  WorkerReport report;
  double loss_sum = 0;
  int slot = 0;
  bool pulled_ahead = false;  // order[i]'s pull was issued during step i - 1
  JobProgress progress;
  // Prepare(order[i + 1], other slot) running beside step i; its destructor waits.
  std::future<absl::Status> next_prepared;
  for (size_t i = 0; i < order.size(); ++i) {
    StepReport r;
    absl::Time t = absl::Now();
    if (!pulled_ahead) {
      if (clock != nullptr) {
        absl::StatusOr<JobProgress> p = clock->WaitToStart();
        if (!p.ok()) return p.status();
        progress = *std::move(p);
      }
      absl::Status prepared =
          next_prepared.valid() ? next_prepared.get() : model.Prepare(order[i], slot);
      if (!prepared.ok()) return prepared;
      model.Pull(client, order[i], slot, pulls[slot]);
    }
    if (clock != nullptr)
      r.staleness = clock->clock() - std::min(clock->clock(), progress.min_clock);
    JobProgress step_progress = progress;
    pulled_ahead = prefetch && i + 1 < order.size();
    if (pulled_ahead) {
      if (clock != nullptr) {  // the next step's bound holds before its parameters are read
        absl::StatusOr<JobProgress> p = clock->WaitFor(clock->clock() + 2);
        if (!p.ok()) return p.status();
        progress = *std::move(p);
      }
      if (absl::Status s = model.Prepare(order[i + 1], slot ^ 1); !s.ok()) return s;
      model.Pull(client, order[i + 1], slot ^ 1, pulls[slot ^ 1]);
    } else if (i + 1 < order.size()) {
      next_prepared = std::async(
          std::launch::async,
          [&model, batch = order[i + 1], other = slot ^ 1] { return model.Prepare(batch, other); });
    }
    r.wait_s = SecondsSince(t);
    t = absl::Now();
    if (absl::Status s = pulls[slot].Wait(); !s.ok()) return s;
    r.pull_s = SecondsSince(t);
    t = absl::Now();
    r.loss = model.Compute(order[i], slot);
    loss_sum += r.loss;
    r.compute_s = SecondsSince(t);
    t = absl::Now();
    const uint64_t step = aggregate ? clock->clock() / 2 + 1 : 0;
    const float scale =
        1.0f - (1.0f - o.final_gradient_scale) * static_cast<float>(i) / order.size();
    // (The step also dates the rows of tables whose TTL counts steps: BSP's step, else this
    // worker's count of steps.)
    model.Push(client,
               PushOptions{.accumulate_step = step, .step = step != 0 ? step : report.steps + 1},
               scale, pushes);
    if (absl::Status s = pushes.Wait(); !s.ok()) return s;
    ++report.steps;
    if (clock != nullptr) {
      if (absl::Status s = clock->Finish(); !s.ok()) return s;  // (BSP: "pushed")
    }
    if (aggregate) {
      if (o.worker == Leader(step_progress)) {
        absl::StatusOr<JobProgress> pushed = clock->WaitToStart();  // every worker pushed
        if (!pushed.ok()) return pushed.status();
        const float scale = 1.0f / std::max<uint32_t>(pushed->live_workers, 1);
        for (const TableConfig& table : tables) {
          if (absl::Status s = client.ApplyStep(table.name, step, scale); !s.ok()) return s;
        }
      }
      if (absl::Status s = clock->Finish(); !s.ok()) return s;  // "applied" (the leader's)
    }
    r.push_s = SecondsSince(t);
    r.step = report.steps;
    r.samples = model.BatchSize();
    if (on_step) on_step(r);
    slot ^= 1;
  }
  report.train_loss = report.steps > 0 ? loss_sum / report.steps : 0;
  return report;
}

}  // namespace tessera
