#include "client/internal/partition.h"

#include <algorithm>

namespace tessera::client_internal {

std::vector<SparseChunk> SplitSparseKeys(absl::Span<const uint64_t> keys, const ShardMap& map,
                                         uint32_t max_keys_per_chunk,
                                         std::optional<uint64_t>* repeated) {
  std::vector<SparseChunk> chunks;
  if (keys.empty()) return chunks;
  const uint32_t limit = std::max<uint32_t>(1, max_keys_per_chunk);
  const uint32_t n = static_cast<uint32_t>(keys.size());
  if (map.num_shards() == 1 && n <= limit) {
    if (repeated != nullptr) {
      *repeated = FindRepeatedKey(keys);
      if (repeated->has_value()) return chunks;
    }
    chunks.push_back({.shard = 0, .first = 0, .count = n});
    return chunks;
  }
  // Keys per vshard, then chunks as ranges of whole vshards of one shard (a vshard with more
  // than `limit` keys gets chunks of its own), then positions in vshard order.
  const uint32_t num_vshards = map.num_vshards();
  std::vector<uint32_t> vshard(n);
  std::vector<uint32_t> count(num_vshards, 0);
  for (uint32_t i = 0; i < n; ++i) ++count[vshard[i] = VshardOfKey(keys[i], num_vshards)];
  std::vector<uint32_t> chunk_of(num_vshards);      // the (first) chunk of each vshard
  std::vector<int64_t> open(map.num_shards(), -1);  // each shard's chunk being filled
  for (uint32_t v = 0; v < num_vshards; ++v) {
    if (count[v] == 0) continue;
    const uint32_t shard = map.ShardOf(v);
    if (count[v] > limit) {
      chunk_of[v] = static_cast<uint32_t>(chunks.size());
      for (uint32_t left = count[v]; left > 0; left -= std::min(left, limit)) {
        chunks.push_back({.shard = shard});
      }
      continue;
    }
    int64_t& c = open[shard];
    if (c < 0 || chunks[c].count + count[v] > limit) {
      c = static_cast<int64_t>(chunks.size());
      chunks.push_back({.shard = shard});
    }
    chunk_of[v] = static_cast<uint32_t>(c);
    chunks[c].count += count[v];
  }
  for (SparseChunk& c : chunks) c.positions.reserve(c.count > 0 ? c.count : limit);
  // (Positions in vshard order: a stable counting sort.)
  std::vector<uint32_t> start(num_vshards + 1, 0);
  for (uint32_t v = 0; v < num_vshards; ++v) start[v + 1] = start[v] + count[v];
  std::vector<uint32_t> by_vshard(n);
  for (uint32_t i = 0; i < n; ++i) by_vshard[start[vshard[i]]++] = i;
  if (repeated != nullptr) {  // (a repeated key is repeated within its vshard)
    std::vector<VshardRun> runs;
    for (uint32_t v = 0, begin = 0; v < num_vshards; begin += count[v], ++v) {
      if (count[v] > 0) runs.push_back({v, begin, begin + count[v]});
    }
    *repeated = FindRepeatedKeyInRuns(keys, by_vshard, runs);
    if (repeated->has_value()) return {};
  }
  for (uint32_t i : by_vshard) {
    const uint32_t v = vshard[i];
    uint32_t c = chunk_of[v];
    if (count[v] > limit) {
      while (chunks[c].positions.size() == limit) ++c;  // (a big vshard's chunks, in order)
    }
    chunks[c].positions.push_back(i);
  }
  for (SparseChunk& c : chunks) c.count = static_cast<uint32_t>(c.positions.size());
  return chunks;
}

std::vector<DenseChunk> SplitDenseRange(uint64_t table_hash, uint64_t table_size,
                                        uint32_t block_elems, const ShardMap& map, uint64_t offset,
                                        uint64_t count, uint64_t max_elems_per_chunk) {
  std::vector<DenseChunk> chunks;
  const uint64_t end = std::min(offset + count, table_size);
  const uint64_t limit = std::max<uint64_t>(1, max_elems_per_chunk);
  uint64_t pos = offset;
  while (pos < end) {
    const uint64_t block = pos / block_elems;
    const uint32_t shard = map.ShardOf(VshardOfDenseBlock(table_hash, block, map.num_vshards()));
    const uint64_t piece_end = std::min(end, (block + 1) * block_elems);
    // Extend the last chunk when it is on the same shard, adjacent and not full.
    if (!chunks.empty() && chunks.back().shard == shard &&
        chunks.back().offset + chunks.back().count == pos && chunks.back().count < limit) {
      const uint64_t take = std::min(piece_end - pos, limit - chunks.back().count);
      chunks.back().count += take;
      pos += take;
      continue;
    }
    const uint64_t take = std::min(piece_end - pos, limit);
    chunks.push_back({shard, pos, take});
    pos += take;
  }
  return chunks;
}

}  // namespace tessera::client_internal
