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

// Keys for one RPC: positions into the caller's key array, grouped by vshard in ascending order
// (the order the server processes them in, lock by lock).
struct SparseChunk {
  uint32_t shard;
  std::vector<uint32_t> positions;
};

// Splits `keys` by owning shard into chunks of about max_keys_per_chunk keys. With
// keep_vshards_whole, every vshard's keys stay in one chunk (a chunk may then exceed the
// target by one vshard's keys), so the server sees every copy of a key in one request.
// With `repeated` set, keys must be distinct: when one occurs twice, *repeated holds it and no
// chunk is returned (a push must not reach some shards and be refused by another).
std::vector<SparseChunk> SplitSparseKeys(absl::Span<const uint64_t> keys, const ShardMap& map,
                                         uint32_t max_keys_per_chunk, bool keep_vshards_whole,
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
