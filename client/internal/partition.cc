#include "client/internal/partition.h"

#include <algorithm>

namespace tessera::client_internal {

SparseSplit SplitSparseKeys(absl::Span<const uint64_t> keys, const ShardMap& map,
                            uint32_t max_keys_per_chunk, std::optional<uint64_t>* repeated) {
  SparseSplit split;
  if (keys.empty()) return split;
  const uint32_t limit = std::max<uint32_t>(1, max_keys_per_chunk);
  const uint32_t n = static_cast<uint32_t>(keys.size());
  if (map.num_shards() == 1 && n <= limit) {
    if (repeated != nullptr) {
      *repeated = FindRepeatedKey(keys);
      if (repeated->has_value()) return split;
    }
    split.chunks.push_back({.shard = 0, .first = 0, .count = n});
    return split;
  }
  // Keys per vshard; the vshards shard by shard (ascending within one); chunks as ranges of
  // whole vshards of one shard in that order (a vshard with more than `limit` keys gets chunks
  // of its own), so every chunk is a contiguous range of the order.
  const uint32_t num_vshards = map.num_vshards();
  std::vector<uint32_t> vshard(n);
  std::vector<uint32_t> count(num_vshards, 0);
  for (uint32_t i = 0; i < n; ++i) ++count[vshard[i] = VshardOfKey(keys[i], num_vshards)];
  std::vector<uint32_t> shard_start(map.num_shards() + 1, 0);
  for (uint32_t v = 0; v < num_vshards; ++v) ++shard_start[map.ShardOf(v) + 1];
  for (uint32_t s = 0; s < map.num_shards(); ++s) shard_start[s + 1] += shard_start[s];
  std::vector<uint32_t> by_shard(num_vshards);  // vshards, shard by shard
  for (uint32_t v = 0; v < num_vshards; ++v) by_shard[shard_start[map.ShardOf(v)]++] = v;
  std::vector<uint32_t> start(num_vshards);  // where each vshard's keys begin in the order
  std::vector<VshardRun> runs;
  uint32_t pos = 0;
  int64_t open = -1;  // the chunk being filled (of the shard of the last vshard)
  for (uint32_t v : by_shard) {
    const uint32_t c = count[v];
    if (c == 0) continue;
    const uint32_t shard = map.ShardOf(v);
    start[v] = pos;
    if (repeated != nullptr) runs.push_back({v, pos, pos + c});
    if (c > limit) {
      for (uint32_t left = c, at = pos; left > 0;) {
        const uint32_t take = std::min(left, limit);
        split.chunks.push_back({.shard = shard, .first = at, .count = take});
        left -= take;
        at += take;
      }
      open = -1;
    } else {
      if (open < 0 || split.chunks[open].shard != shard || split.chunks[open].count + c > limit) {
        open = static_cast<int64_t>(split.chunks.size());
        split.chunks.push_back({.shard = shard, .first = pos, .count = 0});
      }
      split.chunks[open].count += c;
    }
    pos += c;
  }
  // One pass over the caller's keys in order (a stable counting sort): each key's position and
  // the key itself to their place.
  split.order.reset(new uint32_t[n]);  // (not zeroed first: every element is written)
  split.keys.reset(new uint64_t[n]);
  uint32_t* order = split.order.get();
  uint64_t* packed = split.keys.get();
  for (uint32_t i = 0; i < n; ++i) {
    const uint32_t at = start[vshard[i]]++;
    order[at] = i;
    packed[at] = keys[i];
  }
  if (repeated != nullptr) {  // (a repeated key is repeated within its vshard)
    *repeated = FindRepeatedKeyInRuns(absl::MakeConstSpan(packed, n), {}, runs);
    if (repeated->has_value()) return {};
  }
  return split;
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
