#include "worker/models/mlp_reference.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "optimizer/initializer.h"
#include "optimizer/optimizer.h"

namespace tessera {

std::vector<TableConfig> MlpTables(const MlpTrainOptions& o) {
  std::vector<TableConfig> tables;
  for (size_t l = 0; l < o.shape.num_layers(); ++l) {
    TableConfig w{.name = absl::StrCat(o.prefix, ".w", l),
                  .kind = TableKind::kDense,
                  .dense_size = o.shape.weights(l)};
    w.optimizer = o.optimizer;
    w.initializer = {.kind = InitializerKind::kNormal,
                     .mean = 0.0f,
                     .stddev = std::sqrt(2.0f / o.shape.sizes[l]),
                     .seed = o.seed + l};
    TableConfig b{.name = absl::StrCat(o.prefix, ".b", l),
                  .kind = TableKind::kDense,
                  .dense_size = o.shape.biases(l)};
    b.optimizer = o.optimizer;
    b.initializer = {.kind = InitializerKind::kZeros};
    tables.push_back(std::move(w));
    tables.push_back(std::move(b));
  }
  return tables;
}

absl::StatusOr<MlpParams> MlpInitialParams(const MlpTrainOptions& o) {
  MlpParams p = MlpParams::Zeros(o.shape);
  const std::vector<TableConfig> tables = MlpTables(o);
  for (size_t l = 0; l < o.shape.num_layers(); ++l) {
    for (int k = 0; k < 2; ++k) {
      absl::StatusOr<TableConfig> resolved = ResolveTableConfig(tables[2 * l + k]);
      if (!resolved.ok()) return resolved.status();
      std::vector<float>& out = k == 0 ? p.w[l] : p.b[l];
      Initializer(resolved->initializer).FillDense(0, out.data(), out.size());
    }
  }
  return p;
}

double MlpAccuracy(const MlpShape& shape, const MlpParams& params, const IdxDataset& data) {
  MlpWorkspace ws;
  uint64_t correct = 0;
  const uint32_t batch = 1000;
  for (uint32_t start = 0; start < data.num_examples; start += batch) {
    const uint32_t n = std::min(batch, data.num_examples - start);
    correct += MlpEvaluate(shape, params, data.features.data() + size_t{start} * data.num_features,
                           data.labels.data() + start, n, &ws)
                   .correct;
  }
  return data.num_examples == 0 ? 0 : static_cast<double>(correct) / data.num_examples;
}

absl::StatusOr<MlpReferenceResult> TrainMlpReference(
    const IdxDataset& train, const IdxDataset& test, const MlpTrainOptions& o,
    const std::function<void(const MlpEpochReport&)>& on_epoch) {
  if (o.shape.sizes.size() < 2 || o.shape.sizes.front() != train.num_features ||
      o.shape.sizes.back() < train.num_classes || o.batch_size == 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "the MLP's input (%u) must match the data's %u features and its output cover %u classes",
        o.shape.sizes.empty() ? 0 : o.shape.sizes.front(), train.num_features, train.num_classes));
  }
  absl::StatusOr<MlpParams> init = MlpInitialParams(o);
  if (!init.ok()) return init.status();
  MlpReferenceResult result;
  result.params = *std::move(init);
  MlpParams& p = result.params;
  // Optimizer state as the servers keep it for a dense table: slots per element, one step
  // counter per block (a whole-tensor push advances every block once: one counter suffices).
  absl::StatusOr<TableConfig> resolved = ResolveTableConfig(MlpTables(o)[0]);
  if (!resolved.ok()) return resolved.status();
  const OptimizerParams opt = OptimizerParams::FromConfig(resolved->optimizer);
  struct State {
    std::vector<float> slot0, slot1;
    uint64_t step = 0;
  };
  std::vector<State> states;
  auto make_state = [&](size_t n) {
    State s;
    if (opt.num_slots >= 1) s.slot0.assign(n, opt.InitialSlotValue(0));
    if (opt.num_slots >= 2) s.slot1.assign(n, opt.InitialSlotValue(1));
    return s;
  };
  for (size_t l = 0; l < o.shape.num_layers(); ++l) {
    states.push_back(make_state(p.w[l].size()));
    states.push_back(make_state(p.b[l].size()));
  }
  auto apply = [&](std::vector<float>& w, State& s, const std::vector<float>& g) {
    ApplyUpdate(opt, w.data(), s.slot0.empty() ? nullptr : s.slot0.data(),
                s.slot1.empty() ? nullptr : s.slot1.data(), opt.has_step ? &s.step : nullptr,
                g.data(), w.size());
  };
  MlpParams grads;
  MlpWorkspace ws;
  for (int epoch = 1; epoch <= o.epochs; ++epoch) {
    double loss = 0;
    uint64_t batches = 0;
    for (uint32_t start = 0; start + o.batch_size <= train.num_examples; start += o.batch_size) {
      loss +=
          MlpForwardBackward(o.shape, p, train.features.data() + size_t{start} * train.num_features,
                             train.labels.data() + start, o.batch_size, &grads, &ws)
              .loss;
      ++batches;
      for (size_t l = 0; l < o.shape.num_layers(); ++l) {
        apply(p.w[l], states[2 * l], grads.w[l]);
        apply(p.b[l], states[2 * l + 1], grads.b[l]);
      }
    }
    MlpEpochReport r{epoch, batches > 0 ? loss / batches : 0, MlpAccuracy(o.shape, p, test)};
    result.epochs.push_back(r);
    if (on_epoch) on_epoch(r);
  }
  return result;
}

}  // namespace tessera
