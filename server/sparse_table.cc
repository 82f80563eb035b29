#include "server/sparse_table.h"

#include <cstring>

namespace tessera {

SparseTable::SparseTable(const TableConfig& config, const std::vector<bool>& owned)
    : config_(config),
      params_(OptimizerParams::FromConfig(config.optimizer)),
      initializer_(config.initializer),
      stride_(size_t{config.dim} * (1 + params_.num_slots) + (params_.has_step ? 2 : 0)),
      step_offset_(size_t{config.dim} * (1 + params_.num_slots)) {
  partitions_.resize(owned.size());
  for (size_t v = 0; v < owned.size(); ++v) {
    if (owned[v]) partitions_[v] = std::make_unique<Partition>(stride_);
  }
}

float* SparseTable::FindOrCreate(Partition& p, uint64_t key) {
  auto [it, inserted] = p.index.try_emplace(key, 0);
  if (!inserted) return p.rows.Row(it->second);
  const uint32_t id = p.rows.Append();
  it->second = id;
  float* row = p.rows.Row(id);
  const uint32_t dim = config_.dim;
  initializer_.FillRow(key, row, dim);
  for (int s = 0; s < params_.num_slots; ++s) {
    const float init = params_.InitialSlotValue(s);
    float* slot = row + size_t{dim} * (1 + s);
    for (uint32_t i = 0; i < dim; ++i) slot[i] = init;
  }
  if (params_.has_step) std::memset(row + step_offset_, 0, sizeof(uint64_t));
  num_rows_.fetch_add(1, std::memory_order_relaxed);
  return row;
}

void SparseTable::Pull(absl::Span<const uint64_t> keys, const VshardGrouping& groups, float* out) {
  const uint32_t dim = config_.dim;
  for (const VshardRun& run : groups.runs) {
    Partition& p = *partitions_[run.vshard];
    absl::MutexLock lock(&p.mu);
    for (uint32_t j = run.begin; j < run.end; ++j) {
      const uint32_t i = groups.KeyIndex(j);
      const float* row = FindOrCreate(p, keys[i]);
      std::memcpy(out + size_t{i} * dim, row, dim * sizeof(float));
    }
  }
}

void SparseTable::Push(absl::Span<const uint64_t> keys, const VshardGrouping& groups,
                       const float* grads) {
  const size_t dim = config_.dim;
  for (const VshardRun& run : groups.runs) {
    Partition& p = *partitions_[run.vshard];
    absl::MutexLock lock(&p.mu);
    for (uint32_t j = run.begin; j < run.end; ++j) {
      const uint32_t i = groups.KeyIndex(j);
      float* row = FindOrCreate(p, keys[i]);
      float* slot0 = params_.num_slots > 0 ? row + dim : nullptr;
      float* slot1 = params_.num_slots > 1 ? row + 2 * dim : nullptr;
      uint64_t step = 0;
      if (params_.has_step) std::memcpy(&step, row + step_offset_, sizeof(step));
      ApplyUpdate(params_, row, slot0, slot1, &step, grads + i * dim, dim);
      if (params_.has_step) std::memcpy(row + step_offset_, &step, sizeof(step));
    }
  }
}

uint64_t SparseTable::bytes() const {
  uint64_t total = 0;
  for (const auto& p : partitions_) {
    if (p == nullptr) continue;
    absl::MutexLock lock(&p->mu);
    total += p->rows.bytes() + p->index.capacity() * (sizeof(uint64_t) + sizeof(uint32_t) + 1);
  }
  return total;
}

}  // namespace tessera
