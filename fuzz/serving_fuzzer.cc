// Serving (docs/online_serving.md): the bytes are a Subscribe stream as a replica receives it
// from its upstream (first byte even) or a lookup (odd). A stream is a run of SubscribeEvents,
// each a 2-byte little-endian length and that many bytes, taken by a StreamAssembler into a
// fresh store that holds version 1 (a sparse and a dense table); the first error ends the
// stream, as the replica drops it. Every store is then checked whole (Verify: the digests kept
// equal the rows held) and looked up. A lookup is a LookupRequest (second bit clear) or a
// LookupDenseRequest against one long-lived store at version 1.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/shard_map.h"
#include "fuzz/fuzz_util.h"
#include "serving.pb.h"
#include "serving/serving_store.h"
#include "serving/stream_codec.h"

namespace tessera::serving {
namespace {

constexpr uint32_t kVshards = 8;

TableConfig Sparse() {
  TableConfig c{.name = "emb", .kind = TableKind::kSparse, .dim = 4};
  c.initializer.kind = InitializerKind::kUniform;
  c.initializer.seed = 3;
  return *ResolveTableConfig(c);
}

TableConfig Dense() {
  TableConfig c{.name = "w", .kind = TableKind::kDense, .dense_size = 40, .dense_block_elems = 16};
  return *ResolveTableConfig(c);
}

// Rows keys [0, n) of `config`, each weight salt + key + column.
TableDelta Rows(const TableConfig& config, bool full, uint64_t n, float salt) {
  TableDelta t{.config = config, .full = full};
  const uint32_t width = RowWidth(config);
  std::vector<VshardDelta> by(kVshards);
  for (uint64_t k = 0; k < n; ++k) {
    const uint32_t v = config.kind == TableKind::kSparse ? VshardOfKey(k, kVshards)
                                                         : static_cast<uint32_t>(k % kVshards);
    by[v].vshard = v;
    by[v].keys.push_back(k);
    for (uint32_t c = 0; c < width; ++c) by[v].weights.push_back(salt + k + c);
  }
  for (VshardDelta& d : by) {
    if (!d.keys.empty()) t.vshards.push_back(std::move(d));
  }
  return t;
}

VersionDelta Version(uint64_t version, uint64_t parent, std::vector<TableDelta> tables) {
  return {.version = version,
          .parent = parent,
          .created_unix_ms = 1000 * static_cast<int64_t>(version),
          .num_vshards = kVshards,
          .tables = std::move(tables)};
}

// Small limits: an input may ask for anything, the store answers within these.
constexpr StoreOptions kOptions{
    .keep_versions = 2, .max_memory_bytes = 64 << 20, .max_response_bytes = 1 << 20};

std::unique_ptr<ServingStore> NewStore() {
  auto store = std::make_unique<ServingStore>(kOptions);
  if (!store->Apply(Version(1, 0, {Rows(Sparse(), true, 50, 0), Rows(Dense(), true, 3, 1)})).ok()) {
    std::abort();
  }
  return store;
}

const ServingStore& LookupStore() {
  static const ServingStore* s = NewStore().release();
  return *s;
}

void Append(const v1::SubscribeEvent& e, std::string* out) {
  const std::string bytes = e.SerializeAsString();
  const uint16_t n = static_cast<uint16_t>(bytes.size());  // (seeds are small)
  out->push_back(static_cast<char>(n & 0xff));
  out->push_back(static_cast<char>(n >> 8));
  out->append(bytes);
}

std::vector<std::string> Seeds() {
  std::vector<std::string> seeds;
  // A delta on version 1 (rows changed and removed, the dense table changed), then a full
  // version 3 without the dense table, as a relay writes them; then a heartbeat.
  ServingStore relay(kOptions);
  if (!relay.Apply(Version(1, 0, {Rows(Sparse(), true, 50, 0), Rows(Dense(), true, 3, 1)})).ok() ||
      !relay.Apply(Version(2, 1, {Rows(Sparse(), false, 10, 5), Rows(Dense(), false, 1, 6)}))
           .ok()) {
    std::abort();
  }
  std::shared_ptr<const VersionDelta> full;
  std::string stream(1, '\0');
  for (const auto& d : relay.DeltasAfter(1, &full)) {
    (void)WriteDelta(*d, [&](const v1::SubscribeEvent& e) {
      Append(e, &stream);
      return true;
    });
  }
  VersionDelta three = Version(3, 0, {Rows(Sparse(), true, 20, 9)});
  ServingStore digests(kOptions);
  if (!digests.Apply(three).ok()) std::abort();
  for (const ServedTable& t : digests.Status().tables) {
    three.digests.push_back({t.config.name, t.digest, t.rows});
  }
  (void)WriteDelta(three, [&](const v1::SubscribeEvent& e) {
    Append(e, &stream);
    return true;
  });
  v1::SubscribeEvent beat;
  beat.mutable_heartbeat()->set_newest_version(3);
  Append(beat, &stream);
  seeds.push_back(stream);
  // Lookups: sparse keys found and not, at the served and an unknown version; the dense table.
  v1::LookupRequest lookup;
  lookup.set_table("emb");
  for (uint64_t k : {0, 7, 49, 50, 1000000}) lookup.add_keys(k);
  seeds.push_back(std::string(1, '\1') + lookup.SerializeAsString());
  lookup.set_version(9);
  seeds.push_back(std::string(1, '\1') + lookup.SerializeAsString());
  v1::LookupDenseRequest dense;
  dense.set_table("w");
  seeds.push_back(std::string(1, '\3') + dense.SerializeAsString());
  return seeds;
}

// What must hold of any store after any input: its digests are its rows', and lookups answer
// within their sizes.
void CheckStore(const ServingStore& store) {
  if (!store.Verify().ok()) std::abort();
  const StoreStatus status = store.Status();
  for (const ServedTable& t : status.tables) {
    std::string values, found;
    if (t.config.kind == TableKind::kSparse) {
      const uint64_t keys[] = {0, 1, 2, 3, 49, 1u << 20};
      absl::StatusOr<LookupResult> r = store.Lookup(t.config.name, keys, 6, 0, &values, &found);
      if (r.ok() && (values.size() != 6 * sizeof(float) * r->dim || found.size() != 1)) {
        std::abort();
      }
    } else {
      absl::StatusOr<LookupResult> r = store.LookupDense(t.config.name, 0, &values);
      if (r.ok() && values.size() != t.config.dense_size * sizeof(float)) std::abort();
    }
  }
}

}  // namespace
}  // namespace tessera::serving

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  tessera::fuzz::MaybeWriteSeeds(tessera::serving::Seeds());
  tessera::serving::LookupStore();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tessera::serving;  // NOLINT
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  ++data;
  --size;
  if ((mode & 1) != 0) {
    const ServingStore& store = LookupStore();
    std::string values, found;
    if ((mode & 2) == 0) {
      v1::LookupRequest req;
      if (!req.ParseFromArray(data, static_cast<int>(size))) return 0;
      absl::StatusOr<LookupResult> r =
          store.Lookup(req.table(), req.keys().data(), static_cast<size_t>(req.keys_size()),
                       req.version(), &values, &found);
      if (r.ok() && values.size() != req.keys_size() * sizeof(float) * r->dim) std::abort();
    } else {
      v1::LookupDenseRequest req;
      if (!req.ParseFromArray(data, static_cast<int>(size))) return 0;
      (void)store.LookupDense(req.table(), req.version(), &values);
    }
    return 0;
  }
  std::unique_ptr<ServingStore> store = NewStore();
  StreamAssembler assembler(store.get());
  while (size >= 2) {
    const size_t n = data[0] | (size_t{data[1]} << 8);
    data += 2;
    size -= 2;
    if (n > size) break;
    v1::SubscribeEvent event;
    const bool parsed = event.ParseFromArray(data, static_cast<int>(n));
    data += n;
    size -= n;
    if (!parsed || !assembler.Take(event).ok()) break;
  }
  CheckStore(*store);
  return 0;
}
