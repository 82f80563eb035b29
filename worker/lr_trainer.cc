#include "worker/lr_trainer.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "worker/data/synthetic_ctr.h"
#include "worker/models/emb_mlp.h"

namespace tessera {

absl::Status CheckLrData(const SparseDataset& d) {
  for (size_t i = 0; i < d.values.size(); ++i) {
    if (d.values[i] != 1.0f) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "the logistic-regression model takes binary features (value 1); key %u has value %g",
          d.keys[i], d.values[i]));
    }
  }
  for (size_t i = 0; i < d.labels.size(); ++i) {
    if (d.labels[i] != 0.0f && d.labels[i] != 1.0f) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "logistic regression needs labels 0 or 1; example %u has %g", i, d.labels[i]));
    }
  }
  return absl::OkStatus();
}

LrStepModel::LrStepModel(const SparseDataset& train, const LrModelOptions& options,
                         std::unique_ptr<LrGpu> gpu)
    : train_(train), options_(options), gpu_(std::move(gpu)) {}

std::vector<TableConfig> LrStepModel::Tables() const {
  TableConfig w{.name = options_.table, .kind = TableKind::kSparse, .dim = 1};
  w.optimizer = options_.optimizer;
  return {w};
}

uint32_t LrStepModel::NumBatches() const {
  return options_.batch_size == 0
             ? 0
             : static_cast<uint32_t>(train_.num_examples() / options_.batch_size);
}

void LrStepModel::Layout(const SparseDataset& d, size_t start, uint32_t n, Slot& slot) {
  const uint64_t first = d.offsets[start], last = d.offsets[start + n];
  BatchKeys k = UniqueKeys(d.keys.data() + first, last - first);
  slot.keys = std::move(k.unique);
  slot.batch.offsets.resize(n + 1);
  for (uint32_t i = 0; i <= n; ++i) {
    slot.batch.offsets[i] = static_cast<uint32_t>(d.offsets[start + i] - first);
  }
  slot.batch.slots = std::move(k.row);
  slot.batch.labels.assign(d.labels.begin() + start, d.labels.begin() + start + n);
  slot.batch.num_keys = static_cast<uint32_t>(slot.keys.size());
  slot.weights.resize(slot.keys.size());
}

absl::Status LrStepModel::Prepare(uint32_t batch, int slot) {
  const size_t start = size_t{batch} * options_.batch_size;
  if (absl::Status s = WaitForExamples(start + options_.batch_size); !s.ok()) return s;
  Layout(train_, start, options_.batch_size, slots_[slot]);
  return absl::OkStatus();
}

void LrStepModel::Pull(Client& client, uint32_t, int slot, CallGroup& group) {
  Slot& s = slots_[slot];
  group.Add(client.PullSparseAsync(options_.table, s.keys, absl::MakeSpan(s.weights)));
}

double LrStepModel::Compute(uint32_t, int slot) {
  const Slot& s = slots_[slot];
  computed_ = slot;
  grads_.resize(s.keys.size());
  if (gpu_ != nullptr) {
    absl::StatusOr<double> loss = gpu_->ForwardBackward(s.batch, s.weights, absl::MakeSpan(grads_));
    if (loss.ok()) return *loss;
    // A failing device is not a reason to stop training: the CPU computes the same thing.
    LogWarning("GPU forward/backward failed (%s); continuing on the CPU", loss.status().ToString());
    gpu_.reset();
  }
  return LrForwardBackwardCpu(s.batch, s.weights, absl::MakeSpan(grads_));
}

void LrStepModel::Push(Client& client, const PushOptions& push, float scale, CallGroup& group) {
  if (scale != 1.0f) {
    for (float& g : grads_) g *= scale;
  }
  group.Add(client.PushSparseAsync(options_.table, slots_[computed_].keys, grads_, push));
}

absl::StatusOr<double> LrAuc(Client& client, const LrModelOptions& options,
                             const SparseDataset& test) {
  std::vector<float> scores;
  scores.reserve(test.num_examples());
  LrStepModel::Slot s;
  constexpr uint32_t kBatch = 4096;
  for (size_t start = 0; start < test.num_examples(); start += kBatch) {
    const uint32_t n = static_cast<uint32_t>(std::min<size_t>(kBatch, test.num_examples() - start));
    LrStepModel::Layout(test, start, n, s);
    if (absl::Status st = client.PullSparse(options.table, s.keys, absl::MakeSpan(s.weights));
        !st.ok()) {
      return st;
    }
    for (uint32_t i = 0; i < n; ++i) {
      float score = 0;
      for (uint32_t j = s.batch.offsets[i]; j < s.batch.offsets[i + 1]; ++j) {
        score += s.weights[s.batch.slots[j]];
      }
      scores.push_back(score);
    }
  }
  return Auc(scores, test.labels);
}

}  // namespace tessera
