#include "worker/ctr_trainer.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "worker/data/synthetic_ctr.h"
#include "worker/models/mlp_reference.h"

namespace tessera {
namespace {

MlpTrainOptions MlpPart(const CtrTrainOptions& o) {
  MlpTrainOptions m;
  m.shape = o.shape.Mlp();
  m.optimizer = o.optimizer;
  m.seed = o.seed;
  m.prefix = o.prefix;
  return m;
}

std::string EmbeddingTable(const CtrTrainOptions& o) { return absl::StrCat(o.prefix, ".emb"); }

}  // namespace

std::vector<TableConfig> CtrTables(const CtrTrainOptions& o) {
  TableConfig emb{.name = EmbeddingTable(o), .kind = TableKind::kSparse, .dim = o.shape.dim};
  emb.optimizer = o.embedding_optimizer.value_or(o.optimizer);
  emb.lifecycle = o.embedding_lifecycle;
  emb.initializer = {.kind = InitializerKind::kNormal,
                     .mean = 0.0f,
                     .stddev = o.embedding_stddev,
                     .seed = o.seed + 1000};
  std::vector<TableConfig> tables = {emb};
  for (TableConfig& t : MlpTables(MlpPart(o))) tables.push_back(std::move(t));
  return tables;
}

absl::Status CheckCtrData(const SparseDataset& d, const EmbMlpShape& shape, bool check_examples) {
  if (d.num_dense != shape.dense || d.dense.size() != d.num_examples() * shape.dense) {
    return absl::InvalidArgumentError(
        absl::StrFormat("the CTR model expects %u dense features per example; the data has %u",
                        shape.dense, d.num_dense));
  }
  for (size_t i = 0; check_examples && i < d.num_examples(); ++i) {
    if (d.offsets[i + 1] - d.offsets[i] != shape.fields) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "the CTR model expects %u categorical keys per example (one per field); example %u "
          "has %u",
          shape.fields, i, d.offsets[i + 1] - d.offsets[i]));
    }
  }
  return absl::OkStatus();
}

CtrStepModel::CtrStepModel(const SparseDataset& train, const CtrTrainOptions& options,
                           std::unique_ptr<NnBackend> backend,
                           std::unique_ptr<NnBackend> key_backend)
    : train_(train),
      options_(options),
      tables_(CtrTables(options)),
      backend_(backend != nullptr ? std::move(backend) : MakeCpuBackend()),
      keys_(key_backend != nullptr ? std::move(key_backend) : MakeCpuBackend()) {
  for (Slot& s : slots_) s.params = MlpParams::Zeros(options.shape.Mlp());
}

uint32_t CtrStepModel::NumBatches() const {
  return options_.batch_size == 0
             ? 0
             : static_cast<uint32_t>(train_.num_examples() / options_.batch_size);
}

void CtrStepModel::PrepareKeys(const uint64_t* keys, uint32_t n, Slot& slot) {
  absl::StatusOr<BatchKeys> k = keys_->UniqueKeys(keys, size_t{n} * options_.shape.fields);
  if (!k.ok()) {  // a failing device is no reason to stop: the CPU computes the same
    LogWarning("%s; continuing on the CPU", k.status().ToString());
    keys_ = MakeCpuBackend();
    k = keys_->UniqueKeys(keys, size_t{n} * options_.shape.fields);
  }
  slot.keys = *std::move(k);
  slot.rows.resize(slot.keys.unique.size() * options_.shape.dim);
}

void CtrStepModel::PullSlot(Client& client, Slot& slot, CallGroup& group) {
  group.Add(client.PullSparseAsync(tables_[0].name, slot.keys.unique, absl::MakeSpan(slot.rows)));
  for (size_t l = 0; l < slot.params.w.size(); ++l) {
    group.Add(client.PullDenseAsync(tables_[1 + 2 * l].name, 0, absl::MakeSpan(slot.params.w[l])));
    group.Add(client.PullDenseAsync(tables_[2 + 2 * l].name, 0, absl::MakeSpan(slot.params.b[l])));
  }
}

absl::Status CtrStepModel::Prepare(uint32_t batch, int slot) {
  const size_t start = size_t{batch} * options_.batch_size;
  if (absl::Status s = WaitForExamples(start + options_.batch_size); !s.ok()) return s;
  for (size_t i = start; i < start + options_.batch_size; ++i) {
    if (train_.offsets[i + 1] - train_.offsets[i] != options_.shape.fields) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "the CTR model expects %u categorical keys per example (one per field); example %u "
          "has %u",
          options_.shape.fields, i, train_.offsets[i + 1] - train_.offsets[i]));
    }
  }
  PrepareKeys(train_.keys.data() + start * options_.shape.fields, options_.batch_size,
              slots_[slot]);
  return absl::OkStatus();
}

void CtrStepModel::Pull(Client& client, uint32_t, int slot, CallGroup& group) {
  PullSlot(client, slots_[slot], group);
}

double CtrStepModel::Compute(uint32_t batch, int slot) {
  const size_t start = size_t{batch} * options_.batch_size;
  const uint32_t n = options_.batch_size;
  labels_.resize(n);
  for (uint32_t i = 0; i < n; ++i) labels_[i] = train_.labels[start + i] > 0.5f;
  const Slot& s = slots_[slot];
  computed_ = slot;
  const float* dense = train_.dense.data() + start * options_.shape.dense;
  absl::StatusOr<MlpBatchStats> stats =
      backend_->EmbMlpForwardBackward(options_.shape, s.params, s.keys, s.rows.data(), dense,
                                      labels_.data(), n, &grads_, &emb_grads_);
  if (!stats.ok()) {
    LogWarning("%s; continuing on the CPU", stats.status().ToString());
    backend_ = MakeCpuBackend();
    stats = backend_->EmbMlpForwardBackward(options_.shape, s.params, s.keys, s.rows.data(), dense,
                                            labels_.data(), n, &grads_, &emb_grads_);
  }
  return stats->loss;
}

void CtrStepModel::Push(Client& client, const PushOptions& push, float scale, CallGroup& group) {
  if (scale != 1.0f) {
    for (float& g : emb_grads_) g *= scale;
    for (size_t l = 0; l < grads_.w.size(); ++l) {
      for (float& g : grads_.w[l]) g *= scale;
      for (float& g : grads_.b[l]) g *= scale;
    }
  }
  group.Add(
      client.PushSparseAsync(tables_[0].name, slots_[computed_].keys.unique, emb_grads_, push));
  for (size_t l = 0; l < grads_.w.size(); ++l) {
    group.Add(client.PushDenseAsync(tables_[1 + 2 * l].name, 0, grads_.w[l], push));
    group.Add(client.PushDenseAsync(tables_[2 + 2 * l].name, 0, grads_.b[l], push));
  }
}

ParameterReader PullsFrom(Client& client) {
  return {
      .sparse = [&client](const std::string& table, absl::Span<const uint64_t> keys,
                          absl::Span<float> rows) { return client.PullSparse(table, keys, rows); },
      .dense = [&client](const std::string& table,
                         absl::Span<float> values) { return client.PullDense(table, 0, values); }};
}

absl::StatusOr<double> CtrAuc(const ParameterReader& reader, const CtrTrainOptions& options,
                              const SparseDataset& test) {
  if (absl::Status s = CheckCtrData(test, options.shape); !s.ok()) return s;
  CtrStepModel model(test, options);
  CtrStepModel::Slot& slot = model.slots_[0];
  for (size_t l = 0; l < slot.params.w.size(); ++l) {
    if (absl::Status s =
            reader.dense(model.tables_[1 + 2 * l].name, absl::MakeSpan(slot.params.w[l]));
        !s.ok()) {
      return s;
    }
    if (absl::Status s =
            reader.dense(model.tables_[2 + 2 * l].name, absl::MakeSpan(slot.params.b[l]));
        !s.ok()) {
      return s;
    }
  }
  std::vector<float> scores, batch_scores;
  const uint32_t batch = 1024;
  EmbMlpWorkspace ws;
  for (size_t start = 0; start < test.num_examples(); start += batch) {
    const uint32_t n = static_cast<uint32_t>(std::min<size_t>(batch, test.num_examples() - start));
    model.PrepareKeys(test.keys.data() + start * options.shape.fields, n, slot);
    if (absl::Status s =
            reader.sparse(model.tables_[0].name, slot.keys.unique, absl::MakeSpan(slot.rows));
        !s.ok()) {
      return s;
    }
    EmbMlpScores(options.shape, slot.params, slot.keys, slot.rows.data(),
                 test.dense.data() + start * options.shape.dense, n, &batch_scores, &ws);
    scores.insert(scores.end(), batch_scores.begin(), batch_scores.end());
  }
  return Auc(scores, test.labels);
}

absl::StatusOr<double> CtrAuc(Client& client, const CtrTrainOptions& options,
                              const SparseDataset& test) {
  return CtrAuc(PullsFrom(client), options, test);
}

}  // namespace tessera
