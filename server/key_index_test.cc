#include "server/key_index.h"

#include <catch2/catch.hpp>
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

}  // namespace
}  // namespace tessera
