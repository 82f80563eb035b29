// A worker's replica of an all-reduced dense table (docs/dense_allreduce.md): weights, optimizer
// slots and per-block step counters, initialized and updated by the same code as a server's
// dense table (the table's initializer, optimizer/ApplyUpdate per block, a step's mean scaled as
// a BSP step is), so that a replica equals the server's table fed the same gradients, bit for
// bit. Its whole state is one float span, what a joined worker is given (Gloo broadcast).
#ifndef TESSERA_WORKER_DENSE_REPLICA_H_
#define TESSERA_WORKER_DENSE_REPLICA_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/table_config.h"
#include "optimizer/optimizer.h"

namespace tessera {

class DenseReplica {
 public:
  // INVALID_ARGUMENT for a table that is not dense (or not resolvable).
  static absl::StatusOr<DenseReplica> Create(const TableConfig& config);

  const TableConfig& config() const { return config_; }
  uint64_t size() const { return config_.dense_size; }
  absl::Span<const float> weights() const { return {state_.data(), config_.dense_size}; }

  // Everything that makes the replica (weights, slots, step counters as their bytes).
  absl::Span<float> state() { return absl::MakeSpan(state_); }

  // Applies the mean over `members` of summed gradients `sum` (REQUIRES: size() floats, what
  // the all-reduce of the replica's gradients produces): each element
  // scaled as a server scales a BSP step's sum, then the optimizer block by block.
  void ApplyMean(absl::Span<const float> sum, uint32_t members);

 private:
  DenseReplica(TableConfig config, OptimizerParams params);
  uint64_t Blocks() const;
  float* StepBytes(uint64_t block);  // 8 bytes: the block's step counter

  TableConfig config_;
  OptimizerParams params_;
  std::vector<float> state_;  // weights | slot 0 | slot 1 | 2 floats of step a block
  std::vector<float> scaled_;
};

}  // namespace tessera

#endif  // TESSERA_WORKER_DENSE_REPLICA_H_
