#include "serving/serving_store.h"

#include <algorithm>
#include <cstring>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/hash.h"
#include "common/shard_map.h"

namespace tessera::serving {
namespace {

// Index bytes of a flat_hash_map<uint64_t, uint32_t> with `capacity` slots: a 16-byte slot and
// a control byte each.
size_t IndexBytes(size_t capacity) { return capacity * 17; }

// What a vshard of `rows` rows of `width` floats will hold at most (an index grown to 8/7 of
// the rows, rounded up to a power of two).
size_t EstimateBytes(size_t rows, uint32_t width) {
  size_t capacity = 1;
  while (capacity * 7 < rows * 8) capacity <<= 1;
  return rows * width * sizeof(float) + IndexBytes(capacity) + sizeof(VshardRows);
}

std::string FirstDifference(const std::vector<TableDigest>& got,
                            const std::vector<TableDigest>& want) {
  auto show = [](const std::vector<TableDigest>& d) {
    return absl::StrJoin(d, ", ", [](std::string* out, const TableDigest& t) {
      absl::StrAppendFormat(out, "%s: %016x (%u rows)", t.name.substr(0, 64), t.digest, t.rows);
    });
  };
  return absl::StrFormat("computed {%s}, the source's {%s}", show(got), show(want));
}

}  // namespace

uint32_t RowWidth(const TableConfig& config) {
  return config.kind == TableKind::kSparse ? config.dim : config.dense_block_elems;
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

VshardRows::~VshardRows() {
  if (charged != nullptr) charged->fetch_sub(static_cast<int64_t>(bytes));
}

TableVersion::TableVersion(const TableConfig& c)
    : config(c), width(RowWidth(c)), initializer(c.initializer) {}

std::vector<TableDigest> Root::Digests() const {
  std::vector<TableDigest> out;
  for (const auto& [name, t] : tables) out.push_back({name, t->digest, t->rows});
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return out;
}

uint64_t RowDigest(uint64_t key, const float* weights, uint32_t width) {
  uint64_t h = Mix64(key ^ 0x5E7D1A6Bu);
  for (uint32_t i = 0; i < width; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &weights[i], 4);
    h = Mix64(h ^ (uint64_t{bits} << 32 | i));
  }
  return h;
}

ServingStore::ServingStore(StoreOptions options) : options_(options) {
  if (options_.keep_versions == 0) options_.keep_versions = 1;
}

absl::StatusOr<std::shared_ptr<const TableVersion>> ServingStore::BuildTable(
    const TableDelta& delta, const std::shared_ptr<const TableVersion>& base,
    uint32_t num_vshards) {
  auto table = std::make_shared<TableVersion>(delta.config);
  const uint32_t width = table->width;
  if (width == 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("table '%s': rows of 0 floats", delta.config.name.substr(0, 64)));
  }
  table->vshards.resize(num_vshards);
  if (!delta.full) table->vshards = base->vshards;
  for (const VshardDelta& v : delta.vshards) {
    if (v.vshard >= num_vshards) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "table '%s': vshard %u of %u", delta.config.name.substr(0, 64), v.vshard, num_vshards));
    }
    if (v.weights.size() != v.keys.size() * width) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "table '%s' vshard %u: %u weights for %u keys of %u floats",
          delta.config.name.substr(0, 64), v.vshard, v.weights.size(), v.keys.size(), width));
    }
    const VshardRows* old = delta.full ? nullptr : table->vshards[v.vshard].get();
    const size_t old_rows = old != nullptr ? old->index.size() : 0;
    const size_t estimate = EstimateBytes(old_rows + v.keys.size(), width);
    if (options_.max_memory_bytes != 0 &&
        static_cast<uint64_t>(charged_.load()) + estimate > options_.max_memory_bytes) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "table '%s' vshard %u needs %u bytes; %u of --max_memory_bytes=%u are held",
          delta.config.name.substr(0, 64), v.vshard, estimate, charged_.load(),
          options_.max_memory_bytes));
    }
    auto rows = std::make_shared<VshardRows>();
    rows->charged = &charged_;
    rows->bytes = estimate;
    charged_.fetch_add(static_cast<int64_t>(estimate));
    const absl::flat_hash_set<uint64_t> removed(v.tombstones.begin(), v.tombstones.end());
    rows->index.reserve(old_rows + v.keys.size());
    rows->weights.reserve((old_rows + v.keys.size()) * width);
    if (old != nullptr) {
      for (const auto& [key, r] : old->index) {
        if (removed.contains(key)) continue;
        rows->index.emplace(key, static_cast<uint32_t>(rows->index.size()));
        const float* w = &old->weights[size_t{r} * width];
        rows->weights.insert(rows->weights.end(), w, w + width);
      }
    }
    for (size_t i = 0; i < v.keys.size(); ++i) {
      const float* w = &v.weights[i * width];
      auto [it, inserted] =
          rows->index.emplace(v.keys[i], static_cast<uint32_t>(rows->index.size()));
      if (inserted) {
        rows->weights.insert(rows->weights.end(), w, w + width);
      } else {
        std::memcpy(&rows->weights[size_t{it->second} * width], w, width * sizeof(float));
      }
    }
    if (rows->index.empty()) {
      table->vshards[v.vshard] = nullptr;
      continue;
    }
    uint64_t digest = 0;
    for (const auto& [key, r] : rows->index) {
      digest += RowDigest(key, &rows->weights[size_t{r} * width], width);
    }
    rows->digest = digest;
    table->vshards[v.vshard] = std::move(rows);
  }
  for (const auto& v : table->vshards) {
    if (v == nullptr) continue;
    table->digest += v->digest;
    table->rows += v->index.size();
  }
  return table;
}

absl::Status ServingStore::Apply(VersionDelta delta, const std::vector<TableDigest>& expected) {
  absl::MutexLock apply(&apply_mu_);
  const std::shared_ptr<const Root> newest = Newest();
  const uint64_t held = newest != nullptr ? newest->version : 0;
  auto refuse = [&](absl::Status s) {
    refused_total_.fetch_add(1);
    return s;
  };
  if (delta.version <= held) {
    return refuse(absl::FailedPreconditionError(
        absl::StrFormat("version %u is not newer than the version held, %u", delta.version, held)));
  }
  if (delta.parent != 0 && delta.parent != held) {
    return refuse(absl::FailedPreconditionError(absl::StrFormat(
        "version %u follows version %u; this replica holds %u (a gap: subscribe again from "
        "the version held)",
        delta.version, delta.parent, held)));
  }
  if (delta.num_vshards == 0 ||
      (delta.parent != 0 && newest != nullptr && delta.num_vshards != newest->num_vshards)) {
    return refuse(absl::InvalidArgumentError(
        absl::StrFormat("version %u has %u vshards", delta.version, delta.num_vshards)));
  }
  auto root = std::make_shared<Root>();
  root->version = delta.version;
  root->parent = delta.parent;
  root->created_unix_ms = delta.created_unix_ms;
  root->num_vshards = delta.num_vshards;
  for (const TableDelta& t : delta.tables) {
    std::shared_ptr<const TableVersion> base;
    if (!t.full) {
      if (newest != nullptr) {
        auto it = newest->tables.find(t.config.name);
        if (it != newest->tables.end()) base = it->second;
      }
      if (base == nullptr || RowWidth(base->config) != RowWidth(t.config) ||
          base->config.kind != t.config.kind || base->config.dense_size != t.config.dense_size) {
        return refuse(absl::FailedPreconditionError(absl::StrFormat(
            "version %u changes table '%s', which version %u does not hold as it is", delta.version,
            t.config.name.substr(0, 64), held)));
      }
    }
    absl::StatusOr<std::shared_ptr<const TableVersion>> built =
        BuildTable(t, base, delta.num_vshards);
    if (!built.ok()) return refuse(built.status());
    if (!root->tables.emplace(t.config.name, *std::move(built)).second) {
      return refuse(absl::InvalidArgumentError(absl::StrFormat(
          "version %u lists table '%s' twice", delta.version, t.config.name.substr(0, 64))));
    }
  }
  delta.digests = root->Digests();
  if (!expected.empty() && expected != delta.digests) {
    return refuse(absl::DataLossError(
        absl::StrFormat("version %u does not match its source's digests: %s", delta.version,
                        FirstDifference(delta.digests, expected))));
  }
  // Keep the delta for relays (a full version is relayed from its root instead).
  std::shared_ptr<const VersionDelta> kept_delta;
  if (delta.parent != 0) {
    const int64_t bytes = static_cast<int64_t>(delta.Bytes());
    charged_.fetch_add(bytes);
    std::atomic<int64_t>* charged = &charged_;
    kept_delta = std::shared_ptr<const VersionDelta>(new VersionDelta(std::move(delta)),
                                                     [charged, bytes](const VersionDelta* d) {
                                                       charged->fetch_sub(bytes);
                                                       delete d;
                                                     });
  }
  std::shared_ptr<const Root> published = std::move(root);
  {
    absl::MutexLock lock(&mu_);
    kept_.push_back(published);
    deltas_.push_back(std::move(kept_delta));
    if (!pinned_) served_.store(published);
    DropBeyondKeep();
    newer_.SignalAll();
  }
  applied_total_.fetch_add(1);
  return absl::OkStatus();
}

void ServingStore::DropBeyondKeep() {
  const std::shared_ptr<const Root> served = served_.load();
  for (size_t i = 0; kept_.size() > options_.keep_versions && i < kept_.size();) {
    if (kept_[i] == served) {
      ++i;
      continue;
    }
    kept_.erase(kept_.begin() + static_cast<ptrdiff_t>(i));
    deltas_.erase(deltas_.begin() + static_cast<ptrdiff_t>(i));
  }
}

std::shared_ptr<const Root> ServingStore::Served() const { return served_.load(); }

std::shared_ptr<const Root> ServingStore::Newest() const {
  absl::MutexLock lock(&mu_);
  return kept_.empty() ? nullptr : kept_.back();
}

std::shared_ptr<const Root> ServingStore::Kept(uint64_t version) const {
  absl::MutexLock lock(&mu_);
  for (const auto& r : kept_) {
    if (r->version == version) return r;
  }
  return nullptr;
}

namespace {

absl::StatusOr<std::shared_ptr<const TableVersion>> FindTable(const Root* root,
                                                              const std::string& table,
                                                              uint64_t version, TableKind kind) {
  if (root == nullptr) {
    return version == 0
               ? absl::UnavailableError("no version is served yet")
               : absl::FailedPreconditionError(absl::StrFormat(
                     "version %u is not held (GetServingStatus lists those held)", version));
  }
  auto it = root->tables.find(table);
  if (it == root->tables.end()) {
    return absl::NotFoundError(
        absl::StrFormat("no table '%s' at version %u", table.substr(0, 128), root->version));
  }
  if (it->second->config.kind != kind) {
    return absl::InvalidArgumentError(absl::StrFormat("table '%s' is %s", table.substr(0, 128),
                                                      TableKindName(it->second->config.kind)));
  }
  return it->second;
}

}  // namespace

absl::StatusOr<LookupResult> ServingStore::Lookup(const std::string& table, const uint64_t* keys,
                                                  size_t n, uint64_t version, std::string* values,
                                                  std::string* found) const {
  const std::shared_ptr<const Root> root = version == 0 ? Served() : Kept(version);
  absl::StatusOr<std::shared_ptr<const TableVersion>> t =
      FindTable(root.get(), table, version, TableKind::kSparse);
  if (!t.ok()) return t.status();
  const TableVersion& tv = **t;
  const uint32_t dim = tv.width;
  values->resize(n * dim * sizeof(float));
  found->assign((n + 7) / 8, '\0');
  float* out = reinterpret_cast<float*>(values->data());
  for (size_t i = 0; i < n; ++i) {
    const VshardRows* rows = tv.vshards[VshardOfKey(keys[i], root->num_vshards)].get();
    if (rows != nullptr) {
      auto it = rows->index.find(keys[i]);
      if (it != rows->index.end()) {
        std::memcpy(out + i * dim, &rows->weights[size_t{it->second} * dim], dim * sizeof(float));
        (*found)[i / 8] = static_cast<char>((*found)[i / 8] | (1 << (i % 8)));
        continue;
      }
    }
    tv.initializer.FillRow(keys[i], out + i * dim, dim);
  }
  return LookupResult{root->version, dim};
}

absl::StatusOr<LookupResult> ServingStore::LookupDense(const std::string& table, uint64_t version,
                                                       std::string* values) const {
  const std::shared_ptr<const Root> root = version == 0 ? Served() : Kept(version);
  absl::StatusOr<std::shared_ptr<const TableVersion>> t =
      FindTable(root.get(), table, version, TableKind::kDense);
  if (!t.ok()) return t.status();
  const TableVersion& tv = **t;
  const uint64_t size = tv.config.dense_size;
  const uint32_t block = tv.width;
  values->resize(size * sizeof(float));
  float* out = reinterpret_cast<float*>(values->data());
  std::vector<bool> have((size + block - 1) / block, false);
  for (const auto& rows : tv.vshards) {
    if (rows == nullptr) continue;
    for (const auto& [b, r] : rows->index) {
      if (b >= have.size()) continue;  // (checked when read from the source)
      const uint64_t first = b * block;
      const uint64_t len = std::min<uint64_t>(block, size - first);
      std::memcpy(out + first, &rows->weights[size_t{r} * block], len * sizeof(float));
      have[b] = true;
    }
  }
  for (uint64_t b = 0; b < have.size(); ++b) {
    if (have[b]) continue;
    const uint64_t first = b * block;
    tv.initializer.FillDense(first, out + first, std::min<uint64_t>(block, size - first));
  }
  return LookupResult{root->version, 0};
}

absl::Status ServingStore::Rollback(uint64_t version) {
  absl::MutexLock lock(&mu_);
  for (const auto& r : kept_) {
    if (r->version != version) continue;
    pinned_ = true;
    served_.store(r);
    return absl::OkStatus();
  }
  std::vector<uint64_t> held;
  for (const auto& r : kept_) held.push_back(r->version);
  return absl::FailedPreconditionError(absl::StrFormat(
      "version %u is not held; held: [%s] (--keep_versions)", version, absl::StrJoin(held, ", ")));
}

uint64_t ServingStore::Resume() {
  absl::MutexLock lock(&mu_);
  pinned_ = false;
  if (!kept_.empty()) served_.store(kept_.back());
  DropBeyondKeep();
  return kept_.empty() ? 0 : kept_.back()->version;
}

std::vector<std::shared_ptr<const VersionDelta>> ServingStore::DeltasAfter(
    uint64_t from, std::shared_ptr<const Root>* full) const {
  absl::MutexLock lock(&mu_);
  *full = nullptr;
  if (kept_.empty() || kept_.back()->version <= from) return {};
  std::vector<std::shared_ptr<const VersionDelta>> out;
  for (size_t i = 0; i < kept_.size(); ++i) {
    if (kept_[i]->version != from) continue;
    for (size_t j = i + 1; j < kept_.size(); ++j) {
      if (deltas_[j] == nullptr || deltas_[j]->parent != kept_[j - 1]->version) {
        out.clear();
        break;
      }
      out.push_back(deltas_[j]);
    }
    if (!out.empty()) return out;
    break;
  }
  *full = kept_.back();
  return {};
}

void ServingStore::WaitNewer(uint64_t version, absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  const absl::Time deadline = absl::Now() + timeout;
  while (kept_.empty() || kept_.back()->version <= version) {
    if (newer_.WaitWithDeadline(&mu_, deadline)) return;
  }
}

uint64_t ServingStore::newest_version() const {
  absl::MutexLock lock(&mu_);
  return kept_.empty() ? 0 : kept_.back()->version;
}

bool ServingStore::pinned() const {
  absl::MutexLock lock(&mu_);
  return pinned_;
}

std::vector<uint64_t> ServingStore::kept_versions() const {
  absl::MutexLock lock(&mu_);
  std::vector<uint64_t> out;
  for (const auto& r : kept_) out.push_back(r->version);
  return out;
}

}  // namespace tessera::serving
