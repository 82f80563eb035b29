#include "worker/logreg_trainer.h"

#include <algorithm>
#include <atomic>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "worker/models/lr_kernels.h"

namespace tessera {
namespace {

// Counters shared by the worker threads and the reporter.
struct SharedStats {
  std::atomic<uint64_t> steps{0};
  std::atomic<uint64_t> samples{0};
  std::atomic<uint64_t> keys{0};
  absl::Mutex mu;
  double loss_sum ABSL_GUARDED_BY(mu) = 0;
  uint64_t loss_count ABSL_GUARDED_BY(mu) = 0;
};

// Builds the CSR batch over distinct keys for samples order[begin, end).
void BuildBatch(const LrDataset& data, uint64_t bias_key, const std::vector<uint32_t>& order,
                size_t begin, size_t end, absl::flat_hash_map<uint64_t, uint32_t>* index,
                std::vector<uint64_t>* keys, LrBatch* batch) {
  index->clear();
  keys->clear();
  batch->offsets.assign(1, 0);
  batch->slots.clear();
  batch->labels.clear();
  auto slot_of = [&](uint64_t key) {
    auto [it, inserted] = index->try_emplace(key, static_cast<uint32_t>(keys->size()));
    if (inserted) keys->push_back(key);
    return it->second;
  };
  for (size_t s = begin; s < end; ++s) {
    const uint32_t i = order[s];
    batch->slots.push_back(slot_of(bias_key));
    for (uint32_t j = 0; j < data.k; ++j)
      batch->slots.push_back(slot_of(data.features[i * data.k + j]));
    batch->offsets.push_back(static_cast<uint32_t>(batch->slots.size()));
    batch->labels.push_back(data.labels[i]);
  }
  batch->num_keys = static_cast<uint32_t>(keys->size());
}

absl::Status WorkerLoop(Client& client, const PlantedLrProblem& problem,
                        const LrTrainOptions& options, int thread, SharedStats* stats) {
  std::unique_ptr<LrGpu> gpu;
  if (options.use_gpu) {
    absl::StatusOr<std::unique_ptr<LrGpu>> g = LrGpu::Create();
    if (!g.ok()) return g.status();
    gpu = std::move(*g);
  }
  const LrDataset& data = problem.train;
  // This thread's slice of the training set.
  const size_t per_thread = data.size() / options.threads;
  std::vector<uint32_t> order(per_thread);
  std::iota(order.begin(), order.end(), static_cast<uint32_t>(thread * per_thread));
  std::mt19937 rng(static_cast<uint32_t>(1000 + thread));
  absl::flat_hash_map<uint64_t, uint32_t> index;
  std::vector<uint64_t> keys;
  std::vector<float> weights, grads;
  LrBatch batch;
  for (int epoch = 0; epoch < options.epochs; ++epoch) {
    std::shuffle(order.begin(), order.end(), rng);
    for (size_t begin = 0; begin < order.size(); begin += options.batch_size) {
      const size_t end = std::min(order.size(), begin + options.batch_size);
      BuildBatch(data, problem.bias_key(), order, begin, end, &index, &keys, &batch);
      weights.resize(keys.size());
      grads.resize(keys.size());
      if (absl::Status s = client.PullSparse(options.table, keys, absl::MakeSpan(weights));
          !s.ok()) {
        return s;
      }
      double loss;
      if (gpu != nullptr) {
        absl::StatusOr<double> l = gpu->ForwardBackward(batch, weights, absl::MakeSpan(grads));
        if (!l.ok()) return l.status();
        loss = *l;
      } else {
        loss = LrForwardBackwardCpu(batch, weights, absl::MakeSpan(grads));
      }
      if (absl::Status s = client.PushSparse(options.table, keys, grads); !s.ok()) return s;
      stats->steps.fetch_add(1, std::memory_order_relaxed);
      stats->samples.fetch_add(end - begin, std::memory_order_relaxed);
      stats->keys.fetch_add(2 * keys.size(), std::memory_order_relaxed);
      absl::MutexLock lock(&stats->mu);
      stats->loss_sum += loss;
      stats->loss_count += 1;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<LrEval> EvaluateOnCluster(Client& client, const PlantedLrProblem& problem,
                                         const std::string& table) {
  std::vector<uint64_t> keys(problem.num_features + 1);
  std::iota(keys.begin(), keys.end(), uint64_t{0});
  std::vector<float> weights(keys.size());
  if (absl::Status s = client.PullSparse(table, keys, absl::MakeSpan(weights)); !s.ok()) return s;
  return EvaluateLr(problem.test, weights, problem.bias_key());
}

}  // namespace

absl::StatusOr<LrTrainResult> TrainLogisticRegression(
    Client& client, const PlantedLrProblem& problem, const LrTrainOptions& options,
    const std::function<void(const LrProgress&)>& on_progress) {
  if (options.threads < 1 || options.batch_size < 1 || options.epochs < 1) {
    return absl::InvalidArgumentError("threads, batch_size and epochs must be >= 1");
  }
  TableConfig table{.name = options.table, .kind = TableKind::kSparse, .dim = 1};
  table.optimizer = options.optimizer;
  table.initializer.kind = InitializerKind::kZeros;
  if (absl::StatusOr<TableConfig> c = client.CreateTable(table); !c.ok()) return c.status();

  LrTrainResult result;
  absl::StatusOr<LrEval> before = EvaluateOnCluster(client, problem, options.table);
  if (!before.ok()) return before.status();
  result.before = *before;
  result.planted = EvaluateLr(problem.test, problem.weights, problem.bias_key());

  SharedStats stats;
  std::vector<absl::Status> results(options.threads);
  const absl::Time start = absl::Now();
  std::vector<std::thread> workers;
  for (int t = 0; t < options.threads; ++t) {
    workers.emplace_back([&, t] { results[t] = WorkerLoop(client, problem, options, t, &stats); });
  }
  absl::Notification done;
  std::thread reporter([&] {
    uint64_t last_keys = 0;
    absl::Time last = start;
    while (!done.WaitForNotificationWithTimeout(options.report_every)) {
      const absl::Time now = absl::Now();
      LrProgress p;
      p.steps = stats.steps.load();
      p.samples = stats.samples.load();
      const uint64_t keys = stats.keys.load();
      p.keys_per_s = (keys - last_keys) / absl::ToDoubleSeconds(now - last);
      p.elapsed_s = absl::ToDoubleSeconds(now - start);
      {
        absl::MutexLock lock(&stats.mu);
        p.train_loss = stats.loss_count > 0 ? stats.loss_sum / stats.loss_count : 0;
        stats.loss_sum = 0;
        stats.loss_count = 0;
      }
      last_keys = keys;
      last = now;
      if (on_progress) on_progress(p);
    }
  });
  for (auto& w : workers) w.join();
  done.Notify();
  reporter.join();
  result.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  for (const absl::Status& s : results) {
    if (!s.ok()) return s;
  }
  result.steps = stats.steps.load();
  result.keys_moved = stats.keys.load();
  absl::StatusOr<LrEval> after = EvaluateOnCluster(client, problem, options.table);
  if (!after.ok()) return after.status();
  result.after = *after;
  return result;
}

}  // namespace tessera
