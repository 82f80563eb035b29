// How the client splits one call into per-server RPCs. Pure functions; unit-tested at odd
// sizes in partition_test.cc.
#ifndef TESSERA_CLIENT_INTERNAL_PARTITION_H_
#define TESSERA_CLIENT_INTERNAL_PARTITION_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/types/span.h"
#include "common/shard_map.h"

namespace tessera::client_internal {

// Keys for one RPC: positions into the caller's key array. When `positions` is empty the
// chunk is the contiguous range [first, first + count): keys and values are then sent from,
// and land in, the caller's buffers in place.
struct SparseChunk {
  uint32_t shard = 0;
  uint32_t first = 0;
  uint32_t count = 0;
  std::vector<uint32_t> positions;

  bool contiguous() const { return positions.empty(); }
  uint32_t Position(uint32_t j) const { return contiguous() ? first + j : positions[j]; }
};

// Splits `keys` by owning shard into chunks of at most max_keys_per_chunk keys. A chunk holds
// whole vshards (a range of them, unless one vshard alone is over the limit), its keys grouped
// by vshard in ascending order: the server touches few vshards per request, each with many
// keys, in the order it applies them. (Measured on `tessera bench`'s 100k-key calls, one
// server: chunks of the caller's order, each spanning every vshard, made pulls and pushes about
// 1.07x slower, even though they are sent and filled in place.) Keys that all fit one
// chunk of one shard are sent as they are, from the caller's array.
// With `repeated` set, keys must be distinct: when one occurs twice, *repeated holds it and no
// chunk is returned (a push must not reach some shards and be refused by another).
std::vector<SparseChunk> SplitSparseKeys(absl::Span<const uint64_t> keys, const ShardMap& map,
                                         uint32_t max_keys_per_chunk,
                                         std::optional<uint64_t>* repeated = nullptr);

// A contiguous element range for one RPC.
struct DenseChunk {
  uint32_t shard;
  uint64_t offset;
  uint64_t count;
};

// Splits [offset, offset + count) of a dense table (blocks of block_elems elements, block b on
// vshard VshardOfDenseBlock(table_hash, b)) into per-shard ranges of at most max_elems_per_chunk
// elements. Neighbouring blocks on the same shard are merged. Chunks come out in offset order.
std::vector<DenseChunk> SplitDenseRange(uint64_t table_hash, uint64_t table_size,
                                        uint32_t block_elems, const ShardMap& map, uint64_t offset,
                                        uint64_t count, uint64_t max_elems_per_chunk);

}  // namespace tessera::client_internal

#endif  // TESSERA_CLIENT_INTERNAL_PARTITION_H_
