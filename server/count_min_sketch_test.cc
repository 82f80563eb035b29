#include "server/count_min_sketch.h"

#include <catch2/catch.hpp>
#include <random>
#include <unordered_map>
#include <vector>

namespace tessera {
namespace {

TEST_CASE("a count-min sketch never counts a key low and is exact when keys are few", "[sketch]") {
  std::mt19937_64 rng(5);
  std::vector<uint64_t> keys;
  for (int i = 0; i < 5000; ++i) keys.push_back(rng());
  CountMinSketch crowded(1024, 4, 77), roomy(1 << 20, 4, 77);
  std::unordered_map<uint64_t, uint32_t> exact;
  for (int i = 0; i < 50000; ++i) {
    // Skewed: low indices far more often.
    const uint64_t key = keys[std::min<size_t>(rng() % keys.size(), rng() % keys.size())];
    const uint32_t n = ++exact[key];
    REQUIRE(crowded.Add(key) >= n);
    REQUIRE(roomy.Add(key) >= n);
  }
  size_t exact_in_roomy = 0, high_in_crowded = 0;
  for (const auto& [key, n] : exact) {
    REQUIRE(crowded.Estimate(key) >= n);
    exact_in_roomy += roomy.Estimate(key) == n;
    high_in_crowded += crowded.Estimate(key) > n;
  }
  CHECK(exact_in_roomy == exact.size());  // (5,000 keys in 2^20 counters: no key loses all 4)
  CHECK(high_in_crowded > 0);             // (and the crowded one does count high)
  CHECK(crowded.bytes() == 1024 * 4 * sizeof(uint16_t));
}

TEST_CASE("two sketches with the same seed and adds hold the same counters", "[sketch]") {
  std::mt19937_64 rng(9);
  CountMinSketch a(4096, 3, 1234, 3000), b(4096, 3, 1234, 3000), other(4096, 3, 4321, 3000);
  for (int i = 0; i < 20000; ++i) {
    const uint64_t key = rng() % 7000;
    CHECK(a.Add(key) == b.Add(key));
    other.Add(key);
  }
  CHECK(a.counters() == b.counters());
  CHECK(a.counters() != other.counters());  // (the seed chooses the counters)
}

TEST_CASE("aging halves every counter every aging_adds adds", "[sketch]") {
  CountMinSketch s(64, 2, 1, /*aging_adds=*/10);
  for (int i = 0; i < 9; ++i) s.Add(42);
  CHECK(s.Estimate(42) == 9);
  CHECK(s.adds() == 9);
  CHECK(s.Add(42) == 10);  // the tenth add counts, then the sketch ages
  CHECK(s.Estimate(42) == 5);
  CHECK(s.adds() == 0);
  s.Age();
  CHECK(s.Estimate(42) == 2);
}

TEST_CASE("counters saturate instead of wrapping", "[sketch]") {
  CountMinSketch s(16, 1, 3);
  for (uint32_t i = 0; i < CountMinSketch::kMaxCount + 10; ++i) s.Add(7);
  CHECK(s.Estimate(7) == CountMinSketch::kMaxCount);
  CHECK(s.Add(7) == CountMinSketch::kMaxCount);
}

TEST_CASE("odd widths round up to a power of two and depth is clamped", "[sketch]") {
  CountMinSketch s(1000, 99, 3);
  CHECK(s.width() == 1024);
  CHECK(s.depth() == CountMinSketch::kMaxDepth);
  CountMinSketch tiny(0, 0, 3);
  CHECK(tiny.width() == 2);
  CHECK(tiny.depth() == 1);
}

}  // namespace
}  // namespace tessera
