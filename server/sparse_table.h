#ifndef TESSERA_SERVER_SPARSE_TABLE_H_
#define TESSERA_SERVER_SPARSE_TABLE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "common/shard_map.h"
#include "common/table_config.h"
#include "server/initializer.h"
#include "server/optimizer.h"
#include "server/row_arena.h"

namespace tessera {

// The rows of one sparse table that this server holds: uint64 key -> `dim` weights plus the
// optimizer's slots (and Adam's step counter) in one contiguous row, partitioned by vshard.
// Rows are created on first touch (pull or push) with the table's initializer.
//
// Thread-safe: each vshard has its own mutex, held only while its rows are read or updated
// (never across I/O), so requests touching different vshards run in parallel.
class SparseTable {
 public:
  // REQUIRES: config came out of ResolveTableConfig with kind kSparse; owned[v] tells whether
  // this server owns vshard v.
  SparseTable(const TableConfig& config, const std::vector<bool>& owned);

  const TableConfig& config() const { return config_; }
  uint32_t dim() const { return config_.dim; }
  uint32_t num_vshards() const { return static_cast<uint32_t>(partitions_.size()); }
  bool Owns(uint32_t vshard) const { return partitions_[vshard] != nullptr; }

  // Copies the weights of keys[i] to out[i * dim, (i + 1) * dim), creating missing rows.
  // REQUIRES: `groups` is GroupByVshard(keys); every run's vshard is owned.
  void Pull(absl::Span<const uint64_t> keys, const VshardGrouping& groups, float* out);

  // Applies the optimizer to each keys[i] with gradient grads[i * dim, (i + 1) * dim).
  // REQUIRES: as Pull, and the keys are distinct.
  void Push(absl::Span<const uint64_t> keys, const VshardGrouping& groups, const float* grads);

  uint64_t num_rows() const { return num_rows_.load(std::memory_order_relaxed); }
  // Memory held for rows (weights, slots, steps) and their index, approximately.
  uint64_t bytes() const;

 private:
  struct Partition {
    explicit Partition(size_t stride) : rows(stride) {}
    mutable absl::Mutex mu;
    absl::flat_hash_map<uint64_t, uint32_t> index ABSL_GUARDED_BY(mu);  // key -> row id
    RowArena rows ABSL_GUARDED_BY(mu);
  };

  // Returns the row of `key`, creating and initializing it when missing.
  float* FindOrCreate(Partition& p, uint64_t key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(p.mu);

  // Constant after construction.
  const TableConfig config_;
  const OptimizerParams params_;
  const Initializer initializer_;
  const size_t stride_;       // floats per row: dim * (1 + slots) + 2 when there is a step
  const size_t step_offset_;  // float offset of the 8-byte step counter in a row
  std::vector<std::unique_ptr<Partition>> partitions_;  // by vshard; null when not owned

  std::atomic<uint64_t> num_rows_{0};
};

}  // namespace tessera

#endif  // TESSERA_SERVER_SPARSE_TABLE_H_
