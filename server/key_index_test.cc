#include "common/key_index.h"

#include <catch2/catch.hpp>
#include <map>
#include <random>
#include <set>
#include <vector>

namespace tessera {
namespace {

TEST_CASE("the key index finds every key it was given and no other", "[key_index]") {
  std::mt19937_64 rng(7);
  for (uint64_t seed : {uint64_t{0}, uint64_t{12345}, rng()}) {
    KeyIndex index(seed);
    CHECK(index.Find(0) == KeyIndex::kNone);  // empty: no slots at all
    std::vector<uint64_t> keys = {0, ~uint64_t{0}, 1};
    for (int i = 0; i < 20000; ++i) keys.push_back(rng());
    for (uint32_t id = 0; id < keys.size(); ++id) {
      REQUIRE(index.Find(keys[id]) == KeyIndex::kNone);
      index.Insert(keys[id], id);
      REQUIRE(index.Find(keys[id]) == id);
      REQUIRE(index.size() == id + 1);
      // What SparseTable charges per row is an upper bound at every size.
      REQUIRE(index.bytes() <= 43 * index.size());
      REQUIRE(index.size() * 4 <= index.capacity() * 3);
    }
    for (uint32_t id = 0; id < keys.size(); ++id) CHECK(index.Find(keys[id]) == id);
    for (int i = 0; i < 1000; ++i) CHECK(index.Find(rng()) == KeyIndex::kNone);
    std::set<uint32_t> seen;
    index.ForEach([&](uint64_t key, uint32_t id) {
      REQUIRE(id < keys.size());
      CHECK(keys[id] == key);
      CHECK(seen.insert(id).second);
    });
    CHECK(seen.size() == keys.size());
  }
}

TEST_CASE("keys that share the vshard hash's low bits spread over the index", "[key_index]") {
  // Every key of one vshard has the same Mix64(key) % num_vshards: the slot must come from
  // other bits, or one vshard's index would be a single probe chain.
  KeyIndex index(99);
  std::vector<uint64_t> keys;
  for (uint64_t k = 0; keys.size() < 4096; ++k) {
    if (Mix64(k) % 1024 == 5) keys.push_back(k);
  }
  for (uint32_t id = 0; id < keys.size(); ++id) index.Insert(keys[id], id);
  // Linear probing from spread homes at load <= 3/4: about 2.5 slots per lookup on average.
  size_t probes = 0;
  for (uint32_t id = 0; id < keys.size(); ++id) {
    REQUIRE(index.Find(keys[id]) == id);
    probes += index.Probes(keys[id]);
  }
  CHECK(static_cast<double>(probes) / keys.size() < 3.0);
}

TEST_CASE("erased keys are gone and every other key stays reachable", "[key_index]") {
  // Random inserts and erases against a std::map, on keys that crowd few homes (long probe
  // runs that wrap around the end of the slots), checked after every change.
  std::mt19937_64 rng(11);
  for (int round = 0; round < 20; ++round) {
    KeyIndex index(rng());
    std::map<uint64_t, uint32_t> model;
    std::vector<uint64_t> pool;
    for (int i = 0; i < 48; ++i) pool.push_back(rng() % 1000);
    uint32_t next_id = 0;
    for (int op = 0; op < 400; ++op) {
      const uint64_t key = pool[rng() % pool.size()];
      if (rng() % 3 != 0 && !model.contains(key)) {
        index.Insert(key, next_id);
        model[key] = next_id++;
      } else {
        const auto it = model.find(key);
        REQUIRE(index.Erase(key) == (it == model.end() ? KeyIndex::kNone : it->second));
        if (it != model.end()) model.erase(it);
      }
      REQUIRE(index.size() == model.size());
      for (uint64_t k : pool) {
        const auto it = model.find(k);
        REQUIRE(index.Find(k) == (it == model.end() ? KeyIndex::kNone : it->second));
      }
    }
  }
  KeyIndex empty(1);
  CHECK(empty.Erase(5) == KeyIndex::kNone);
}

TEST_CASE("erasing shortens the probe chains of the keys that stay", "[key_index]") {
  // Backward shift moves later keys of a run toward their homes: no key's chain grows, and
  // some shrink (a deletion that only emptied the slot would break chains instead: the
  // randomized case above catches that).
  std::mt19937_64 rng(3);
  KeyIndex index(42);
  std::vector<uint64_t> keys;
  for (int i = 0; i < 3000; ++i) keys.push_back(rng());
  for (uint32_t id = 0; id < keys.size(); ++id) index.Insert(keys[id], id);
  std::vector<size_t> before(keys.size());
  for (uint32_t id = 1; id < keys.size(); id += 2) before[id] = index.Probes(keys[id]);
  for (uint32_t id = 0; id < keys.size(); id += 2) REQUIRE(index.Erase(keys[id]) == id);
  size_t sum_before = 0, sum_after = 0;
  for (uint32_t id = 1; id < keys.size(); id += 2) {
    REQUIRE(index.Find(keys[id]) == id);
    const size_t after = index.Probes(keys[id]);
    CHECK(after <= before[id]);
    sum_before += before[id];
    sum_after += after;
  }
  CHECK(sum_after < sum_before);
}

}  // namespace
}  // namespace tessera
