#include "server/count_min_sketch.h"

#include <catch2/catch.hpp>
#include <cstring>
#include <map>
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

// ---- ExactCounter (server/admission_counter.h) ----

TEST_CASE("the exact counter agrees with a map under random adds, forgets and agings",
          "[sketch][exact]") {
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    std::mt19937_64 rng(seed);
    const uint64_t capacity = 8 + rng() % 40;
    ExactCounter c(capacity, seed);
    std::map<uint64_t, uint32_t> model;
    uint64_t dropped = 0;
    for (int op = 0; op < 3000; ++op) {
      const uint64_t key = rng() % (capacity * 3);  // (collisions in a small table)
      if (rng() % 4 == 0) {
        c.Forget(key);
        model.erase(key);
      } else if (auto it = model.find(key); it != model.end()) {
        it->second = std::min<uint32_t>(it->second + 1, ExactCounter::kMaxCount);
        REQUIRE(c.Add(key) == it->second);
      } else {
        if (model.size() >= capacity) {  // full: every count halved, zeros dropped
          for (auto i = model.begin(); i != model.end();) {
            i->second >>= 1;
            i = i->second == 0 ? model.erase(i) : std::next(i);
          }
        }
        if (model.size() >= capacity) {
          ++dropped;
          REQUIRE(c.Add(key) == 0);
        } else {
          model[key] = 1;
          REQUIRE(c.Add(key) == 1);
        }
      }
      REQUIRE(c.size() == model.size());
      for (uint64_t k = 0; k < capacity * 3; ++k) {
        const auto it = model.find(k);
        REQUIRE(c.Count(k) == (it == model.end() ? 0 : it->second));
      }
    }
    CHECK(c.dropped() == dropped);
    // Its state reloads into a counter of the same shape, and nothing else.
    ExactCounter copy(capacity, seed);
    REQUIRE(copy.Load(c.Save()));
    CHECK(copy.Save() == c.Save());
    ExactCounter other(capacity * 4, seed);
    CHECK_FALSE(other.Load(c.Save()));
  }
}

TEST_CASE("the exact counter refuses a state that does not hold together", "[sketch][exact]") {
  ExactCounter c(16, 3);
  for (uint64_t k = 1; k <= 10; ++k) c.Add(k);
  const std::string state = c.Save();
  ExactCounter fresh(16, 3);
  std::string bad = state;
  bad[0] = static_cast<char>(bad[0] + 1);  // a size that is not the occupied slots'
  CHECK_FALSE(fresh.Load(bad));
  CHECK_FALSE(fresh.Load(state.substr(1)));
  CHECK(fresh.Count(7) == 0);  // (nothing changed)
  // Every key moved one slot on (past its home, with its home left empty): unreachable.
  const size_t slots = (state.size() - 16) / 10;
  std::string shifted = state;
  for (size_t i = 0; i < slots; ++i) {
    const size_t j = (i + 1) % slots;
    std::memcpy(shifted.data() + 16 + j * 8, state.data() + 16 + i * 8, 8);
    std::memcpy(shifted.data() + 16 + slots * 8 + j * 2, state.data() + 16 + slots * 8 + i * 2, 2);
  }
  CHECK_FALSE(fresh.Load(shifted));
  CHECK(fresh.Load(state));
  CHECK(fresh.Count(7) == 1);
}

}  // namespace
}  // namespace tessera
