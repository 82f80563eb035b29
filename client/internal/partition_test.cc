#include "client/internal/partition.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <map>
#include <set>

#include "common/hash.h"

namespace tessera::client_internal {
namespace {

TEST_CASE("sparse keys split by shard with every position exactly once", "[partition]") {
  std::vector<uint64_t> keys;
  for (uint64_t k = 0; k < 10007; ++k) keys.push_back(k * 0x9e3779b97f4a7c15ULL);
  for (uint32_t shards : {1u, 3u}) {
    absl::StatusOr<ShardMap> map = ShardMap::Uniform(1, shards);
    REQUIRE(map.ok());
    SparseSplit split = SplitSparseKeys(keys, *map, 1000);
    CHECK(!split.in_place());  // (more keys than one chunk holds)
    std::vector<int> seen(keys.size());
    uint32_t next = 0;
    for (const SparseChunk& c : split.chunks) {
      CHECK(c.count <= 1000);
      CHECK(c.count > 0);
      CHECK(c.first == next);  // the chunks tile the order
      next = c.first + c.count;
      for (uint32_t j = 0; j < c.count; ++j) {
        const uint32_t p = split.Position(c, j);
        REQUIRE(p < keys.size());
        ++seen[p];
        CHECK(split.keys[c.first + j] == keys[p]);
        CHECK(map->ShardOfKey(keys[p]) == c.shard);
        if (j > 0) {
          // Grouped by vshard, ascending; within a vshard in the caller's order.
          const uint32_t q = split.Position(c, j - 1);
          const uint32_t v = VshardOfKey(keys[p], map->num_vshards());
          const uint32_t w = VshardOfKey(keys[q], map->num_vshards());
          CHECK(v >= w);
          if (v == w) CHECK(p > q);
        }
      }
    }
    CHECK(next == keys.size());
    CHECK(std::all_of(seen.begin(), seen.end(), [](int n) { return n == 1; }));
  }
}

TEST_CASE("a vshard's keys stay in one chunk unless they alone are over the limit", "[partition]") {
  absl::StatusOr<ShardMap> map = ShardMap::Uniform(1, 2, 16);
  REQUIRE(map.ok());
  std::vector<uint64_t> keys;
  for (uint64_t k = 0; k < 1000; ++k) keys.push_back(k);
  for (uint32_t limit : {10u, 70u, 300u}) {
    SparseSplit split = SplitSparseKeys(keys, *map, limit);
    std::map<uint32_t, std::set<size_t>> chunks_of_vshard;
    std::map<uint32_t, uint32_t> keys_of_vshard;
    for (size_t c = 0; c < split.chunks.size(); ++c) {
      CHECK(split.chunks[c].count <= limit);
      for (uint32_t j = 0; j < split.chunks[c].count; ++j) {
        const uint32_t v = VshardOfKey(keys[split.Position(split.chunks[c], j)], 16);
        chunks_of_vshard[v].insert(c);
        ++keys_of_vshard[v];
      }
    }
    for (const auto& [v, in] : chunks_of_vshard) {
      if (keys_of_vshard[v] <= limit) {
        CHECK(in.size() == 1);
      } else {
        CHECK(in.size() == (keys_of_vshard[v] + limit - 1) / limit);
      }
    }
  }
}

TEST_CASE("keys that fit one chunk of one shard are sent in place", "[partition]") {
  absl::StatusOr<ShardMap> map = ShardMap::Uniform(1, 1);
  REQUIRE(map.ok());
  std::vector<uint64_t> keys = {5, 9, 1, 7};
  SparseSplit split = SplitSparseKeys(keys, *map, 4);
  REQUIRE(split.chunks.size() == 1);
  CHECK(split.in_place());
  CHECK(split.chunks[0].first == 0);
  CHECK(split.chunks[0].count == 4);
  CHECK(SplitSparseKeys(keys, *map, 3).chunks.size() == 2);
}

TEST_CASE("a repeated key is found wherever it sits and no chunk is made", "[partition]") {
  absl::StatusOr<ShardMap> map = ShardMap::Uniform(1, 3);
  REQUIRE(map.ok());
  std::vector<uint64_t> keys;
  for (uint64_t k = 0; k < 5000; ++k) keys.push_back(k * 0x9e3779b97f4a7c15ULL);
  std::optional<uint64_t> repeated;
  CHECK(SplitSparseKeys(keys, *map, 100, &repeated).chunks.size() > 3);
  CHECK(!repeated.has_value());
  for (size_t at : {size_t{0}, size_t{2500}, keys.size()}) {
    std::vector<uint64_t> with = keys;
    with.insert(with.begin() + at, keys[4321]);
    CHECK(SplitSparseKeys(with, *map, 100, &repeated).chunks.empty());
    REQUIRE(repeated.has_value());
    CHECK(*repeated == keys[4321]);
  }
}

// Checks that chunks tile [offset, offset + count) in order, stay within one owner each, and
// respect the size limit.
void CheckTiling(uint64_t size, uint32_t block, uint32_t shards, uint64_t offset, uint64_t count,
                 uint64_t limit) {
  absl::StatusOr<ShardMap> map = ShardMap::Uniform(1, shards);
  REQUIRE(map.ok());
  const uint64_t h = Fnv1a64("w");
  std::vector<DenseChunk> chunks = SplitDenseRange(h, size, block, *map, offset, count, limit);
  uint64_t pos = offset;
  for (const DenseChunk& c : chunks) {
    INFO("size " << size << " block " << block << " chunk at " << c.offset);
    CHECK(c.offset == pos);
    CHECK(c.count >= 1);
    CHECK(c.count <= limit);
    for (uint64_t b = c.offset / block; b <= (c.offset + c.count - 1) / block; ++b) {
      CHECK(map->ShardOf(VshardOfDenseBlock(h, b, map->num_vshards())) == c.shard);
    }
    pos += c.count;
  }
  CHECK(pos == offset + count);
}

TEST_CASE("dense ranges split at odd sizes", "[partition]") {
  CheckTiling(1000003, 4099, 3, 0, 1000003, 131072);
  CheckTiling(1000003, 4099, 3, 12345, 600001, 5000);
  CheckTiling(7, 4099, 2, 0, 7, 131072);
  CheckTiling(7, 4099, 2, 3, 1, 131072);
  CheckTiling(1 << 20, 1 << 17, 1, 0, 1 << 20, 1 << 17);  // 4 MiB: eight 512 KiB chunks
  CheckTiling(1 << 20, 1 << 20, 2, 0, 1 << 20, 1 << 17);  // a block larger than a chunk
  CheckTiling(999, 1, 5, 0, 999, 7);                      // one-element blocks
  CheckTiling(100, 3, 4, 99, 1, 2);                       // the last element alone

  absl::StatusOr<ShardMap> one = ShardMap::Uniform(1, 1);
  CHECK(SplitDenseRange(1, 1 << 20, 1 << 17, *one, 0, 1 << 20, 1 << 17).size() == 8);
  CHECK(SplitDenseRange(1, 10, 4, *one, 5, 0, 100).empty());
}

}  // namespace
}  // namespace tessera::client_internal
