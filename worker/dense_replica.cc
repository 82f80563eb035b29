#include "worker/dense_replica.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_format.h"
#include "optimizer/initializer.h"

namespace tessera {

absl::StatusOr<DenseReplica> DenseReplica::Create(const TableConfig& config) {
  absl::StatusOr<TableConfig> resolved = ResolveTableConfig(config);
  if (!resolved.ok()) return resolved.status();
  if (resolved->kind != TableKind::kDense || resolved->dense_block_elems == 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "table '%s' is not dense: only dense tables are all-reduced", config.name.substr(0, 128)));
  }
  return DenseReplica(*resolved, OptimizerParams::FromConfig(resolved->optimizer));
}

DenseReplica::DenseReplica(TableConfig config, OptimizerParams params)
    : config_(std::move(config)), params_(params) {
  const uint64_t n = config_.dense_size;
  state_.assign(n * (1 + params_.num_slots) + 2 * Blocks(), 0.0f);
  Initializer(config_.initializer).FillDense(0, state_.data(), n);
  for (int s = 0; s < params_.num_slots; ++s) {
    std::fill_n(state_.data() + n * (1 + s), n, params_.InitialSlotValue(s));
  }
}

uint64_t DenseReplica::Blocks() const {
  return (config_.dense_size + config_.dense_block_elems - 1) / config_.dense_block_elems;
}

float* DenseReplica::StepBytes(uint64_t block) {
  // (Two floats' bytes a block: the state stays one float span; copied bit for bit.)
  return state_.data() + config_.dense_size * (1 + params_.num_slots) + 2 * block;
}

void DenseReplica::ApplyMean(absl::Span<const float> sum, uint32_t members) {
  const uint64_t n = config_.dense_size;
  const float scale = 1.0f / static_cast<float>(std::max<uint32_t>(members, 1));
  scaled_.resize(n);
  for (uint64_t i = 0; i < n; ++i) {
    scaled_[i] = SaturateToFloat(double{sum[i]} * scale);
  }
  for (uint64_t b = 0, lo = 0; lo < n; ++b, lo += config_.dense_block_elems) {
    const uint64_t len = std::min<uint64_t>(config_.dense_block_elems, n - lo);
    float* w = state_.data() + lo;
    float* slot0 = params_.num_slots > 0 ? w + n : nullptr;
    float* slot1 = params_.num_slots > 1 ? w + 2 * n : nullptr;
    uint64_t step;
    std::memcpy(&step, StepBytes(b), sizeof(step));
    ApplyUpdate(params_, w, slot0, slot1, &step, scaled_.data() + lo, len);
    std::memcpy(StepBytes(b), &step, sizeof(step));
  }
}

}  // namespace tessera
