// Partitioning: keys and dense blocks map to virtual shards (vshards), vshards map to shards,
// and shards map to servers. See docs/design.md, "Virtual shards".
#ifndef TESSERA_COMMON_SHARD_MAP_H_
#define TESSERA_COMMON_SHARD_MAP_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/export.h"
#include "common/hash.h"

namespace tessera {

inline constexpr uint32_t kDefaultNumVshards = 1024;

// The vshard of a sparse key. Part of the wire contract.
inline uint32_t VshardOfKey(uint64_t key, uint32_t num_vshards) {
  const uint64_t h = Mix64(key);
  // (The same value as h % num_vshards; a mask instead of a 64-bit division for the usual
  // power-of-two counts: the division was a tenth of a client's pull.)
  if ((num_vshards & (num_vshards - 1)) == 0) return static_cast<uint32_t>(h & (num_vshards - 1));
  return static_cast<uint32_t>(h % num_vshards);
}

// The vshard of block `block` of the dense table named `table_name` (table_hash =
// Fnv1a64(table_name)). Block b sits at fraction frac(h + b * 0.618...) of the vshard range (a
// golden-ratio Weyl sequence, read from the high bits), so consecutive blocks of a tensor land
// far apart and every shard's contiguous range of vshards gets its share even of a tensor of
// a few blocks. (Consecutive vshards would put a tensor of fewer than num_vshards / num_shards
// blocks on one shard.) Part of the wire contract.
inline uint32_t VshardOfDenseBlock(uint64_t table_hash, uint64_t block, uint32_t num_vshards) {
  const uint64_t x = table_hash + block * 0x9E3779B97F4A7C15ull;
  return static_cast<uint32_t>(((x >> 32) * num_vshards) >> 32);
}

// Which shard owns each vshard, at one epoch. A value type; thread-compatible.
class TESSERA_EXPORT ShardMap {
 public:
  // Vshards split into `num_shards` contiguous ranges of (nearly) equal size.
  static absl::StatusOr<ShardMap> Uniform(uint64_t epoch, uint32_t num_shards,
                                          uint32_t num_vshards = kDefaultNumVshards);

  uint64_t epoch() const { return epoch_; }
  uint32_t num_shards() const { return num_shards_; }
  uint32_t num_vshards() const { return static_cast<uint32_t>(owner_.size()); }
  // REQUIRES: vshard < num_vshards().
  uint32_t ShardOf(uint32_t vshard) const { return owner_[vshard]; }
  uint32_t ShardOfKey(uint64_t key) const { return owner_[VshardOfKey(key, num_vshards())]; }

 private:
  ShardMap(uint64_t epoch, uint32_t num_shards, std::vector<uint32_t> owner)
      : epoch_(epoch), num_shards_(num_shards), owner_(std::move(owner)) {}

  uint64_t epoch_;
  uint32_t num_shards_;
  std::vector<uint32_t> owner_;  // vshard -> shard
};

// Keys of one request ordered by vshard (a stable counting sort), so that each vshard's keys
// form one contiguous run.
struct VshardRun {
  uint32_t vshard;
  uint32_t begin;  // into VshardGrouping::order (or into the keys when order is empty)
  uint32_t end;
};
struct VshardGrouping {
  // order[i] is the index into keys of the i-th key in vshard order. Empty when the keys were
  // already grouped by vshard (then the order is the identity).
  std::vector<uint32_t> order;
  std::vector<VshardRun> runs;

  uint32_t KeyIndex(uint32_t i) const { return order.empty() ? i : order[i]; }
};

// Fills *out (reusing its memory). REQUIRES: keys.size() < 2^32.
TESSERA_EXPORT void GroupByVshard(absl::Span<const uint64_t> keys, uint32_t num_vshards,
                                  VshardGrouping* out);

// A key that occurs more than once in `keys`, if any. O(n) expected: linear probing in a table
// of at least twice as many slots as keys (0.4 ms for 100k keys; sorting took 2 ms, a
// flat_hash_set 1.9 ms). Allocates 9 bytes per slot. REQUIRES: keys.size() < 2^31.
TESSERA_EXPORT std::optional<uint64_t> FindRepeatedKey(absl::Span<const uint64_t> keys);
// The same for keys grouped by vshard: a key occurs in one vshard only, so each run is checked
// on its own, in a table sized for the largest run (a few KiB for typical requests, so it
// stays in the L1 cache; no clearing between runs). keys[order[i]] for i in a run's
// [begin, end) (order empty: the identity).
TESSERA_EXPORT std::optional<uint64_t> FindRepeatedKeyInRuns(absl::Span<const uint64_t> keys,
                                                             absl::Span<const uint32_t> order,
                                                             absl::Span<const VshardRun> runs);

}  // namespace tessera

#endif  // TESSERA_COMMON_SHARD_MAP_H_
