#include "common/shard_map.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <map>
#include <set>
#include <vector>

namespace tessera {
namespace {

TEST_CASE("the key hash is part of the wire contract and never changes", "[shard_map]") {
  // Pinned values: changing Mix64 or VshardOfKey breaks every existing cluster and checkpoint.
  CHECK(Mix64(0) == 0);
  CHECK(Mix64(1) == 0x5692161d100b05e5ULL);
  CHECK(VshardOfKey(1, 1024) == (0x5692161d100b05e5ULL % 1024));
  CHECK(Fnv1a64("") == 0xcbf29ce484222325ULL);
  CHECK(Fnv1a64("a") == 0xaf63dc4c8601ec8cULL);
}

TEST_CASE("uniform maps give contiguous and balanced vshard ranges", "[shard_map]") {
  for (uint32_t shards : {1u, 2u, 3u, 7u, 1024u}) {
    absl::StatusOr<ShardMap> m = ShardMap::Uniform(3, shards);
    REQUIRE(m.ok());
    CHECK(m->epoch() == 3);
    std::vector<int> count(shards);
    for (uint32_t v = 0; v < m->num_vshards(); ++v) {
      ++count[m->ShardOf(v)];
      if (v > 0) CHECK(m->ShardOf(v) >= m->ShardOf(v - 1));
    }
    const auto [lo, hi] = std::minmax_element(count.begin(), count.end());
    CHECK(*hi - *lo <= 1);
  }
  CHECK_FALSE(ShardMap::Uniform(1, 0).ok());
  CHECK_FALSE(ShardMap::Uniform(1, 5, 4).ok());
}

TEST_CASE("keys spread over vshards", "[shard_map]") {
  std::vector<int> count(1024);
  for (uint64_t k = 0; k < 1024 * 100; ++k) ++count[VshardOfKey(k, 1024)];
  const auto [lo, hi] = std::minmax_element(count.begin(), count.end());
  CHECK(*lo > 50);
  CHECK(*hi < 160);
}

// Reference grouping: vshard -> keys in input order.
std::map<uint32_t, std::vector<uint32_t>> Reference(const std::vector<uint64_t>& keys) {
  std::map<uint32_t, std::vector<uint32_t>> m;
  for (uint32_t i = 0; i < keys.size(); ++i) m[VshardOfKey(keys[i], 64)].push_back(i);
  return m;
}

TEST_CASE("grouping by vshard sorted or not", "[shard_map]") {
  std::vector<uint64_t> keys;
  for (uint64_t k = 0; k < 500; ++k) keys.push_back(k * 2654435761ULL);
  keys.push_back(keys[3]);  // a repeat
  for (bool presorted : {false, true}) {
    if (presorted) {
      std::stable_sort(keys.begin(), keys.end(), [](uint64_t a, uint64_t b) {
        return VshardOfKey(a, 64) < VshardOfKey(b, 64);
      });
    }
    VshardGrouping g;
    GroupByVshard(keys, 64, &g);
    CHECK(g.order.empty() == presorted);
    std::map<uint32_t, std::vector<uint32_t>> got;
    uint32_t covered = 0;
    for (const VshardRun& run : g.runs) {
      for (uint32_t j = run.begin; j < run.end; ++j) got[run.vshard].push_back(g.KeyIndex(j));
      covered += run.end - run.begin;
    }
    CHECK(covered == keys.size());
    CHECK(got == Reference(keys));
  }
  VshardGrouping empty;
  GroupByVshard({}, 64, &empty);
  CHECK(empty.runs.empty());
}

}  // namespace
TEST_CASE("a repeated key is found, grouped by vshard or not", "[shard_map]") {
  for (uint32_t n : {1u, 2u, 17u, 1000u, 100000u}) {
    std::vector<uint64_t> keys(n);
    for (uint32_t i = 0; i < n; ++i) keys[i] = uint64_t{i} * 0x9e3779b97f4a7c15ULL + 3;
    for (uint32_t vshards : {1u, 7u, 1024u}) {
      INFO(n << " keys, " << vshards << " vshards");
      VshardGrouping g;
      GroupByVshard(keys, vshards, &g);
      CHECK_FALSE(FindRepeatedKey(keys).has_value());
      CHECK_FALSE(FindRepeatedKeyInRuns(keys, g.order, g.runs).has_value());
      if (n < 2) continue;
      // Repeat one key at the end, at the start, and in the middle.
      for (uint32_t at : {n - 1, 0u, n / 2}) {
        std::vector<uint64_t> with = keys;
        with[at] = keys[(at + n / 3 + 1) % n];
        if (with[at] == keys[at]) continue;
        GroupByVshard(with, vshards, &g);
        std::optional<uint64_t> a = FindRepeatedKey(with),
                                b = FindRepeatedKeyInRuns(with, g.order, g.runs);
        REQUIRE(a.has_value());
        REQUIRE(b.has_value());
        CHECK(*a == with[at]);
        CHECK(*b == with[at]);
      }
    }
  }
}

TEST_CASE("dense blocks of even a small tensor spread over every shard", "[shard_map]") {
  // Pinned: the placement is part of the wire contract and of checkpoint files.
  CHECK(VshardOfDenseBlock(0, 0, 1024) == 0);
  CHECK(VshardOfDenseBlock(0, 1, 1024) == 632);  // floor(0.6180339887 * 1024)
  for (uint32_t shards : {2u, 3u, 4u}) {
    absl::StatusOr<ShardMap> map = ShardMap::Uniform(1, shards);
    REQUIRE(map.ok());
    for (const char* table : {"w", "mlp.w0", "ctr.b1"}) {
      std::set<uint32_t> seen;
      for (uint64_t b = 0; b < 3 * shards; ++b) {
        seen.insert(map->ShardOf(VshardOfDenseBlock(Fnv1a64(table), b, map->num_vshards())));
      }
      INFO(table << " over " << shards << " shards");
      // N golden-ratio points leave no gap wider than about 2.618 / N of the range, so 3
      // blocks per shard reach every shard's range.
      CHECK(seen.size() == shards);
    }
  }
}

}  // namespace tessera
