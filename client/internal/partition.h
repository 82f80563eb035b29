// How the client splits one call into per-server RPCs. Pure functions; unit-tested at odd
// sizes in partition_test.cc.
#ifndef TESSERA_CLIENT_INTERNAL_PARTITION_H_
#define TESSERA_CLIENT_INTERNAL_PARTITION_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/types/span.h"
#include "common/shard_map.h"

namespace tessera::client_internal {

// Keys for one RPC: a range [first, first + count) of its split's order (of the caller's
// keys themselves when the split has no order).
struct SparseChunk {
  uint32_t shard = 0;
  uint32_t first = 0;
  uint32_t count = 0;
};

// A sparse call split into per-shard RPCs.
struct SparseSplit {
  std::vector<SparseChunk> chunks;
  // Positions of the caller's keys, in the order the chunks take them (shard by shard, each
  // shard's vshards ascending, a vshard's keys in the caller's order), and the keys in that
  // order. Both null when the call is one chunk of the caller's keys as they are (sent from,
  // and landing in, the caller's buffers in place).
  std::shared_ptr<uint32_t[]> order;
  std::shared_ptr<uint64_t[]> keys;

  bool in_place() const { return order == nullptr; }
  // The caller's position of key j of chunk c.
  uint32_t Position(const SparseChunk& c, uint32_t j) const {
    return in_place() ? c.first + j : order[c.first + j];
  }
};

// Splits `keys` by owning shard into chunks of at most max_keys_per_chunk keys. A chunk holds
// whole vshards (a range of them, unless one vshard alone is over the limit), its keys grouped
// by vshard in ascending order: the server touches few vshards per request, each with many
// keys, in the order it applies them. (Measured on `tessera bench`'s 100k-key calls, one
// server: chunks of the caller's order, each spanning every vshard, made pulls and pushes about
// 1.07x slower, even though they are sent and filled in place.) Keys that all fit one chunk of
// one shard are sent as they are, from the caller's array. The keys are regrouped in one pass
// that reads the caller's keys in order, so that a chunk's keys are a contiguous range.
// With `repeated` set, keys must be distinct: when one occurs twice, *repeated holds it and no
// chunk is returned (a push must not reach some shards and be refused by another).
SparseSplit SplitSparseKeys(absl::Span<const uint64_t> keys, const ShardMap& map,
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
