#ifndef TESSERA_SERVER_DENSE_TABLE_H_
#define TESSERA_SERVER_DENSE_TABLE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "common/table_config.h"
#include "optimizer/optimizer.h"
#include "server/generation.h"
#include "server/huge_buffer.h"
#include "server/table_data.h"

namespace tessera {

// Number of blocks of a dense table and the element range of each.
struct DenseLayout {
  uint64_t size;         // elements
  uint32_t block_elems;  // elements per block; the last block may be shorter
  uint64_t num_blocks() const { return (size + block_elems - 1) / block_elems; }
  uint64_t BlockBegin(uint64_t b) const { return b * block_elems; }
  uint64_t BlockEnd(uint64_t b) const {
    const uint64_t end = (b + 1) * block_elems;
    return end < size ? end : size;
  }
};

// The blocks of one dense table that this server holds: each block keeps its weights, its
// optimizer slots and one step counter (Adam). Blocks are the unit of ownership: block b
// belongs to vshard VshardOfDenseBlock(Fnv1a64(name), b, num_vshards).
//
// Thread-safe: each block has its own mutex, held only while it is read or updated.
class DenseTable final : public TableData {
 public:
  // Allocates the owned blocks and, unless `initialize` is false (a restore, which loads every
  // block), fills them with the initializer. REQUIRES: config came out of ResolveTableConfig
  // with kind kDense; owned[v] tells whether this server owns vshard v.
  DenseTable(const TableConfig& config, const std::vector<bool>& owned, bool initialize = true);

  const TableConfig& config() const { return config_; }
  const DenseLayout& layout() const { return layout_; }
  // False when the memory for the held blocks could not be mapped: the table is unusable.
  bool allocated() const { return held_elements_ == 0 || storage_.data() != nullptr; }

  // The first block overlapping [offset, offset + count) not held here, or -1 when all are.
  // REQUIRES: offset + count <= size.
  int64_t FirstMissingBlock(uint64_t offset, uint64_t count) const;

  // REQUIRES: offset + count <= size and every overlapping block is held here.
  void Pull(uint64_t offset, uint64_t count, float* out) const;
  // Applies the optimizer (with `assign`: writes the values, slots kept) and stamps the
  // touched blocks with generation `gen`; only blocks whose vshard v has v % parts == part
  // (an executor's share, docs/state_machine.md).
  void Push(uint64_t offset, uint64_t count, const float* grads, uint64_t gen, bool assign = false,
            uint32_t part = 0, uint32_t parts = 1);

  // Checkpoints (docs/checkpoints.md), as SparseTable: a block is the unit. TakeBlock writes
  // the block's payload as of the cut (weights, slots, then the 8-byte step) to payload (room
  // for BlockPayloadBytes(block)) and returns true when the block changed after parent_gen
  // (0: always).
  bool Holds(uint64_t block) const { return blocks_[block] != nullptr; }
  uint32_t VshardOf(uint64_t block) const;
  size_t BlockPayloadBytes(uint64_t block) const;
  void BeginCut(uint64_t cut_gen) override;
  bool TakeBlock(uint64_t block, uint64_t cut_gen, uint64_t parent_gen, char* payload);
  void EndCut() override;
  // Restore: REQUIRES a held block, payload of BlockPayloadBytes(block), a table not serving.
  void LoadBlock(uint64_t block, absl::string_view payload);
  // Gives a held block its initial values (a restore that found no data for it).
  void InitializeBlock(uint64_t block);
  // TableData's entries and groups are blocks.
  std::vector<EntryGroup> HeldGroups() const override;
  absl::Status TakeGroup(const EntryGroup& group, uint64_t cut_gen, uint64_t parent_gen,
                         EntrySink& sink) override;
  size_t EntryBytes(uint32_t vshard, uint64_t block) const override;
  void LoadEntry(uint32_t, uint64_t block, absl::string_view payload) override {
    LoadBlock(block, payload);
  }
  void FinishLoad() override;  // initializes every held block that nothing was loaded into
  size_t SumFloats(uint64_t block) const override;
  uint32_t VshardOfEntry(uint64_t block) const override { return VshardOf(block); }
  uint64_t ApplySums(const EntrySums& sums, float scale, uint64_t gen, int64_t time_ms,
                     uint64_t step) override;

  // A stable hash of every held block's weights, slots and step, in block order.
  uint64_t Digest() const override;
  uint64_t Entries() const override { return num_elements(); }
  uint64_t Bytes() const override { return bytes(); }

  uint64_t num_elements() const { return held_elements_; }
  // Weights, slots and the bookkeeping of every block: what the table holds.
  uint64_t bytes() const { return bytes_; }

  // Most blocks a dense table may have (RESOURCE_EXHAUSTED above): admission walks the blocks.
  static constexpr uint64_t kMaxBlocks = uint64_t{1} << 22;
  // Bytes the owned blocks of `config` would take on a server owning `owned`, bookkeeping
  // included (for admission); RESOURCE_EXHAUSTED when it has more than kMaxBlocks blocks or
  // would take more than `limit` bytes (checked in O(1) before the blocks are walked).
  static absl::StatusOr<uint64_t> BytesFor(const TableConfig& config,
                                           const std::vector<bool>& owned, uint64_t limit);

 private:
  struct Block;
  static uint64_t BlockOverhead();
  struct Block {
    // Constant after construction.
    uint64_t begin = 0;     // first element
    float* data = nullptr;  // into storage_: weights, then num_slots slot vectors of the block
    size_t size = 0;        // floats at data

    mutable absl::Mutex mu;                              // guards *data and the fields below
    uint64_t step ABSL_GUARDED_BY(mu) = 0;               // Adam's step counter
    uint64_t gen ABSL_GUARDED_BY(mu) = kBaseGeneration;  // generation of the last change
    bool has_values ABSL_GUARDED_BY(mu) = false;         // initialized or loaded
    // Copy-on-write of a checkpoint in progress (see SparseTable).
    uint64_t cow_gen ABSL_GUARDED_BY(mu) = 0;
    bool has_cow ABSL_GUARDED_BY(mu) = false;
    std::vector<float> cow_data ABSL_GUARDED_BY(mu);
    uint64_t cow_step ABSL_GUARDED_BY(mu) = 0;
    uint64_t cow_block_gen ABSL_GUARDED_BY(mu) = 0;
  };

  // Constant after construction.
  const TableConfig config_;
  const OptimizerParams params_;
  const DenseLayout layout_;
  const uint64_t table_hash_;
  const uint32_t num_vshards_;
  std::vector<std::unique_ptr<Block>> blocks_;  // by block index; null when not held
  uint64_t held_elements_ = 0;
  uint64_t bytes_ = 0;
  HugeBuffer storage_;  // every held block's data, contiguous
};

}  // namespace tessera

#endif  // TESSERA_SERVER_DENSE_TABLE_H_
