#include "common/shard_map.h"

#include <algorithm>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

namespace tessera {

absl::StatusOr<ShardMap> ShardMap::Uniform(uint64_t epoch, uint32_t num_shards,
                                           uint32_t num_vshards) {
  if (num_shards == 0 || num_vshards == 0 || num_shards > num_vshards) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "shard map needs 1 <= num_shards <= num_vshards, got %u shards and %u vshards", num_shards,
        num_vshards));
  }
  std::vector<uint32_t> owner(num_vshards);
  for (uint32_t v = 0; v < num_vshards; ++v) {
    owner[v] = static_cast<uint32_t>(uint64_t{v} * num_shards / num_vshards);
  }
  return ShardMap(epoch, num_shards, std::move(owner));
}

void GroupByVshard(absl::Span<const uint64_t> keys, uint32_t num_vshards, VshardGrouping* out) {
  out->order.clear();
  out->runs.clear();
  const uint32_t n = static_cast<uint32_t>(keys.size());
  if (n == 0) return;
  // Fast path: the client already sends keys grouped by vshard in ascending order.
  std::vector<uint32_t> vs(n);
  bool grouped = true;
  for (uint32_t i = 0; i < n; ++i) {
    vs[i] = VshardOfKey(keys[i], num_vshards);
    if (i > 0 && vs[i] < vs[i - 1]) grouped = false;
  }
  if (grouped) {
    uint32_t begin = 0;
    for (uint32_t i = 1; i <= n; ++i) {
      if (i == n || vs[i] != vs[begin]) {
        out->runs.push_back({vs[begin], begin, i});
        begin = i;
      }
    }
    return;
  }
  std::vector<uint32_t> start(num_vshards + 1, 0);
  for (uint32_t i = 0; i < n; ++i) ++start[vs[i] + 1];
  for (uint32_t v = 0; v < num_vshards; ++v) {
    if (start[v + 1] > 0) out->runs.push_back({v, start[v], start[v] + start[v + 1]});
    start[v + 1] += start[v];
  }
  out->order.resize(n);
  for (uint32_t i = 0; i < n; ++i) out->order[start[vs[i]]++] = i;
}

std::optional<uint64_t> FindRepeatedKey(absl::Span<const uint64_t> keys) {
  int bits = 4;
  while ((size_t{1} << bits) < 2 * keys.size()) ++bits;
  const size_t mask = (size_t{1} << bits) - 1;
  std::vector<uint64_t> slots(mask + 1);
  std::vector<uint8_t> used(mask + 1, 0);
  for (const uint64_t k : keys) {
    uint64_t h = k ^ (k >> 33);  // (MurmurHash3's finalizer: any key pattern spreads)
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    for (size_t i = h >> (64 - bits);; i = (i + 1) & mask) {
      if (!used[i]) {
        used[i] = 1;
        slots[i] = k;
        break;
      }
      if (slots[i] == k) return k;
    }
  }
  return std::nullopt;
}

std::optional<uint64_t> FindRepeatedKeyInRuns(absl::Span<const uint64_t> keys,
                                              absl::Span<const uint32_t> order,
                                              absl::Span<const VshardRun> runs) {
  uint32_t longest = 0;
  for (const VshardRun& r : runs) longest = std::max(longest, r.end - r.begin);
  int bits = 4;
  while ((size_t{1} << bits) < 2 * size_t{longest}) ++bits;
  const size_t mask = (size_t{1} << bits) - 1;
  // A slot is in use for run r when stamp == r + 1: the next run starts with an empty table.
  std::unique_ptr<uint64_t[]> slots(new uint64_t[mask + 1]);
  std::vector<uint32_t> stamp(mask + 1, 0);
  for (uint32_t r = 0; r < runs.size(); ++r) {
    const uint32_t mark = r + 1;
    for (uint32_t i = runs[r].begin; i < runs[r].end; ++i) {
      const uint64_t k = keys[order.empty() ? i : order[i]];
      uint64_t h = k ^ (k >> 33);  // (as FindRepeatedKey)
      h *= 0xff51afd7ed558ccdULL;
      h ^= h >> 33;
      for (size_t s = h >> (64 - bits);; s = (s + 1) & mask) {
        if (stamp[s] != mark) {
          stamp[s] = mark;
          slots[s] = k;
          break;
        }
        if (slots[s] == k) return k;
      }
    }
  }
  return std::nullopt;
}

}  // namespace tessera
