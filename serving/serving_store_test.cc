// The serving store and the stream codec (docs/online_serving.md): versions applied by delta
// and in full, gaps, digests, the memory limit, rollback, lookups that never see two versions,
// and versions carried through the stream's events.
#include "serving/serving_store.h"

#include <atomic>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>

#include "absl/strings/match.h"
#include "catch2/catch.hpp"
#include "common/shard_map.h"
#include "serving.pb.h"
#include "serving/stream_codec.h"

namespace tessera::serving {
namespace {

constexpr uint32_t kVshards = 8;

TableConfig Sparse(const std::string& name, uint32_t dim) {
  TableConfig c{.name = name, .kind = TableKind::kSparse, .dim = dim};
  c.initializer.kind = InitializerKind::kUniform;
  c.initializer.seed = 7;
  return *ResolveTableConfig(c);
}

TableConfig Dense(const std::string& name, uint64_t size, uint32_t block) {
  TableConfig c{
      .name = name, .kind = TableKind::kDense, .dense_size = size, .dense_block_elems = block};
  return *ResolveTableConfig(c);
}

// Rows for `keys` whose weights are f(key, column), grouped by vshard as a source would.
TableDelta Rows(const TableConfig& config, bool full, const std::vector<uint64_t>& keys, float salt,
                const std::vector<uint64_t>& tombstones = {}) {
  TableDelta t{.config = config, .full = full};
  const uint32_t width = RowWidth(config);
  std::map<uint32_t, VshardDelta> by;
  for (uint64_t k : keys) {
    const uint32_t v = config.kind == TableKind::kSparse ? VshardOfKey(k, kVshards)
                                                         : static_cast<uint32_t>(k % kVshards);
    VshardDelta& d = by[v];
    d.vshard = v;
    d.keys.push_back(k);
    for (uint32_t c = 0; c < width; ++c) d.weights.push_back(salt + k * 0.25f + c);
  }
  for (uint64_t k : tombstones) {
    const uint32_t v = VshardOfKey(k, kVshards);
    by[v].vshard = v;
    by[v].tombstones.push_back(k);
  }
  for (auto& [v, d] : by) t.vshards.push_back(std::move(d));
  return t;
}

VersionDelta Version(uint64_t version, uint64_t parent, std::vector<TableDelta> tables) {
  return {.version = version,
          .parent = parent,
          .created_unix_ms = 1000 * int64_t(version),
          .num_vshards = kVshards,
          .tables = std::move(tables)};
}

std::vector<uint64_t> Range(uint64_t from, uint64_t to) {
  std::vector<uint64_t> out;
  for (uint64_t k = from; k < to; ++k) out.push_back(k);
  return out;
}

std::vector<TableDigest> Digests(const ServingStore& store) {
  const absl::Status verified = store.Verify();
  INFO(verified.ToString());
  CHECK(verified.ok());
  std::vector<TableDigest> out;
  for (const ServedTable& t : store.Status().tables) {
    out.push_back({t.config.name, t.digest, t.rows});
  }
  return out;
}

uint64_t Served(const ServingStore& store) { return store.Status().version; }

struct Looked {
  uint64_t version;
  std::vector<float> values;
  std::vector<bool> found;
};

Looked LookupAll(const ServingStore& store, const std::string& table,
                 const std::vector<uint64_t>& keys, uint64_t version = 0) {
  std::string values, found;
  absl::StatusOr<LookupResult> r =
      store.Lookup(table, keys.data(), keys.size(), version, &values, &found);
  REQUIRE(r.ok());
  Looked out{r->version, std::vector<float>(values.size() / 4), {}};
  std::memcpy(out.values.data(), values.data(), values.size());
  for (size_t i = 0; i < keys.size(); ++i) out.found.push_back((found[i / 8] >> (i % 8)) & 1);
  return out;
}

TEST_CASE("a delta on a version equals the same rows applied in full") {
  const TableConfig emb = Sparse("emb", 4);
  ServingStore by_delta({});
  REQUIRE(by_delta.Apply(Version(1, 0, {Rows(emb, true, Range(0, 1000), 0)})).ok());
  // Version 2 changes keys 500..1499 and removes 0..99.
  REQUIRE(
      by_delta.Apply(Version(2, 1, {Rows(emb, false, Range(500, 1500), 9, Range(0, 100))})).ok());
  ServingStore in_full({});
  TableDelta whole = Rows(emb, true, Range(100, 500), 0);
  TableDelta changed = Rows(emb, true, Range(500, 1500), 9);
  // (merged per vshard)
  for (VshardDelta& c : changed.vshards) {
    auto it = std::find_if(whole.vshards.begin(), whole.vshards.end(),
                           [&](const VshardDelta& w) { return w.vshard == c.vshard; });
    it->keys.insert(it->keys.end(), c.keys.begin(), c.keys.end());
    it->weights.insert(it->weights.end(), c.weights.begin(), c.weights.end());
  }
  REQUIRE(in_full.Apply(Version(2, 0, {whole})).ok());
  CHECK(Digests(by_delta) == Digests(in_full));
  CHECK(Digests(by_delta)[0].rows == 1400);
  // A full version on a version held keeps only what differs: 500 rows changed, 500 new, 100
  // removed.
  ServingStore full_on_held({});
  REQUIRE(full_on_held.Apply(Version(1, 0, {Rows(emb, true, Range(0, 1000), 0)})).ok());
  REQUIRE(full_on_held.Apply(Version(2, 0, {whole})).ok());
  CHECK(Digests(full_on_held) == Digests(in_full));
  std::shared_ptr<const VersionDelta> full;
  std::vector<std::shared_ptr<const VersionDelta>> deltas = full_on_held.DeltasAfter(1, &full);
  REQUIRE(deltas.size() == 1);
  size_t rows = 0, tombstones = 0;
  for (const VshardDelta& v : deltas[0]->tables[0].vshards) {
    rows += v.keys.size();
    tombstones += v.tombstones.size();
  }
  CHECK(rows == 1000);
  CHECK(tombstones == 100);

  const Looked a = LookupAll(by_delta, "emb", Range(0, 1600));
  const Looked b = LookupAll(in_full, "emb", Range(0, 1600));
  CHECK(a.version == 2);
  CHECK(std::memcmp(a.values.data(), b.values.data(), a.values.size() * 4) == 0);
  CHECK(a.found == b.found);
  CHECK_FALSE(a.found[50]);  // removed
  CHECK(a.found[200]);       // kept from version 1
  CHECK(a.values[200 * 4] == 0 + 200 * 0.25f);
  CHECK(a.values[700 * 4 + 1] == 9 + 700 * 0.25f + 1);  // changed
  CHECK_FALSE(a.found[1550]);                           // never had a row: the initializer's values
  float init[4];
  Initializer(emb.initializer).FillRow(1550, init, 4);
  CHECK(std::memcmp(&a.values[1550 * 4], init, sizeof(init)) == 0);
}

TEST_CASE("a version refused changes nothing: a gap a digest the memory limit") {
  const TableConfig emb = Sparse("emb", 8);
  ServingStore store({.keep_versions = 4, .max_memory_bytes = 4 << 20});
  REQUIRE(store.Apply(Version(1, 0, {Rows(emb, true, Range(0, 1000), 0)})).ok());
  const std::vector<TableDigest> before = Digests(store);
  const int64_t bytes = store.bytes();

  absl::Status gap = store.Apply(Version(3, 2, {Rows(emb, false, Range(0, 10), 5)}));
  CHECK(gap.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(std::string(gap.message()).find("gap") != std::string::npos);

  VersionDelta wrong = Version(2, 1, {Rows(emb, false, Range(0, 10), 5)});
  absl::Status digest = store.Apply(wrong, {{"emb", 12345, 1000}});
  CHECK(digest.code() == absl::StatusCode::kDataLoss);

  absl::Status big = store.Apply(Version(2, 1, {Rows(emb, false, Range(0, 200000), 5)}));
  CHECK(big.code() == absl::StatusCode::kResourceExhausted);
  CHECK(std::string(big.message()).find("max_memory_bytes") != std::string::npos);

  absl::Status old = store.Apply(Version(1, 0, {Rows(emb, true, Range(0, 10), 5)}));
  CHECK(old.code() == absl::StatusCode::kFailedPrecondition);

  absl::Status unknown = store.Apply(Version(2, 1, {Rows(Sparse("other", 8), false, {1}, 5)}));
  CHECK(unknown.code() == absl::StatusCode::kFailedPrecondition);

  CHECK(Served(store) == 1);
  CHECK(Digests(store) == before);
  CHECK(store.bytes() == bytes);
  CHECK(store.refused_total() == 5);
  // The right version still applies.
  CHECK(store.Apply(Version(2, 1, {Rows(emb, false, Range(0, 10), 5)})).ok());
}

TEST_CASE("rollback serves a kept version until resume and new versions wait for it") {
  const TableConfig emb = Sparse("emb", 2);
  ServingStore store({.keep_versions = 3});
  REQUIRE(store.Apply(Version(1, 0, {Rows(emb, true, Range(0, 100), 1)})).ok());
  for (uint64_t v = 2; v <= 5; ++v) {
    // Version v sets keys 0..49 to v; version 4 also removes key 77.
    std::vector<uint64_t> removed;
    if (v == 4) removed = {77};
    REQUIRE(
        store.Apply(Version(v, v - 1, {Rows(emb, false, Range(0, 50), float(v), removed)})).ok());
  }
  CHECK(store.Status().kept_versions == std::vector<uint64_t>{2, 3, 4, 5});
  CHECK(store.Rollback(1).code() == absl::StatusCode::kFailedPrecondition);
  // At a kept version through the records, the served one unchanged.
  CHECK(LookupAll(store, "emb", {5}, 3).values[0] == 3 + 5 * 0.25f);
  CHECK(LookupAll(store, "emb", {77}, 3).found[0]);
  CHECK_FALSE(LookupAll(store, "emb", {77}, 4).found[0]);
  CHECK(LookupAll(store, "emb", {60}, 2).values[0] == 1 + 60 * 0.25f);
  CHECK(Served(store) == 5);

  REQUIRE(store.Rollback(3).ok());
  const Looked at3 = LookupAll(store, "emb", {5, 77});
  CHECK(at3.version == 3);
  CHECK(at3.values[0] == 3 + 5 * 0.25f);
  CHECK(at3.found[1]);
  CHECK(Digests(store)[0].rows == 100);
  // Versions after the served one, read through the records while pinned.
  CHECK(LookupAll(store, "emb", {5}, 5).values[0] == 5 + 5 * 0.25f);
  // A new version waits for Resume; the served one does not move.
  REQUIRE(store.Apply(Version(6, 5, {Rows(emb, false, Range(0, 50), 6)})).ok());
  CHECK(Served(store) == 3);
  CHECK(store.Status().newest_version == 6);
  CHECK(store.Apply(Version(8, 7, {})).code() == absl::StatusCode::kFailedPrecondition);
  CHECK(*store.Resume() == 6);
  const Looked at6 = LookupAll(store, "emb", {5, 77});
  CHECK(at6.version == 6);
  CHECK(at6.values[0] == 6 + 5 * 0.25f);
  CHECK_FALSE(at6.found[1]);
  CHECK(Digests(store)[0].rows == 99);
}

TEST_CASE("lookups during applies each see one whole version") {
  // Version v writes v into every row: a lookup that mixed two versions would show two values.
  const TableConfig emb = Sparse("emb", 4);
  const std::vector<uint64_t> keys = Range(0, 512);
  auto version = [&](uint64_t v) {
    TableDelta t = Rows(emb, v == 1, keys, 0);
    for (VshardDelta& d : t.vshards) std::fill(d.weights.begin(), d.weights.end(), float(v));
    return Version(v, v - 1, {t});
  };
  ServingStore store({.keep_versions = 2});
  REQUIRE(store.Apply(version(1)).ok());
  std::atomic<bool> done{false};
  std::atomic<int> torn{0}, lookups{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r) {
    readers.emplace_back([&] {
      while (!done.load()) {
        const Looked l = LookupAll(store, "emb", keys);
        for (float x : l.values) {
          if (x != float(l.version)) ++torn;
        }
        ++lookups;
      }
    });
  }
  for (uint64_t v = 2; v <= 300; ++v) REQUIRE(store.Apply(version(v)).ok());
  done = true;
  for (auto& t : readers) t.join();
  CHECK(torn.load() == 0);
  CHECK(lookups.load() > 0);
  CHECK(LookupAll(store, "emb", keys).version == 300);
}

TEST_CASE("dense tables are served whole with the last block partial") {
  const TableConfig w = Dense("w", 10, 4);  // blocks of 4, 4, 2
  ServingStore store({});
  TableDelta t{.config = w, .full = true};
  // Block 0 in vshard 0, block 2 in vshard 3; block 1 missing: the initializer's (zeros).
  t.vshards.push_back({.vshard = 0, .keys = {0}, .weights = {1, 2, 3, 4}});
  t.vshards.push_back({.vshard = 3, .keys = {2}, .weights = {9, 10, 0, 0}});
  REQUIRE(store.Apply(Version(1, 0, {t})).ok());
  std::string values;
  REQUIRE(store.LookupDense("w", 0, &values).ok());
  std::vector<float> got(values.size() / 4);
  std::memcpy(got.data(), values.data(), values.size());
  CHECK(got == std::vector<float>{1, 2, 3, 4, 0, 0, 0, 0, 9, 10});
  std::string found;
  uint64_t key = 1;
  CHECK(store.Lookup("w", &key, 1, 0, &values, &found).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(store.LookupDense("nope", 0, &values).status().code() == absl::StatusCode::kNotFound);
  CHECK(store.LookupDense("w", 7, &values).status().code() ==
        absl::StatusCode::kFailedPrecondition);
  CHECK(store.Status().tables[0].rows == 2);
}

TEST_CASE("a lookup whose answer would pass the limit is refused before anything is allocated") {
  const TableConfig emb = Sparse("emb", 16);  // 64 bytes a row
  const TableConfig w = Dense("w", 100, 10);  // 400 bytes
  ServingStore store({.max_response_bytes = 640});
  REQUIRE(
      store.Apply(Version(1, 0, {Rows(emb, true, Range(0, 20), 0), Rows(w, true, {0}, 1)})).ok());
  std::string values, found;
  const std::vector<uint64_t> keys = Range(0, 11);
  REQUIRE(store.Lookup("emb", keys.data(), 10, 0, &values, &found).ok());  // 640 bytes: at it
  CHECK(values.size() == 640);
  std::string values2, found2;
  absl::StatusOr<LookupResult> over = store.Lookup("emb", keys.data(), 11, 0, &values2, &found2);
  CHECK(over.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(absl::StrContains(over.status().message(), "--max_response_bytes"));
  CHECK(values2.capacity() < 640);  // nothing allocated for it
  CHECK(found2.empty());
  REQUIRE(store.LookupDense("w", 0, &values).ok());
  ServingStore small({.max_response_bytes = 399});
  REQUIRE(small.Apply(Version(1, 0, {Rows(w, true, {0}, 1)})).ok());
  CHECK(small.LookupDense("w", 0, &values).status().code() == absl::StatusCode::kResourceExhausted);
}

// A version through the stream's events into another store.
absl::Status Relay(const ServingStore& from, uint64_t held, ServingStore* to,
                   const std::function<bool(v1::SubscribeEvent*)>& tamper = nullptr) {
  std::shared_ptr<const VersionDelta> full;
  std::vector<std::shared_ptr<const VersionDelta>> deltas = from.DeltasAfter(held, &full);
  StreamAssembler assembler(to);
  absl::Status status;
  const EventWriter write = [&](const v1::SubscribeEvent& e) {
    v1::SubscribeEvent copy = e;
    if (tamper != nullptr && !tamper(&copy)) return true;  // dropped
    if (status.ok()) status = assembler.Take(copy);
    return true;
  };
  if (full != nullptr) REQUIRE(WriteDelta(*full, write));
  for (const auto& d : deltas) REQUIRE(WriteDelta(*d, write));
  return status;
}

TEST_CASE("versions travel through the stream and a lost chunk is caught") {
  const TableConfig emb = Sparse("emb", 16);
  const TableConfig w = Dense("w", 1000, 64);
  ServingStore relay({});
  // Big enough for several chunks in a vshard.
  REQUIRE(relay
              .Apply(Version(
                  1, 0, {Rows(emb, true, Range(0, 200000), 0), Rows(w, true, Range(0, 16), 1)}))
              .ok());
  ServingStore replica({});
  REQUIRE(Relay(relay, 0, &replica).ok());  // a full version from the relay's tables
  CHECK(Digests(replica) == Digests(relay));
  REQUIRE(relay
              .Apply(Version(
                  2, 1, {Rows(emb, false, Range(100, 300), 3, {5, 6}), Rows(w, false, {3}, 7)}))
              .ok());
  REQUIRE(relay.Apply(Version(3, 2, {Rows(emb, false, Range(0, 10), 4)})).ok());  // w dropped
  REQUIRE(Relay(relay, 1, &replica).ok());                                        // two deltas
  CHECK(Served(replica) == 3);
  CHECK(Digests(replica) == Digests(relay));
  CHECK(Digests(replica).size() == 1);

  // A chunk lost on the way: the digest at the version's end refuses it.
  REQUIRE(relay.Apply(Version(4, 3, {Rows(emb, false, Range(0, 5000), 8)})).ok());
  int chunks = 0;
  absl::Status lost = Relay(relay, 3, &replica, [&](v1::SubscribeEvent* e) {
    return !(e->has_chunk() && ++chunks == 2);
  });
  CHECK(lost.code() == absl::StatusCode::kDataLoss);
  CHECK(Served(replica) == 3);
  REQUIRE(Relay(relay, 3, &replica).ok());  // subscribing again repairs it
  CHECK(Digests(replica) == Digests(relay));

  // Malformed chunks are refused before anything is applied.
  REQUIRE(relay.Apply(Version(5, 4, {Rows(emb, false, Range(0, 5), 9)})).ok());
  absl::Status bad = Relay(relay, 4, &replica, [](v1::SubscribeEvent* e) {
    if (e->has_chunk()) e->mutable_chunk()->mutable_weights()->push_back('x');
    return true;
  });
  CHECK(bad.code() == absl::StatusCode::kInvalidArgument);
  absl::Status orphan =
      Relay(relay, 4, &replica, [](v1::SubscribeEvent* e) { return !e->has_begin(); });
  CHECK(orphan.code() == absl::StatusCode::kDataLoss);
  CHECK(Served(replica) == 4);
}

TEST_CASE("a relay sends its tables in full to a subscriber behind its records") {
  const TableConfig emb = Sparse("emb", 2);
  ServingStore relay({.keep_versions = 2});
  REQUIRE(relay.Apply(Version(1, 0, {Rows(emb, true, Range(0, 10), 0)})).ok());
  for (uint64_t v = 2; v <= 4; ++v) {
    REQUIRE(relay.Apply(Version(v, v - 1, {Rows(emb, false, {v}, float(v))})).ok());
  }
  std::shared_ptr<const VersionDelta> full;
  CHECK(relay.DeltasAfter(3, &full).size() == 1);
  CHECK(full == nullptr);
  CHECK(relay.DeltasAfter(2, &full).size() == 2);
  CHECK(relay.DeltasAfter(1, &full).empty());
  REQUIRE(full != nullptr);
  CHECK(full->version == 4);
  CHECK(full->digests == Digests(relay));
  CHECK(relay.DeltasAfter(4, &full).empty());
  CHECK(full == nullptr);
  CHECK(relay.DeltasAfter(9, &full).empty());  // a subscriber ahead waits
  CHECK(full == nullptr);
}

TEST_CASE("tables created dropped and replaced roll back whole") {
  const TableConfig a = Sparse("a", 2);
  const TableConfig b = Sparse("b", 4);
  ServingStore store({.keep_versions = 4});
  REQUIRE(store.Apply(Version(1, 0, {Rows(a, true, Range(0, 300), 1)})).ok());
  const std::vector<TableDigest> at1 = Digests(store);
  // 2: b created; 3: a dropped; 4: b replaced by a table of another width.
  REQUIRE(store.Apply(Version(2, 1, {Rows(a, false, {}, 0), Rows(b, true, Range(0, 50), 2)})).ok());
  const std::vector<TableDigest> at2 = Digests(store);
  REQUIRE(store.Apply(Version(3, 2, {Rows(b, false, {}, 0)})).ok());
  REQUIRE(store.Apply(Version(4, 3, {Rows(Sparse("b", 8), true, Range(0, 20), 4)})).ok());
  CHECK(store.Status().tables.size() == 1);
  CHECK(LookupAll(store, "b", {3}).values.size() == 8);
  std::string values, found;
  uint64_t key = 3;
  CHECK(store.Lookup("b", &key, 1, 2, &values, &found).status().code() ==
        absl::StatusCode::kFailedPrecondition);  // replaced since: not through the records
  REQUIRE(store.Rollback(2).ok());
  CHECK(Digests(store) == at2);
  REQUIRE(store.Rollback(1).ok());
  CHECK(Digests(store) == at1);
  CHECK(LookupAll(store, "a", {299}).values[1] == 1 + 299 * 0.25f + 1);
  CHECK(*store.Resume() == 4);
  CHECK(Digests(store)[0].rows == 20);
}

// Not a test: the in-process cost of a lookup (run with "[.bench]").
TEST_CASE("lookup cost in process", "[.bench]") {
  const TableConfig emb = Sparse("emb", 16);
  ServingStore store({});
  REQUIRE(store.Apply(Version(1, 0, {Rows(emb, true, Range(0, 1000000), 0)})).ok());
  std::mt19937_64 rng(1);
  std::vector<uint64_t> keys(1000);
  std::string values, found;
  const auto start = std::chrono::steady_clock::now();
  constexpr int kCalls = 3000;
  for (int c = 0; c < kCalls; ++c) {
    for (uint64_t& k : keys) k = rng() % 1000000;
    REQUIRE(store.Lookup("emb", keys.data(), keys.size(), 0, &values, &found).ok());
  }
  const double ns =
      std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count();
  WARN("ns per key: " << ns / (kCalls * 1000.0));
}

}  // namespace
}  // namespace tessera::serving
