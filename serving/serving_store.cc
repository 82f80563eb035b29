#include "serving/serving_store.h"

#include <algorithm>
#include <cstring>
#include <random>
#include <thread>

#include "absl/base/call_once.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/hash.h"
#include "common/key_index.h"
#include "common/status_macros.h"

namespace tessera::serving {
namespace {

// A table's rows are spread over this many hash maps (by the key's hash, not the trainers'
// vshards: the store does not depend on how the trainers partition), so that no map is large.
constexpr uint32_t kParts = 256;
inline uint32_t PartOf(uint64_t key) { return static_cast<uint32_t>(Mix64(key) >> 56); }

std::string Short(const std::string& name) { return name.substr(0, 64); }

std::string ShowDigests(const std::vector<TableDigest>& d) {
  return absl::StrJoin(d, ", ", [](std::string* out, const TableDigest& t) {
    absl::StrAppendFormat(out, "%s: %016x (%u rows)", Short(t.name), t.digest, t.rows);
  });
}

uint64_t NewSeed() {
  static std::atomic<uint64_t> next{std::random_device{}()};
  return Mix64(next.fetch_add(0x9E3779B97F4A7C15ull));
}

struct Part {
  KeyIndex index{NewSeed()};   // key -> slot (prefetchable: common/key_index.h)
  std::vector<float> weights;  // slot s at [s * width, (s + 1) * width)
  std::vector<uint32_t> free;  // slots of removed rows
};

}  // namespace

uint32_t RowWidth(const TableConfig& config) {
  return config.kind == TableKind::kSparse ? config.dim : config.dense_block_elems;
}

uint64_t RowDigest(uint64_t key, const float* weights, uint32_t width) {
  uint64_t h = Mix64(key ^ 0x5E7D1A6Bu);
  uint32_t i = 0;
  for (; i + 2 <= width; i += 2) {
    uint64_t bits;
    std::memcpy(&bits, &weights[i], 8);
    h = Mix64(h ^ bits) + i;
  }
  if (i < width) {
    uint32_t bits;
    std::memcpy(&bits, &weights[i], 4);
    h = Mix64(h ^ bits) + i;
  }
  return h;
}

size_t VersionDelta::Bytes() const {
  size_t bytes = sizeof(*this);
  for (const TableDelta& t : tables) {
    for (const VshardDelta& v : t.vshards) {
      bytes += sizeof(v) + v.keys.capacity() * 8 + v.weights.capacity() * 4 +
               v.tombstones.capacity() * 8;
    }
  }
  return bytes;
}

namespace {

// One table in one copy. Mutated only by the writer, while no lookup reads the copy.
struct TableState {
  TableConfig config;
  uint32_t width;
  Initializer initializer;
  std::vector<Part> parts;
  uint64_t rows = 0;
  uint64_t digest = 0;  // set from the change records (Verify recomputes it)

  explicit TableState(const TableConfig& c)
      : config(c), width(RowWidth(c)), initializer(c.initializer), parts(kParts) {}

  const float* Find(uint64_t key) const {
    const Part& p = parts[PartOf(key)];
    const uint32_t slot = p.index.Find(key);
    return slot == KeyIndex::kNone ? nullptr : &p.weights[size_t{slot} * width];
  }
  void Prefetch(uint64_t key) const { parts[PartOf(key)].index.Prefetch(key); }
  void Put(uint64_t key, const float* w) {
    Part& p = parts[PartOf(key)];
    uint32_t slot = p.index.Find(key);
    if (slot == KeyIndex::kNone) {
      if (!p.free.empty()) {
        slot = p.free.back();
        p.free.pop_back();
      } else {
        slot = static_cast<uint32_t>(p.weights.size() / width);
        p.weights.resize(p.weights.size() + width);
      }
      p.index.Insert(key, slot);
      ++rows;
    }
    std::memcpy(&p.weights[size_t{slot} * width], w, width * sizeof(float));
  }
  void Erase(uint64_t key) {
    Part& p = parts[PartOf(key)];
    const uint32_t slot = p.index.Erase(key);
    if (slot == KeyIndex::kNone) return;
    p.free.push_back(slot);
    --rows;
  }
  // fn(key, row) for every row, part by part.
  template <typename Fn>
  void ForEachRow(Fn&& fn) const {
    for (const Part& p : parts) {
      p.index.ForEach(
          [&](uint64_t key, uint32_t slot) { fn(key, &p.weights[size_t{slot} * width]); });
    }
  }
  size_t Bytes() const {
    size_t b = sizeof(*this);
    for (const Part& p : parts) {
      b += p.index.bytes() + p.weights.capacity() * 4 + p.free.capacity() * 4;
    }
    return b;
  }
};

// One table's changes in one version: every changed row before and after, so that the
// version can be applied (to the second copy), undone (rollback) and read (lookups at a
// version). A table created, dropped or changed in shape has every row here.
struct TableChange {
  std::string name;
  std::optional<TableConfig> before;  // absent: created in this version
  std::optional<TableConfig> after;   // absent: dropped
  std::vector<uint64_t> keys;
  std::vector<float> before_rows;  // keys.size() x width(before), where had_before
  std::vector<float> after_rows;   // keys.size() x width(after), where has_after
  std::vector<uint8_t> had_before;
  std::vector<uint8_t> has_after;
  absl::flat_hash_map<uint64_t, uint32_t> at;   // key -> index
  uint64_t digest_before = 0, rows_before = 0;  // the table's, computed from the rows
  uint64_t digest_after = 0, rows_after = 0;

  bool whole() const { return !before.has_value() || !after.has_value() || !(*before == *after); }
  uint32_t before_width() const { return before ? RowWidth(*before) : 0; }
  uint32_t after_width() const { return after ? RowWidth(*after) : 0; }
  void Reserve(size_t n) {
    at.reserve(n);
    keys.reserve(n);
    had_before.reserve(n);
    has_after.reserve(n);
    before_rows.reserve(n * before_width());
    after_rows.reserve(n * after_width());
  }
  void Add(uint64_t key, const float* before_row, const float* after_row) {
    at.emplace(key, static_cast<uint32_t>(keys.size()));
    keys.push_back(key);
    had_before.push_back(before_row != nullptr);
    has_after.push_back(after_row != nullptr);
    const uint32_t bw = before_width(), aw = after_width();
    if (bw != 0) {
      before_rows.resize(before_rows.size() + bw, 0.0f);
      if (before_row) std::memcpy(&before_rows[before_rows.size() - bw], before_row, bw * 4);
    }
    if (aw != 0) {
      after_rows.resize(after_rows.size() + aw, 0.0f);
      if (after_row) std::memcpy(&after_rows[after_rows.size() - aw], after_row, aw * 4);
    }
  }
  size_t Bytes() const {
    return sizeof(*this) + keys.capacity() * 10 + before_rows.capacity() * 4 +
           after_rows.capacity() * 4 + at.capacity() * 17;
  }
};

}  // namespace

struct ServingStore::State {
  uint64_t version = 0;
  int64_t created_unix_ms = 0;
  uint32_t num_vshards = 0;
  absl::flat_hash_map<std::string, std::unique_ptr<TableState>> tables;
  std::atomic<int64_t> readers{0};
  std::atomic<size_t> bytes{0};  // the tables', updated after each change

  void UpdateBytes() {
    size_t b = 0;
    for (const auto& [name, t] : tables) b += t->Bytes();
    bytes.store(b);
  }
};

struct ServingStore::Record {
  uint64_t version = 0;
  uint64_t parent = 0;  // the version it was applied on
  int64_t created_unix_ms = 0;
  int64_t parent_created_unix_ms = 0;
  uint32_t num_vshards = 0;
  uint32_t parent_num_vshards = 0;
  std::vector<TableChange> changes;
  std::vector<TableConfig> tables_after;  // every table after the version, ascending name
  std::vector<TableDigest> digests_after;
  size_t bytes = 0;
  // The version as a delta, built for the first subscriber that needs it.
  mutable absl::once_flag relay_once;
  mutable std::shared_ptr<const VersionDelta> relay;
  mutable std::atomic<size_t> relay_bytes{0};

  const std::shared_ptr<const VersionDelta>& Relay() const;
};

namespace {

using State = ServingStore::State;
using Record = ServingStore::Record;

void Forward(State& s, const Record& r) {
  for (const TableChange& c : r.changes) {
    if (!c.after.has_value()) {
      s.tables.erase(c.name);
      continue;
    }
    if (c.whole()) s.tables[c.name] = std::make_unique<TableState>(*c.after);
    TableState& t = *s.tables.at(c.name);
    const uint32_t w = c.after_width();
    for (size_t i = 0; i < c.keys.size(); ++i) {
      if (c.has_after[i]) {
        t.Put(c.keys[i], &c.after_rows[i * w]);
      } else {
        t.Erase(c.keys[i]);
      }
    }
    t.digest = c.digest_after;
  }
  s.version = r.version;
  s.created_unix_ms = r.created_unix_ms;
  s.num_vshards = r.num_vshards;
  s.UpdateBytes();
}

void Backward(State& s, const Record& r) {
  for (auto c = r.changes.rbegin(); c != r.changes.rend(); ++c) {
    if (!c->before.has_value()) {
      s.tables.erase(c->name);
      continue;
    }
    if (c->whole()) s.tables[c->name] = std::make_unique<TableState>(*c->before);
    TableState& t = *s.tables.at(c->name);
    const uint32_t w = c->before_width();
    for (size_t i = 0; i < c->keys.size(); ++i) {
      if (c->had_before[i]) {
        t.Put(c->keys[i], &c->before_rows[i * w]);
      } else {
        t.Erase(c->keys[i]);
      }
    }
    t.digest = c->digest_before;
  }
  s.version = r.parent;
  s.created_unix_ms = r.parent_created_unix_ms;
  s.num_vshards = r.parent_num_vshards;
  s.UpdateBytes();
}

std::vector<TableDigest> DigestsOf(const State& s) {
  std::vector<TableDigest> out;
  for (const auto& [name, t] : s.tables) out.push_back({name, t->digest, t->rows});
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return out;
}

// The table's digest and rows before and after `c`, from `cur` (the table held; null: none)
// and the change's rows.
void Settle(const TableState* cur, TableChange* c) {
  c->digest_before = cur != nullptr ? cur->digest : 0;
  c->rows_before = cur != nullptr ? cur->rows : 0;
  const bool whole = c->whole();
  c->digest_after = whole ? 0 : c->digest_before;
  c->rows_after = whole ? 0 : c->rows_before;
  const uint32_t bw = c->before_width(), aw = c->after_width();
  for (size_t i = 0; i < c->keys.size(); ++i) {
    if (!whole && c->had_before[i]) {
      c->digest_after -= RowDigest(c->keys[i], &c->before_rows[i * bw], bw);
      --c->rows_after;
    }
    if (c->has_after[i]) {
      c->digest_after += RowDigest(c->keys[i], &c->after_rows[i * aw], aw);
      ++c->rows_after;
    }
  }
}

// The changes `delta` makes to `held` (the back copy at the version held), rows equal to
// the held ones left out. Nothing is changed.
absl::StatusOr<std::vector<TableChange>> Diff(const State& held, const VersionDelta& delta) {
  std::vector<TableChange> changes;
  absl::flat_hash_set<std::string> listed;
  for (const TableDelta& t : delta.tables) {
    const std::string& name = t.config.name;
    if (!listed.insert(name).second) {
      return absl::InvalidArgumentError(
          absl::StrFormat("version %u lists table '%s' twice", delta.version, Short(name)));
    }
    const uint32_t width = RowWidth(t.config);
    if (width == 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "version %u: table '%s' has rows of 0 floats", delta.version, Short(name)));
    }
    auto it = held.tables.find(name);
    const TableState* cur = it == held.tables.end() ? nullptr : it->second.get();
    TableChange c;
    c.name = name;
    if (cur != nullptr) c.before = cur->config;
    c.after = t.config;
    const bool whole = c.whole();
    if (whole && !t.full) {
      return absl::FailedPreconditionError(
          absl::StrFormat("version %u changes table '%s', which version %u does not hold as it is",
                          delta.version, Short(name), held.version));
    }
    size_t listed_rows = 0;
    for (const VshardDelta& v : t.vshards) {
      if (v.weights.size() != v.keys.size() * width) {
        return absl::InvalidArgumentError(
            absl::StrFormat("version %u table '%s': %u weights for %u keys of %u floats",
                            delta.version, Short(name), v.weights.size(), v.keys.size(), width));
      }
      listed_rows += v.keys.size();
    }
    absl::flat_hash_set<uint64_t> in_delta;
    if (t.full) in_delta.reserve(listed_rows);
    c.Reserve(listed_rows + (whole && cur != nullptr ? cur->rows : 0));
    for (const VshardDelta& v : t.vshards) {
      for (size_t i = 0; i < v.keys.size(); ++i) {
        const uint64_t key = v.keys[i];
        const float* row = &v.weights[i * width];
        if (t.full && !in_delta.insert(key).second) {
          return absl::InvalidArgumentError(absl::StrFormat("version %u table '%s': key %u twice",
                                                            delta.version, Short(name), key));
        }
        const float* old = whole || cur == nullptr ? nullptr : cur->Find(key);
        if (old != nullptr && std::memcmp(old, row, width * sizeof(float)) == 0) continue;
        if (c.at.contains(key)) {
          return absl::InvalidArgumentError(absl::StrFormat("version %u table '%s': key %u twice",
                                                            delta.version, Short(name), key));
        }
        c.Add(key, old, row);
      }
      for (uint64_t key : v.tombstones) {
        if (whole || cur == nullptr || c.at.contains(key)) continue;
        if (const float* old = cur->Find(key); old != nullptr) c.Add(key, old, nullptr);
      }
    }
    if (cur != nullptr && (whole || t.full)) {
      // Every held row the version does not list: removed (and, for a table replaced, its
      // old value recorded for rollback).
      cur->ForEachRow([&](uint64_t key, const float* row) {
        if (in_delta.contains(key) && !whole) return;
        if (whole && c.at.contains(key)) {
          c.had_before[c.at[key]] = 1;
          std::memcpy(&c.before_rows[c.at[key] * size_t{cur->width}], row, cur->width * 4);
          return;
        }
        c.Add(key, row, nullptr);
      });
    }
    if (whole || !c.keys.empty()) {
      Settle(cur, &c);
      changes.push_back(std::move(c));
    }
  }
  for (const auto& [name, t] : held.tables) {
    if (listed.contains(name)) continue;
    TableChange c;  // dropped: every row recorded
    c.name = name;
    c.before = t->config;
    t->ForEachRow([&](uint64_t key, const float* row) { c.Add(key, row, nullptr); });
    Settle(t.get(), &c);
    changes.push_back(std::move(c));
  }
  return changes;
}

// The digests `held` will have after `r`, from the record alone.
std::vector<TableDigest> PredictDigests(const State& held, const Record& r) {
  absl::flat_hash_map<std::string, TableDigest> m;
  for (const auto& [name, t] : held.tables) m[name] = {name, t->digest, t->rows};
  for (const TableChange& c : r.changes) {
    if (c.after.has_value()) {
      m[c.name] = {c.name, c.digest_after, c.rows_after};
    } else {
      m.erase(c.name);
    }
  }
  std::vector<TableDigest> out;
  for (auto& [name, d] : m) out.push_back(std::move(d));
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return out;
}

}  // namespace

// Every table after the version, its changed rows and removals; a table created or replaced
// in full.
const std::shared_ptr<const VersionDelta>& ServingStore::Record::Relay() const {
  absl::call_once(relay_once, [this] {
    auto d = std::make_shared<VersionDelta>();
    d->version = version;
    d->parent = parent;
    d->created_unix_ms = created_unix_ms;
    d->num_vshards = num_vshards;
    absl::flat_hash_map<std::string, const TableChange*> by_name;
    for (const TableChange& c : changes) by_name[c.name] = &c;
    for (const TableConfig& config : tables_after) {
      TableDelta t{.config = config};
      auto it = by_name.find(config.name);
      if (it != by_name.end()) {
        const TableChange& c = *it->second;
        t.full = c.whole();
        std::vector<VshardDelta> groups(kParts);
        const uint32_t w = c.after_width();
        for (size_t i = 0; i < c.keys.size(); ++i) {
          VshardDelta& g = groups[PartOf(c.keys[i])];
          if (c.has_after[i]) {
            g.keys.push_back(c.keys[i]);
            g.weights.insert(g.weights.end(), &c.after_rows[i * w], &c.after_rows[(i + 1) * w]);
          } else if (!t.full) {
            g.tombstones.push_back(c.keys[i]);
          }
        }
        for (uint32_t g = 0; g < kParts; ++g) {
          if (groups[g].keys.empty() && groups[g].tombstones.empty()) continue;
          groups[g].vshard = g;
          t.vshards.push_back(std::move(groups[g]));
        }
      }
      d->tables.push_back(std::move(t));
    }
    d->digests = digests_after;
    relay_bytes.store(d->Bytes());
    relay = std::move(d);
  });
  return relay;
}

namespace {}  // namespace

ServingStore::ServingStore(StoreOptions options) : options_(options) {
  if (options_.keep_versions == 0) options_.keep_versions = 1;
  states_[0] = std::make_unique<State>();
  states_[1] = std::make_unique<State>();
  served_.store(states_[0].get());
}

ServingStore::~ServingStore() = default;

State* ServingStore::Acquire() const {
  while (true) {
    State* s = served_.load();
    s->readers.fetch_add(1);
    if (served_.load() == s) return s;
    s->readers.fetch_sub(1);
  }
}

void ServingStore::Release(State* s) const { s->readers.fetch_sub(1); }

void ServingStore::Switch(const std::vector<std::shared_ptr<const Record>>& records, bool undo) {
  State* front = served_.load();
  State* back = front == states_[0].get() ? states_[1].get() : states_[0].get();
  auto apply = [&](State& s) {
    for (const auto& r : records) {
      if (undo) {
        Backward(s, *r);
      } else {
        Forward(s, *r);
      }
    }
  };
  apply(*back);
  served_.store(back);
  // The old copy is written only once no lookup reads it (each has re-checked served_ after
  // counting itself, so none can start on it now).
  for (int spins = 0; front->readers.load() != 0; ++spins) {
    if (spins < 64) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  apply(*front);
}

absl::Status ServingStore::Apply(VersionDelta delta, const std::vector<TableDigest>& expected) {
  absl::MutexLock apply(&apply_mu_);
  {
    absl::MutexLock lock(&mu_);
    if (pinned_) {
      const uint64_t newest =
          queued_.empty() ? served_.load()->version : queued_.back().first.version;
      const uint64_t recorded = records_.empty() ? 0 : records_.back()->version;
      const uint64_t held = std::max(newest, recorded);
      if (delta.version <= held || (delta.parent != 0 && delta.parent != held)) {
        refused_total_.fetch_add(1);
        return absl::FailedPreconditionError(
            absl::StrFormat("version %u (on %u) does not follow the version held, %u",
                            delta.version, delta.parent, held));
      }
      queued_.push_back({std::move(delta), expected});  // (checked when applied)
      return absl::OkStatus();
    }
  }
  absl::Status s = ApplyLocked(std::move(delta), expected);
  if (s.ok()) {
    applied_total_.fetch_add(1);
  } else {
    refused_total_.fetch_add(1);
  }
  return s;
}

absl::Status ServingStore::ApplyLocked(VersionDelta delta,
                                       const std::vector<TableDigest>& expected) {
  State* front = served_.load();
  State* back = front == states_[0].get() ? states_[1].get() : states_[0].get();
  const uint64_t held = back->version;  // (both copies hold the same version between applies)
  if (delta.version <= held) {
    return absl::FailedPreconditionError(
        absl::StrFormat("version %u is not newer than the version held, %u", delta.version, held));
  }
  if (delta.parent != 0 && delta.parent != held) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "version %u follows version %u; this replica holds %u (a gap: subscribe again from "
        "the version held)",
        delta.version, delta.parent, held));
  }
  // What the record and the new rows will take, before they are built: each listed row and
  // removal twice (before and after) in the record, each row perhaps new in both copies, and
  // for tables listed in full every held row.
  if (options_.max_memory_bytes != 0) {
    uint64_t need = 0;
    for (const TableDelta& t : delta.tables) {
      const uint64_t w = RowWidth(t.config);
      uint64_t n = 0, removed = 0;
      for (const VshardDelta& v : t.vshards) {
        n += v.keys.size();
        removed += v.tombstones.size();
      }
      auto it = back->tables.find(t.config.name);
      const uint64_t held_rows = it == back->tables.end() ? 0 : it->second->rows;
      need += (n + removed + (t.full ? held_rows : 0)) * (2 * w * 4 + 40) + 2 * n * (w * 4 + 20);
    }
    const uint64_t have = static_cast<uint64_t>(bytes());
    if (have + need > options_.max_memory_bytes) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "version %u needs up to %u more bytes; %u of --max_memory_bytes=%u are held",
          delta.version, need, have, options_.max_memory_bytes));
    }
  }
  absl::StatusOr<std::vector<TableChange>> changes = Diff(*back, delta);
  if (!changes.ok()) return changes.status();
  auto record = std::make_shared<Record>();
  record->version = delta.version;
  record->parent = held;
  record->created_unix_ms = delta.created_unix_ms;
  record->parent_created_unix_ms = back->created_unix_ms;
  record->num_vshards = delta.num_vshards;
  record->parent_num_vshards = back->num_vshards;
  record->changes = *std::move(changes);
  if (!expected.empty()) {
    const std::vector<TableDigest> got = PredictDigests(*back, *record);
    if (got != expected) {
      return absl::DataLossError(
          absl::StrFormat("version %u does not match its source's digests: computed {%s}, the "
                          "source's {%s}",
                          delta.version, ShowDigests(got), ShowDigests(expected)));
    }
  }
  std::vector<std::shared_ptr<const Record>> one = {record};
  Switch(one, /*undo=*/false);
  {
    const State& after = *served_.load();
    record->digests_after = DigestsOf(after);
    for (const TableDigest& d : record->digests_after) {
      record->tables_after.push_back(after.tables.at(d.name)->config);
    }
  }
  for (const TableChange& c : record->changes) record->bytes += c.Bytes();
  absl::MutexLock lock(&mu_);
  records_.push_back(std::move(record));
  while (records_.size() > options_.keep_versions) records_.pop_front();
  // Beyond the memory limit, the oldest records go first (rollback reaches less far back).
  while (options_.max_memory_bytes != 0 && records_.size() > 1 &&
         static_cast<uint64_t>(BytesLocked()) > options_.max_memory_bytes) {
    records_.pop_front();
  }
  newer_.SignalAll();
  return absl::OkStatus();
}

absl::Status ServingStore::Rollback(uint64_t version) {
  absl::MutexLock apply(&apply_mu_);
  std::vector<std::shared_ptr<const Record>> path;
  bool undo = false;
  {
    absl::MutexLock lock(&mu_);
    const uint64_t at = served_.load()->version;
    std::vector<uint64_t> held;
    if (!records_.empty()) held.push_back(records_.front()->parent);
    for (const auto& r : records_) held.push_back(r->version);
    if (version == 0 || at == 0 || std::find(held.begin(), held.end(), version) == held.end()) {
      return absl::FailedPreconditionError(
          absl::StrFormat("version %u is not held; held: [%s] (--keep_versions)", version,
                          absl::StrJoin(held, ", ")));
    }
    undo = version < at;
    for (const auto& r : records_) {
      if (undo ? (r->version > version && r->version <= at)
               : (r->version > at && r->version <= version)) {
        path.push_back(r);
      }
    }
    if (undo) std::reverse(path.begin(), path.end());
    pinned_ = true;
  }
  if (!path.empty()) Switch(path, undo);
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> ServingStore::Resume() {
  absl::MutexLock apply(&apply_mu_);
  std::vector<std::shared_ptr<const Record>> redo;
  std::deque<std::pair<VersionDelta, std::vector<TableDigest>>> queued;
  {
    absl::MutexLock lock(&mu_);
    const uint64_t at = served_.load()->version;
    for (const auto& r : records_) {
      if (r->version > at) redo.push_back(r);
    }
    queued.swap(queued_);
    pinned_ = false;
  }
  if (!redo.empty()) Switch(redo, /*undo=*/false);
  // A queued version refused now (its digests, the memory limit) ends the queue: the ones
  // after it build on it. The source then asks again from the version served.
  for (auto& [d, expected] : queued) {
    if (absl::Status s = ApplyLocked(std::move(d), expected); !s.ok()) {
      refused_total_.fetch_add(1);
      break;
    }
    applied_total_.fetch_add(1);
  }
  return served_.load()->version;
}

namespace {

absl::StatusOr<const TableState*> FindTable(const State& s, const std::string& table,
                                            TableKind kind) {
  if (s.version == 0) return absl::UnavailableError("no version is served yet");
  auto it = s.tables.find(table);
  if (it == s.tables.end()) {
    return absl::NotFoundError(
        absl::StrFormat("no table '%s' at version %u", table.substr(0, 128), s.version));
  }
  if (it->second->config.kind != kind) {
    return absl::InvalidArgumentError(absl::StrFormat("table '%s' is %s", table.substr(0, 128),
                                                      TableKindName(it->second->config.kind)));
  }
  return it->second.get();
}

absl::Status CheckResponseBytes(const std::string& table, uint64_t bytes, uint64_t limit) {
  if (bytes <= limit) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      absl::StrFormat("table '%s': the answer would be %u bytes, over the limit of %u bytes "
                      "(--max_response_bytes); look up fewer keys at once",
                      table.substr(0, 128), bytes, limit));
}

}  // namespace

// A lookup at another kept version W reads the served copy (at S) through the records
// between: for W < S, the first record after W that changed a key has its value at W (before);
// for W > S (pinned), the last record up to W that changed it (after).
absl::StatusOr<LookupResult> ServingStore::Lookup(const std::string& table, const uint64_t* keys,
                                                  size_t n, uint64_t version, std::string* values,
                                                  std::string* found) const {
  const ReadGuard read(this);
  State* s = read.state;
  absl::StatusOr<const TableState*> t = FindTable(*s, table, TableKind::kSparse);
  if (!t.ok()) return t.status();
  const TableState& ts = **t;
  std::vector<const TableChange*> overlay;  // in the order to search
  bool before = false;
  if (version != 0 && version != s->version) {
    absl::MutexLock lock(&mu_);
    const bool held = std::any_of(records_.begin(), records_.end(), [&](const auto& r) {
      return r->version == version || r->parent == version;
    });
    if (!held) {
      return absl::FailedPreconditionError(
          absl::StrFormat("version %u is not held (GetServingStatus lists those held)", version));
    }
    before = version < s->version;
    for (const auto& r : records_) {
      const bool between = before ? (r->version > version && r->version <= s->version)
                                  : (r->version > s->version && r->version <= version);
      if (!between) continue;
      for (const TableChange& c : r->changes) {
        if (c.name != table) continue;
        if (c.whole()) {
          return absl::FailedPreconditionError(absl::StrFormat(
              "table '%s' was created, dropped or replaced between versions %u and %u: look it "
              "up at the served version",
              table.substr(0, 128), version, s->version));
        }
        overlay.push_back(&c);
      }
    }
    if (!before) std::reverse(overlay.begin(), overlay.end());
  }
  const uint32_t dim = ts.width;
  TESSERA_RETURN_IF_ERROR(
      CheckResponseBytes(table, n * uint64_t{dim} * sizeof(float), options_.max_response_bytes));
  values->resize(n * dim * sizeof(float));
  found->assign((n + 7) / 8, '\0');
  float* out = reinterpret_cast<float*>(values->data());
  // In blocks of keys: every index slot of the block is fetched, then every row, then they
  // are copied: a key's slot and row each miss the cache otherwise (common/key_index.h).
  constexpr size_t kBlock = 64;
  const float* rows[kBlock];
  for (size_t first = 0; first < n; first += kBlock) {
    const size_t m = std::min(kBlock, n - first);
    for (size_t j = 0; j < m; ++j) ts.Prefetch(keys[first + j]);
    for (size_t j = 0; j < m; ++j) {
      const uint64_t key = keys[first + j];
      const float* row = nullptr;
      bool decided = false;
      for (const TableChange* c : overlay) {
        auto it = c->at.find(key);
        if (it == c->at.end()) continue;
        const bool present = before ? c->had_before[it->second] : c->has_after[it->second];
        if (present) row = &(before ? c->before_rows : c->after_rows)[size_t{it->second} * dim];
        decided = true;
        break;
      }
      if (!decided) row = ts.Find(key);
      if (row != nullptr) __builtin_prefetch(row, 0, 3);
      rows[j] = row;
    }
    for (size_t j = 0; j < m; ++j) {
      const size_t i = first + j;
      if (rows[j] != nullptr) {
        std::memcpy(out + i * dim, rows[j], dim * sizeof(float));
        (*found)[i / 8] = static_cast<char>((*found)[i / 8] | (1 << (i % 8)));
      } else {
        ts.initializer.FillRow(keys[i], out + i * dim, dim);
      }
    }
  }
  return LookupResult{version != 0 ? version : s->version, dim};
}

absl::StatusOr<LookupResult> ServingStore::LookupDense(const std::string& table, uint64_t version,
                                                       std::string* values) const {
  const ReadGuard read(this);
  State* s = read.state;
  if (version != 0 && version != s->version) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "dense tables are looked up at the served version (%u), not %u", s->version, version));
  }
  absl::StatusOr<const TableState*> t = FindTable(*s, table, TableKind::kDense);
  if (!t.ok()) return t.status();
  const TableState& ts = **t;
  const uint64_t size = ts.config.dense_size;
  const uint32_t block = ts.width;
  TESSERA_RETURN_IF_ERROR(
      CheckResponseBytes(table, size * sizeof(float), options_.max_response_bytes));
  values->resize(size * sizeof(float));
  float* out = reinterpret_cast<float*>(values->data());
  for (uint64_t b = 0, first = 0; first < size; ++b, first += block) {
    const uint64_t len = std::min<uint64_t>(block, size - first);
    if (const float* row = ts.Find(b); row != nullptr) {
      std::memcpy(out + first, row, len * sizeof(float));
    } else {
      ts.initializer.FillDense(first, out + first, len);
    }
  }
  return LookupResult{s->version, 0};
}

std::vector<std::shared_ptr<const VersionDelta>> ServingStore::DeltasAfter(
    uint64_t from, std::shared_ptr<const VersionDelta>* full) const {
  *full = nullptr;
  {
    absl::MutexLock lock(&mu_);
    const uint64_t newest = RecordedVersionLocked();
    if (newest <= from) return {};
    std::vector<std::shared_ptr<const VersionDelta>> out;
    for (const auto& r : records_) {
      if (r->parent == from || (!out.empty() && r->parent == out.back()->version)) {
        out.push_back(r->Relay());
      }
    }
    if (!out.empty() && out.back()->version == newest) return out;
  }
  // The served copy as one full version, copied out while it is counted as read.
  const ReadGuard read(this);
  State* s = read.state;
  auto d = std::make_shared<VersionDelta>();
  d->version = s->version;
  d->created_unix_ms = s->created_unix_ms;
  d->num_vshards = s->num_vshards;
  std::vector<std::string> names;
  for (const auto& [name, t] : s->tables) names.push_back(name);
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    const TableState& t = *s->tables.at(name);
    TableDelta td{.config = t.config, .full = true};
    for (uint32_t p = 0; p < kParts; ++p) {
      const Part& part = t.parts[p];
      if (part.index.size() == 0) continue;
      VshardDelta v{.vshard = p};
      v.keys.reserve(part.index.size());
      v.weights.reserve(part.index.size() * t.width);
      part.index.ForEach([&](uint64_t key, uint32_t slot) {
        v.keys.push_back(key);
        const float* w = &part.weights[size_t{slot} * t.width];
        v.weights.insert(v.weights.end(), w, w + t.width);
      });
      td.vshards.push_back(std::move(v));
    }
    d->tables.push_back(std::move(td));
  }
  d->digests = DigestsOf(*s);
  if (d->version <= from) return {};
  *full = std::move(d);
  return {};
}

uint64_t ServingStore::RecordedVersion() const {
  absl::MutexLock lock(&mu_);
  return RecordedVersionLocked();
}

uint64_t ServingStore::RecordedVersionLocked() const {
  return records_.empty() ? served_.load()->version : records_.back()->version;
}

void ServingStore::WaitNewer(uint64_t version, absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  const absl::Time deadline = absl::Now() + timeout;
  while (RecordedVersionLocked() <= version) {
    if (newer_.WaitWithDeadline(&mu_, deadline)) return;
  }
}

StoreStatus ServingStore::Status() const {
  StoreStatus out;
  {
    absl::MutexLock lock(&mu_);
    out.pinned = pinned_;
    if (!records_.empty()) out.kept_versions.push_back(records_.front()->parent);
    for (const auto& r : records_) out.kept_versions.push_back(r->version);
    if (!out.kept_versions.empty() && out.kept_versions.front() == 0) {
      out.kept_versions.erase(out.kept_versions.begin());
    }
    out.newest_version = !queued_.empty() ? queued_.back().first.version : RecordedVersionLocked();
  }
  {
    const ReadGuard read(this);
    const State* s = read.state;
    out.version = s->version;
    out.created_unix_ms = s->created_unix_ms;
    for (const auto& [name, t] : s->tables) out.tables.push_back({t->config, t->rows, t->digest});
  }
  std::sort(out.tables.begin(), out.tables.end(),
            [](const auto& a, const auto& b) { return a.config.name < b.config.name; });
  out.newest_version = std::max(out.newest_version, out.version);
  return out;
}

HeldTables ServingStore::Held() const {
  absl::MutexLock apply(&apply_mu_);
  HeldTables h;
  {
    absl::MutexLock lock(&mu_);
    if (!queued_.empty()) {
      const VersionDelta& q = queued_.back().first;
      h.version = q.version;
      h.num_vshards = q.num_vshards;
      for (const TableDelta& t : q.tables) h.tables[t.config.name] = t.config;
      return h;
    }
  }
  // Between applies both copies hold the newest applied version, unless pinned: then the
  // records after the served one say what is newest.
  State* s = served_.load();
  {
    absl::MutexLock lock(&mu_);
    if (!records_.empty() && records_.back()->version > s->version) {
      const Record& r = *records_.back();
      h.version = r.version;
      h.num_vshards = r.num_vshards;
      for (const TableConfig& t : r.tables_after) h.tables[t.name] = t;
      return h;
    }
  }
  h.version = s->version;
  h.num_vshards = s->num_vshards;
  for (const auto& [name, t] : s->tables) h.tables[name] = t->config;
  return h;
}

absl::Status ServingStore::Verify() const {
  absl::MutexLock apply(&apply_mu_);
  std::vector<TableDigest> copies[2];
  for (int i = 0; i < 2; ++i) {
    const State& st = *states_[i];
    for (const auto& [name, table] : st.tables) {
      const TableState* t = table.get();  // (a lambda may not capture a structured binding)
      uint64_t digest = 0, rows = 0;
      t->ForEachRow([&](uint64_t key, const float* row) {
        digest += RowDigest(key, row, t->width);
        ++rows;
      });
      if (digest != t->digest || rows != t->rows) {
        return absl::InternalError(absl::StrFormat(
            "copy %d, table '%s': its rows digest to %016x (%u rows), it keeps %016x (%u rows)", i,
            Short(name), digest, rows, t->digest, t->rows));
      }
    }
    copies[i] = DigestsOf(st);
  }
  if (copies[0] != copies[1] || states_[0]->version != states_[1]->version) {
    return absl::InternalError(
        absl::StrFormat("the copies differ: version %u {%s}, version %u {%s}", states_[0]->version,
                        ShowDigests(copies[0]), states_[1]->version, ShowDigests(copies[1])));
  }
  return absl::OkStatus();
}

uint64_t ServingStore::newest_version() const { return Status().newest_version; }

bool ServingStore::pinned() const {
  absl::MutexLock lock(&mu_);
  return pinned_;
}

int64_t ServingStore::bytes() const {
  absl::MutexLock lock(&mu_);
  return BytesLocked();
}

int64_t ServingStore::BytesLocked() const {
  int64_t b = static_cast<int64_t>(states_[0]->bytes.load() + states_[1]->bytes.load());
  for (const auto& r : records_) b += static_cast<int64_t>(r->bytes + r->relay_bytes.load());
  for (const auto& q : queued_) b += static_cast<int64_t>(q.first.Bytes());
  return b;
}

}  // namespace tessera::serving
