#include "server/sparse_table.h"

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <random>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_format.h"
#include "common/hash.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "server/count_min_sketch.h"
#include "server/row_meta.h"
#include "server/tier_store.h"

namespace tessera {

using row_meta::DecayedCount;
using row_meta::MetaSecond;

SparseTable::SparseTable(const TableConfig& config, const std::vector<bool>& owned)
    : config_(config),
      params_(OptimizerParams::FromConfig(config.optimizer)),
      initializer_(config.initializer),
      payload_floats_(size_t{config.dim} * (1 + params_.num_slots) + (params_.has_step ? 2 : 0) +
                      (config.lifecycle.enabled() ? kMetaBytes / sizeof(float) : 0)),
      step_offset_(size_t{config.dim} * (1 + params_.num_slots)),
      has_meta_(config.lifecycle.enabled()),
      step_clock_(config.lifecycle.ttl_steps != 0),
      meta_offset_(step_offset_ + (params_.has_step ? 2 : 0)),
      gen_offset_(payload_floats_) {
  partitions_.resize(owned.size());
  const uint64_t seed = std::random_device{}() | (uint64_t{std::random_device{}()} << 32);
  for (size_t v = 0; v < owned.size(); ++v) {
    if (owned[v]) partitions_[v] = std::make_unique<Partition>(payload_floats_ + 2, seed + v);
  }
  const LifecycleConfig& l = config.lifecycle;
  if (l.admission()) {
    // Per vshard (a sketch's counters depend on the order of its adds: a vshard's pushes are
    // applied in LSN order on every replica), seeded by the table's spec, never the process.
    const uint64_t vshards = std::max<size_t>(owned.size(), 1);
    const uint32_t width =
        static_cast<uint32_t>(std::max<uint64_t>(64, l.admission_sketch_width / vshards));
    const uint64_t aging = l.admission_aging_sightings == 0
                               ? 0
                               : std::max<uint64_t>(1, l.admission_aging_sightings / vshards);
    const uint64_t table_seed = Mix64(config.initializer.seed ^ Fnv1a64(config.name));
    const uint64_t exact_keys = (l.admission_exact_keys + vshards - 1) / vshards;
    for (size_t v = 0; v < owned.size(); ++v) {
      if (partitions_[v] == nullptr) continue;
      Partition& p = *partitions_[v];
      absl::MutexLock lock(&p.mu);
      if (l.admission_exact) {
        p.sketch = std::make_unique<ExactCounter>(exact_keys, Mix64(table_seed + v));
      } else {
        p.sketch = std::make_unique<CountMinSketch>(width, l.admission_sketch_depth,
                                                    Mix64(table_seed + v), aging);
      }
      sketch_bytes_ += p.sketch->bytes();
    }
  }
}

SparseTable::~SparseTable() {
  if (tier_ == nullptr) return;
  if (absl::Status s = tier_->DropSpace(tier_space_); !s.ok()) {
    LogWarning("table '%s': %s", config_.name, s.ToString());  // (space never reused)
  }
}

namespace {
// A tier that cannot be read or written while a change is applied: the replica has not
// applied the change, and stops (crash-only, docs/state_machine.md: a replica that holds the
// entry whole takes over).
[[noreturn]] void TierFailed(const std::string& table, const absl::Status& status) {
  LogError("table '%s': %s; exiting so that a replica takes over", table, status.ToString());
  std::abort();
}
}  // namespace

void SparseTable::AttachTier(std::shared_ptr<TierStore> tier) {
  tier_space_ = tier->NewSpace();
  tier_ = std::move(tier);
}

bool SparseTable::ReadDemoted(const Partition& p, uint32_t vshard, uint64_t key,
                              std::string* bytes) const {
  if (tier_ == nullptr || p.demoted.load(std::memory_order_relaxed) == 0) return false;
  absl::StatusOr<bool> found = tier_->Get(tier_space_, vshard, key, bytes);
  if (!found.ok()) TierFailed(config_.name, found.status());
  if (*found && bytes->size() != stored_bytes()) {
    TierFailed(config_.name, absl::DataLossError(absl::StrFormat(
                                 "the disk tier holds %u bytes for key %u, rows have %u",
                                 bytes->size(), key, stored_bytes())));
  }
  return *found;
}

uint32_t SparseTable::Promote(Partition& p, uint32_t vshard, uint64_t key, uint32_t* created) {
  std::string bytes;
  if (!ReadDemoted(p, vshard, key, &bytes)) return KeyIndex::kNone;
  const bool new_memory = !p.rows.HasFree();
  const uint32_t id = p.rows.Append();
  try {
    p.index.Insert(key, id);
  } catch (const std::bad_alloc&) {
    p.rows.Release(id);
    throw;
  }
  std::memcpy(p.rows.Row(id), bytes.data(), stored_bytes());  // (its generation too)
  if (absl::Status s = tier_->Delete(tier_space_, vshard, key); !s.ok()) {
    TierFailed(config_.name, s);
  }
  p.demoted.fetch_sub(1, std::memory_order_relaxed);
  p.free_rows.store(p.rows.size() - p.rows.live(), std::memory_order_relaxed);
  p.live_rows.store(p.rows.live(), std::memory_order_relaxed);
  num_rows_.fetch_add(1, std::memory_order_relaxed);
  counters_.promoted.fetch_add(1, std::memory_order_relaxed);
  if (new_memory) ++*created;
  return id;
}

uint32_t SparseTable::Demote(uint32_t vshard, absl::Span<const uint64_t> keys,
                             absl::Span<const uint64_t> stamps, uint32_t* kept) {
  Partition& p = *partitions_[vshard];
  absl::MutexLock lock(&p.mu);
  std::vector<uint64_t> moved;
  std::vector<uint32_t> ids;
  std::vector<absl::string_view> rows;
  for (size_t i = 0; i < keys.size(); ++i) {
    const uint32_t id = p.index.Find(keys[i]);
    if (id == KeyIndex::kNone) continue;  // (on disk already, or gone)
    const float* row = p.rows.Row(id);
    if (!stamps.empty() && Stamp(row) != stamps[i]) {
      if (kept != nullptr) ++*kept;  // (updated since the primary looked)
      continue;
    }
    moved.push_back(keys[i]);
    ids.push_back(id);
    rows.emplace_back(reinterpret_cast<const char*>(row), stored_bytes());
  }
  if (moved.empty()) return 0;
  if (absl::Status s = tier_->Put(tier_space_, vshard, moved, rows); !s.ok()) {
    TierFailed(config_.name, s);
  }
  for (size_t i = 0; i < moved.size(); ++i) {
    if (p.cow_gen != 0) {
      // Changed since a cut in progress: the row on disk is newer than the cut, so the cut's
      // pre-image stays by key (as a removed row's). Unchanged rows are taken from disk.
      auto it = p.cow.find(ids[i]);
      if (it != p.cow.end()) {
        p.removed_cow.emplace_back(moved[i], std::move(it->second));
        p.cow.erase(it);
      }
    }
    p.index.Erase(moved[i]);
    p.rows.Release(ids[i]);
  }
  const uint32_t n = static_cast<uint32_t>(moved.size());
  p.demoted.fetch_add(n, std::memory_order_relaxed);
  p.free_rows.store(p.rows.size() - p.rows.live(), std::memory_order_relaxed);
  p.live_rows.store(p.rows.live(), std::memory_order_relaxed);
  num_rows_.fetch_sub(n, std::memory_order_relaxed);
  counters_.demoted.fetch_add(n, std::memory_order_relaxed);
  return n;
}

uint64_t SparseTable::SumOverVshards(std::atomic<uint32_t> Partition::*field) const {
  uint64_t n = 0;
  for (const auto& p : partitions_) {
    if (p != nullptr) n += ((*p).*field).load(std::memory_order_relaxed);
  }
  return n;
}

uint64_t SparseTable::disk_rows() const { return SumOverVshards(&Partition::demoted); }

bool SparseTable::HasDemotedRow(uint64_t key) const {
  const uint32_t v = VshardOfKey(key, num_vshards());
  const Partition& p = *partitions_[v];
  absl::MutexLock lock(&p.mu);
  std::string bytes;
  return ReadDemoted(p, v, key, &bytes);
}

uint64_t SparseTable::RowsWithin(uint64_t rows, uint64_t bytes) const {
  if (bytes != 0) {
    const uint64_t by_bytes = std::max<uint64_t>(1, bytes / row_charge());
    rows = rows == 0 ? by_bytes : std::min(rows, by_bytes);
  }
  return rows;
}

uint64_t SparseTable::TierRamRows() const {
  return RowsWithin(config_.lifecycle.tier_ram_rows, config_.lifecycle.tier_ram_bytes);
}

bool SparseTable::Admit(Partition& p, uint64_t key) {
  if (p.cow_gen != 0 && !p.sketch_saved) {
    p.sketch_at_cut = p.sketch->Save();  // (a cut in progress takes the sketch as it was)
    p.sketch_saved = true;
  }
  if (p.sketch->Add(key) >= config_.lifecycle.admission_min_count) {
    p.sketch->Forget(key);  // (an exact counter keeps only pending keys)
    counters_.admitted.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  counters_.not_admitted.fetch_add(1, std::memory_order_relaxed);
  return false;
}

uint64_t SparseTable::Gen(const float* row) const {
  uint64_t gen;
  std::memcpy(&gen, row + gen_offset_, sizeof(gen));
  return gen;
}

void SparseTable::SetGen(float* row, uint64_t gen) const {
  std::memcpy(row + gen_offset_, &gen, sizeof(gen));
}

uint64_t SparseTable::Stamp(const float* row) const {
  uint32_t meta[2];
  std::memcpy(meta, row + meta_offset_, sizeof(meta));
  return (uint64_t{meta[0]} << 32) | meta[1];
}

uint32_t SparseTable::MetaNow(int64_t now_ms) const {
  return step_clock_ ? static_cast<uint32_t>(std::min<uint64_t>(max_step(), UINT32_MAX))
                     : MetaSecond(now_ms);
}

uint64_t SparseTable::TtlUnits() const {
  return step_clock_ ? config_.lifecycle.ttl_steps : config_.lifecycle.ttl_seconds;
}

void SparseTable::NoteStep(uint64_t step) {
  uint64_t seen = max_step_.load(std::memory_order_relaxed);
  while (step > seen && !max_step_.compare_exchange_weak(seen, step)) {
  }
}

void SparseTable::Touch(float* row, int64_t time_ms, uint64_t step) const {
  uint32_t meta[2];  // last update second (or step), score
  std::memcpy(meta, row + meta_offset_, sizeof(meta));
  const uint32_t now = step_clock_ ? static_cast<uint32_t>(std::min<uint64_t>(step, UINT32_MAX))
                                   : MetaSecond(time_ms);
  if (config_.lifecycle.victims == EvictionVictims::kLfu) {
    const uint32_t count =
        DecayedCount(meta[1], meta[0], now, config_.lifecycle.lfu_half_life_seconds);
    meta[1] = count == UINT32_MAX ? count : count + 1;
  } else {
    ++meta[1];  // (wraps: a count of updates, so that every update changes the stamp)
  }
  meta[0] = std::max(meta[0], now);
  std::memcpy(row + meta_offset_, meta, sizeof(meta));
}

uint32_t SparseTable::FindOrCreate(Partition& p, uint64_t key, uint64_t gen, uint32_t* created) {
  if (const uint32_t id = p.index.Find(key); id != KeyIndex::kNone) return id;
  // The row first, then the key: if either allocation throws, the index names no row that
  // does not exist (a row whose key could not be added goes back to the free list).
  const bool new_memory = !p.rows.HasFree();
  const uint32_t id = p.rows.Append();
  try {
    p.index.Insert(key, id);
  } catch (const std::bad_alloc&) {
    p.rows.Release(id);  // (reused by the next new row, not lost)
    throw;
  }
  if (!new_memory) p.free_rows.store(p.rows.size() - p.rows.live(), std::memory_order_relaxed);
  p.live_rows.store(p.rows.live(), std::memory_order_relaxed);
  float* row = p.rows.Row(id);
  const uint32_t dim = config_.dim;
  initializer_.FillRow(key, row, dim);
  for (int s = 0; s < params_.num_slots; ++s) {
    const float init = params_.InitialSlotValue(s);
    float* slot = row + size_t{dim} * (1 + s);
    for (uint32_t i = 0; i < dim; ++i) slot[i] = init;
  }
  if (params_.has_step) std::memset(row + step_offset_, 0, sizeof(uint64_t));
  if (has_meta_) std::memset(row + meta_offset_, 0, kMetaBytes);
  SetGen(row, gen);
  num_rows_.fetch_add(1, std::memory_order_relaxed);
  // (The budget charges rows by the memory they take: a row in a removed row's memory is
  // charged already. The index does not shrink either: its entry is charged too.)
  if (new_memory) ++*created;
  return id;
}

namespace {

// Keys are looked up in batches of kBatch: first every key's index slot is prefetched, then
// the keys are found (their rows prefetched), then the rows are used. The cache misses of a
// batch overlap instead of coming one after another (random keys miss on the index, the row and
// the request's values: 7,000-key pushes applied about 4x faster in-process, docs/benchmarks.md).
constexpr uint32_t kBatch = 16;

// Every cache line of [p, p + bytes).
void PrefetchBytes(const void* p, size_t bytes, bool write) {
  const uintptr_t first = reinterpret_cast<uintptr_t>(p) & ~uintptr_t{63};
  const uintptr_t end = reinterpret_cast<uintptr_t>(p) + bytes;
  for (uintptr_t line = first; line < end; line += 64) {
    if (write) {
      __builtin_prefetch(reinterpret_cast<const void*>(line), 1, 3);
    } else {
      __builtin_prefetch(reinterpret_cast<const void*>(line), 0, 3);
    }
  }
}

}  // namespace

template <typename UseRow>
void SparseTable::ForEachRow(absl::Span<const uint64_t> keys, const VshardGrouping& groups,
                             uint64_t gen, bool write, const float* side, uint32_t part,
                             uint32_t parts, uint32_t* created, bool admit, UseRow&& use) {
  const size_t side_bytes = size_t{config_.dim} * sizeof(float);
  const size_t touched_bytes = (write ? payload_floats_ + 2 : config_.dim) * sizeof(float);
  for (size_t r = 0; r < groups.runs.size(); ++r) {
    const VshardRun& run = groups.runs[r];
    if (run.vshard % parts != part) continue;
    // The next run's partition (its mutex and table header) is on its way while this one runs.
    // (An address only: nothing is read without the lock.)
    if (r + 1 < groups.runs.size())
      PrefetchBytes(partitions_[groups.runs[r + 1].vshard].get(), 128, true);
    Partition& p = *partitions_[run.vshard];
    absl::MutexLock lock(&p.mu);
    for (uint32_t j0 = run.begin; j0 < run.end; j0 += kBatch) {
      const uint32_t n = std::min(kBatch, run.end - j0);
      uint32_t index[kBatch];
      uint32_t ids[kBatch];
      for (uint32_t k = 0; k < n; ++k) {
        index[k] = groups.KeyIndex(j0 + k);
        p.index.Prefetch(keys[index[k]]);
      }
      for (uint32_t k = 0; k < n; ++k) {
        const uint64_t key = keys[index[k]];
        if (created == nullptr) {
          ids[k] = p.index.Find(key);
        } else if (admit || tier_ != nullptr) {
          // (A demoted row comes back before anything else: it was admitted long ago.)
          ids[k] = p.index.Find(key);
          if (ids[k] == KeyIndex::kNone) ids[k] = Promote(p, run.vshard, key, created);
          if (ids[k] == KeyIndex::kNone && (!admit || Admit(p, key)))
            ids[k] = FindOrCreate(p, key, gen, created);
        } else {
          ids[k] = FindOrCreate(p, key, gen, created);
        }
        if (ids[k] != KeyIndex::kNone) PrefetchBytes(p.rows.Row(ids[k]), touched_bytes, write);
        // (A pull writes its side, a push reads it.)
        PrefetchBytes(side + size_t{index[k]} * config_.dim, side_bytes, !write);
      }
      for (uint32_t k = 0; k < n; ++k) use(p, index[k], ids[k]);
    }
  }
}

uint32_t SparseTable::Pull(absl::Span<const uint64_t> keys, const VshardGrouping& groups,
                           float* out, uint64_t gen) {
  const uint32_t dim = config_.dim;
  uint32_t created = 0;
  std::string disk;
  ForEachRow(keys, groups, gen, /*write=*/false, out, 0, 1, has_meta_ ? nullptr : &created,
             /*admit=*/false, [&](Partition& p, uint32_t i, uint32_t id) {
               p.mu.AssertHeld();  // (ForEachRow holds it; the analysis cannot see into lambdas)
               if (id == KeyIndex::kNone) {
                 // On disk: read there (a pull promotes nothing: replicas' tiers stay equal).
                 if (ReadDemoted(p, VshardOfKey(keys[i], num_vshards()), keys[i], &disk)) {
                   std::memcpy(out + size_t{i} * dim, disk.data(), dim * sizeof(float));
                   return;
                 }
                 initializer_.FillRow(keys[i], out + size_t{i} * dim, dim);  // (as if created)
                 return;
               }
               std::memcpy(out + size_t{i} * dim, p.rows.Row(id), dim * sizeof(float));
             });
  return created;
}

uint32_t SparseTable::Push(absl::Span<const uint64_t> keys, const VshardGrouping& groups,
                           const float* grads, uint64_t gen, bool assign, uint32_t part,
                           uint32_t parts, int64_t time_ms, uint64_t step) {
  if (step_clock_) NoteStep(step);
  const size_t dim = config_.dim;
  uint32_t created = 0;
  // (Assigned values are loaded weights: admitted at once.)
  const bool admit = config_.lifecycle.admission() && !assign;
  ForEachRow(keys, groups, gen, /*write=*/true, grads, part, parts, &created, admit,
             [&](Partition& p, uint32_t i, uint32_t id) {
               p.mu.AssertHeld();  // (ForEachRow holds it; the analysis cannot see into lambdas)
               if (id == KeyIndex::kNone) return;  // not admitted yet: only counted
               float* row = p.rows.Row(id);
               if (p.cow_gen != 0 && Gen(row) <= p.cow_gen) {
                 // First change since the cut: keep the row as it was for the checkpoint.
                 p.cow.try_emplace(id, reinterpret_cast<const char*>(row),
                                   (payload_floats_ + 2) * sizeof(float));
               }
               if (has_meta_) Touch(row, time_ms, step);
               float* slot0 = params_.num_slots > 0 ? row + dim : nullptr;
               float* slot1 = params_.num_slots > 1 ? row + 2 * dim : nullptr;
               if (assign) {
                 AssignWeights(params_, row, slot0, slot1, grads + i * dim, dim);
                 SetGen(row, gen);
                 return;
               }
               uint64_t step = 0;
               if (params_.has_step) std::memcpy(&step, row + step_offset_, sizeof(step));
               ApplyUpdate(params_, row, slot0, slot1, &step, grads + i * dim, dim);
               if (params_.has_step) std::memcpy(row + step_offset_, &step, sizeof(step));
               SetGen(row, gen);
             });
  return created;
}

void SparseTable::BeginCut(uint64_t cut_gen) {
  for (auto& p : partitions_) {
    if (p == nullptr) continue;
    absl::MutexLock lock(&p->mu);
    p->cow_gen = cut_gen;
    p->cow.clear();
    p->removed_cow.clear();
    p->sketch_saved = false;
    p->sketch_at_cut.clear();
  }
}

absl::Status SparseTable::TakeVshard(uint32_t vshard, uint64_t cut_gen, uint64_t parent_gen,
                                     VshardSnapshot* out) {
  out->keys.clear();
  out->payload.clear();
  out->demoted.clear();
  Partition& p = *partitions_[vshard];
  absl::MutexLock lock(&p.mu);
  // The copy-on-write ends whatever happens below.
  absl::Cleanup end_cow = [&p] {
    p.mu.AssertHeld();
    p.cow_gen = 0;
    p.cow.clear();
    p.removed_cow.clear();
    p.sketch_saved = false;
    p.sketch_at_cut.clear();
  };
  // The state at the cut: the row itself when unchanged since, else its saved pre-image; rows
  // created after the cut have neither and are left out.
  struct Item {
    uint64_t key;
    const char* payload;
    bool on_disk = false;
  };
  std::vector<Item> items;
  items.reserve(p.index.size());
  p.index.ForEach([&](uint64_t key, uint32_t id) {
    p.mu.AssertHeld();
    const float* row = p.rows.Row(id);
    const char* payload = nullptr;
    uint64_t gen = Gen(row);
    if (gen > cut_gen) {
      auto it = p.cow.find(id);
      if (it == p.cow.end()) return;
      payload = it->second.data();
      gen = Gen(reinterpret_cast<const float*>(payload));
    } else {
      payload = reinterpret_cast<const char*>(row);
    }
    if (gen > parent_gen) items.push_back({key, payload});
  });
  // Rows removed (or demoted changed) since the cut, as they were at it.
  for (const auto& [key, pre] : p.removed_cow) {
    if (Gen(reinterpret_cast<const float*>(pre.data())) > parent_gen) {
      items.push_back({key, pre.data()});
    }
  }
  // Rows on disk: unchanged since they went there. Those newer than the cut were created or
  // changed after it (a changed one's pre-image is among removed_cow).
  std::deque<std::string> disk;
  if (tier_ != nullptr && p.demoted.load(std::memory_order_relaxed) != 0) {
    bool fits = true;
    TESSERA_RETURN_IF_ERROR(
        tier_->Scan(tier_space_, vshard, [&](uint64_t key, absl::string_view bytes) {
          if (bytes.size() != stored_bytes()) {
            fits = false;
            return;
          }
          uint64_t gen;
          std::memcpy(&gen, bytes.data() + gen_offset_ * sizeof(float), sizeof(gen));
          if (gen > cut_gen || gen <= parent_gen) return;
          items.push_back({key, disk.emplace_back(bytes).data(), true});
        }));
    if (!fits) {
      return absl::DataLossError(
          absl::StrFormat("table '%s': the disk tier holds a row of another size (vshard %u)",
                          config_.name, vshard));
    }
  }
  std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.key < b.key; });
  // Tombstones: keys removed between the parent's cut and this one that the cut does not hold.
  // (A key the cut holds despite such a removal was created again after it, so its row is
  // dirty, among the items.)
  out->removed.clear();
  if (parent_gen != 0) {
    for (const auto& [key, gen] : p.removals) {
      if (gen > parent_gen && gen <= cut_gen) out->removed.push_back(key);
    }
    std::sort(out->removed.begin(), out->removed.end());
    out->removed.erase(std::unique(out->removed.begin(), out->removed.end()), out->removed.end());
    std::erase_if(out->removed, [&](uint64_t key) {
      return std::binary_search(items.begin(), items.end(), Item{key, nullptr},
                                [](const Item& a, const Item& b) { return a.key < b.key; });
    });
  }
  const size_t rb = row_bytes();
  out->keys.reserve(items.size());
  out->payload.resize(items.size() * rb);
  if (tier_ != nullptr) out->demoted.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    out->keys.push_back(items[i].key);
    std::memcpy(out->payload.data() + i * rb, items[i].payload, rb);
    if (tier_ != nullptr) out->demoted.push_back(items[i].on_disk);
  }
  out->state.clear();
  if (p.sketch != nullptr) out->state = p.sketch_saved ? p.sketch_at_cut : p.sketch->Save();
  return absl::OkStatus();
}

void SparseTable::EndCut() {
  for (auto& p : partitions_) {
    if (p == nullptr) continue;
    absl::MutexLock lock(&p->mu);
    p->cow_gen = 0;
    p->cow.clear();
    p->removed_cow.clear();
    p->sketch_saved = false;
    p->sketch_at_cut.clear();
  }
}

uint32_t SparseTable::Remove(uint32_t vshard, absl::Span<const uint64_t> keys,
                             absl::Span<const uint64_t> stamps, uint64_t gen, uint32_t* kept) {
  Partition& p = *partitions_[vshard];
  absl::MutexLock lock(&p.mu);
  const size_t stored = (payload_floats_ + 2) * sizeof(float);
  uint32_t removed = 0, removed_from_disk = 0;
  std::string disk;
  for (size_t i = 0; i < keys.size(); ++i) {
    const uint64_t key = keys[i];
    const uint32_t id = p.index.Find(key);
    if (id == KeyIndex::kNone) {
      // On disk: gone from there (its pre-image kept for a cut in progress that holds it).
      if (!ReadDemoted(p, vshard, key, &disk)) continue;
      const float* row = reinterpret_cast<const float*>(disk.data());
      if (!stamps.empty() && (!has_meta_ || Stamp(row) != stamps[i])) {
        if (kept != nullptr) ++*kept;
        continue;
      }
      if (p.cow_gen != 0 && Gen(row) <= p.cow_gen) p.removed_cow.emplace_back(key, disk);
      if (absl::Status s = tier_->Delete(tier_space_, vshard, key); !s.ok()) {
        TierFailed(config_.name, s);
      }
      p.demoted.fetch_sub(1, std::memory_order_relaxed);
      p.removals.emplace_back(key, gen);
      ++removed_from_disk;
      continue;
    }
    const float* row = p.rows.Row(id);
    if (!stamps.empty() && (!has_meta_ || Stamp(row) != stamps[i])) {
      if (kept != nullptr) ++*kept;  // (updated since the remover looked)
      continue;
    }
    if (p.cow_gen != 0) {
      // A checkpoint in progress holds this row at its cut if it existed then: keep that state
      // by key (its pre-image, or the row itself when unchanged since the cut).
      auto it = p.cow.find(id);
      if (it != p.cow.end()) {
        p.removed_cow.emplace_back(key, std::move(it->second));
        p.cow.erase(it);
      } else if (Gen(row) <= p.cow_gen) {
        p.removed_cow.emplace_back(key, std::string(reinterpret_cast<const char*>(row), stored));
      }
    }
    p.removals.emplace_back(key, gen);
    p.index.Erase(key);
    p.rows.Release(id);
    ++removed;
  }
  p.free_rows.store(p.rows.size() - p.rows.live(), std::memory_order_relaxed);
  p.live_rows.store(p.rows.live(), std::memory_order_relaxed);
  num_rows_.fetch_sub(removed, std::memory_order_relaxed);
  removal_records_.fetch_add(removed + removed_from_disk, std::memory_order_relaxed);
  return removed + removed_from_disk;
}

bool SparseTable::BoundRemovals(uint64_t gen, uint64_t limit) {
  if (removal_records_.load(std::memory_order_relaxed) <= limit) return false;
  for (auto& p : partitions_) {
    if (p == nullptr) continue;
    absl::MutexLock lock(&p->mu);
    if (p->cow_gen != 0) return false;  // (a checkpoint being written may need them)
  }
  ForgetRemovals(gen);
  return true;
}

void SparseTable::ForgetRemovals(uint64_t gen) {
  size_t forgotten = 0;
  for (auto& p : partitions_) {
    if (p == nullptr) continue;
    absl::MutexLock lock(&p->mu);
    forgotten += std::erase_if(p->removals, [gen](const auto& r) { return r.second <= gen; });
  }
  removal_records_.fetch_sub(forgotten, std::memory_order_relaxed);
  if (forgotten == 0) return;  // (nothing lost: every parent still works)
  uint64_t horizon = removal_horizon_.load(std::memory_order_relaxed);
  while (horizon < gen && !removal_horizon_.compare_exchange_weak(horizon, gen)) {
  }
}

void SparseTable::LoadRow(uint32_t vshard, uint64_t key, absl::string_view payload,
                          Placement placement) {
  if (step_clock_) {
    uint32_t last;  // (the row's step: the table's step is at least it)
    std::memcpy(&last, payload.data() + meta_offset_ * sizeof(float), sizeof(last));
    NoteStep(last);
  }
  Partition& p = *partitions_[vshard];
  absl::MutexLock lock(&p.mu);
  if (tier_ != nullptr && placement != Placement::kRam) {
    // Beyond the vshard's share of the RAM capacity, a restored row goes to disk.
    const uint64_t ram = TierRamRows();
    if (placement == Placement::kDisk || (ram != 0 && p.rows.live() >= VshardCap(ram))) {
      std::string bytes(payload);
      bytes.resize(stored_bytes());
      SetGen(reinterpret_cast<float*>(bytes.data()), kBaseGeneration);
      const absl::string_view row(bytes);
      if (absl::Status s = tier_->Put(tier_space_, vshard, {key}, {row}); !s.ok()) {
        TierFailed(config_.name, s);
      }
      p.demoted.fetch_add(1, std::memory_order_relaxed);
      return;
    }
  }
  uint32_t created = 0;
  float* row = p.rows.Row(FindOrCreate(p, key, kBaseGeneration, &created));
  std::memcpy(row, payload.data(), row_bytes());
  SetGen(row, kBaseGeneration);
}

std::vector<EntryGroup> SparseTable::HeldGroups() const {
  std::vector<EntryGroup> groups;
  for (uint32_t v = 0; v < num_vshards(); ++v) {
    if (Owns(v)) groups.push_back({.vshard = v});
  }
  return groups;
}

absl::Status SparseTable::TakeGroup(const EntryGroup& group, uint64_t cut_gen, uint64_t parent_gen,
                                    EntrySink& sink) {
  VshardSnapshot snap;
  TESSERA_RETURN_IF_ERROR(TakeVshard(group.vshard, cut_gen, parent_gen, &snap));
  if (!snap.state.empty()) TESSERA_RETURN_IF_ERROR(sink.SetState(group.vshard, snap.state));
  const size_t rb = row_bytes();
  // Rows and tombstones merged in key order (a key is never both).
  size_t r = 0;
  for (size_t i = 0; i < snap.keys.size(); ++i) {
    for (; r < snap.removed.size() && snap.removed[r] < snap.keys[i]; ++r) {
      TESSERA_RETURN_IF_ERROR(sink.Remove(group.vshard, snap.removed[r]));
    }
    const absl::string_view row(snap.payload.data() + i * rb, rb);
    TESSERA_RETURN_IF_ERROR(!snap.demoted.empty() && snap.demoted[i]
                                ? sink.AddDemoted(group.vshard, snap.keys[i], row)
                                : sink.Add(group.vshard, snap.keys[i], row));
  }
  for (; r < snap.removed.size(); ++r) {
    TESSERA_RETURN_IF_ERROR(sink.Remove(group.vshard, snap.removed[r]));
  }
  return absl::OkStatus();
}

size_t SparseTable::EntryBytes(uint32_t vshard, uint64_t key) const {
  if (vshard >= num_vshards() || !Owns(vshard) || VshardOfKey(key, num_vshards()) != vshard) {
    return 0;
  }
  return row_bytes();
}

uint64_t SparseTable::ApplySums(const EntrySums& sums, float scale, uint64_t gen, int64_t time_ms,
                                uint64_t step) {
  if (sums.empty()) return 0;
  const uint32_t dim = config_.dim;
  std::vector<uint64_t> keys;
  std::vector<float> grads;
  keys.reserve(sums.size());
  grads.reserve(sums.size() * dim);
  // (Keys are distinct: the order in which rows are updated does not change any row.)
  for (const auto& [key, sum] : sums) {
    keys.push_back(key);
    for (float g : sum) grads.push_back(SaturateToFloat(double{g} * scale));
  }
  VshardGrouping groups;
  GroupByVshard(keys, num_vshards(), &groups);
  Push(keys, groups, grads.data(), gen, /*assign=*/false, 0, 1, time_ms, step);
  return keys.size();
}

uint64_t SparseTable::Digest(uint32_t vshard) const {
  const Partition& p = *partitions_[vshard];
  absl::MutexLock lock(&p.mu);
  std::vector<std::pair<uint64_t, uint32_t>> rows;
  rows.reserve(p.index.size());
  p.index.ForEach([&](uint64_t key, uint32_t id) { rows.emplace_back(key, id); });
  std::sort(rows.begin(), rows.end());
  const size_t rb = row_bytes();
  std::vector<float> fresh(payload_floats_ + 2);
  uint64_t h = Mix64(vshard);
  for (const auto& [key, id] : rows) {
    const float* row = const_cast<RowArena&>(p.rows).Row(id);
    // The row as FindOrCreate makes it: skip it when nothing changed it since.
    initializer_.FillRow(key, fresh.data(), config_.dim);
    for (int s = 0; s < params_.num_slots; ++s) {
      std::fill_n(fresh.data() + size_t{config_.dim} * (1 + s), config_.dim,
                  params_.InitialSlotValue(s));
    }
    if (params_.has_step) std::memset(fresh.data() + step_offset_, 0, sizeof(uint64_t));
    if (std::memcmp(fresh.data(), row, rb) == 0) continue;
    h = Mix64(h ^ key);
    h = Mix64(h ^ Fnv1a64(absl::string_view(reinterpret_cast<const char*>(row), rb)));
  }
  // Rows on disk, in key order after the RAM's, marked as such: replicas hold the same rows in
  // the same tier (docs/embedding_lifecycle.md, L1).
  if (tier_ != nullptr && p.demoted.load(std::memory_order_relaxed) != 0) {
    h = Mix64(h ^ 0x7469657264697363);
    const absl::Status s = tier_->Scan(tier_space_, vshard, [&](uint64_t key, absl::string_view b) {
      h = Mix64(h ^ key);
      h = Mix64(h ^ Fnv1a64(b.substr(0, rb)));
    });
    if (!s.ok()) h = Mix64(h ^ Fnv1a64(s.ToString()));  // (a digest that no replica matches)
  }
  if (p.sketch != nullptr) h = Mix64(h ^ Fnv1a64(p.sketch->Save()));  // (admission counts)
  return h;
}

absl::Status SparseTable::LoadState(uint32_t vshard, absl::string_view state) {
  if (vshard >= num_vshards() || !Owns(vshard)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("state for vshard %u, not held here", vshard));
  }
  Partition& p = *partitions_[vshard];
  absl::MutexLock lock(&p.mu);
  if (p.sketch == nullptr) {
    if (state.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrFormat("table '%s' admits every key: it keeps no admission sketch", config_.name));
  }
  if (!p.sketch->Load(std::string_view(state.data(), state.size()))) {
    return absl::InvalidArgumentError(
        absl::StrFormat("the admission sketch of table '%s' (vshard %u) has %u bytes here, %u sent",
                        config_.name, vshard, p.sketch->bytes() + sizeof(uint64_t), state.size()));
  }
  return absl::OkStatus();
}

uint64_t SparseTable::Digest() const {
  uint64_t h = 0;
  for (uint32_t v = 0; v < num_vshards(); ++v) {
    if (Owns(v)) h = Mix64(h ^ Digest(v));
  }
  return h;
}

uint64_t SparseTable::bytes() const {
  uint64_t total = partitions_.size() * sizeof(void*);
  for (const auto& p : partitions_) {
    if (p == nullptr) continue;
    absl::MutexLock lock(&p->mu);
    // Rows are written when appended (the rest of their block is untouched, not resident);
    // the index's slots and control bytes are all touched.
    total += sizeof(Partition) + p->rows.resident_bytes() + p->index.bytes() +
             (p->sketch != nullptr ? p->sketch->bytes() : 0);
  }
  return total;
}

uint64_t SparseTable::FixedBytes(const TableConfig& config, const std::vector<bool>& owned) {
  uint64_t n = 0;
  for (bool o : owned) n += o ? 1 : 0;
  uint64_t sketch = 0;
  if (config.lifecycle.admission() && config.lifecycle.admission_exact) {
    const uint64_t vshards = std::max<size_t>(owned.size(), 1);
    sketch =
        ExactCounter::BytesFor((config.lifecycle.admission_exact_keys + vshards - 1) / vshards) +
        64;
  } else if (config.lifecycle.admission()) {
    // (As the constructor sizes them: a power of two of at least 64 counters a row.)
    const uint64_t width = std::bit_ceil(std::max<uint64_t>(
        64, config.lifecycle.admission_sketch_width / std::max<size_t>(owned.size(), 1)));
    sketch = width * config.lifecycle.admission_sketch_depth * sizeof(uint16_t) + 64;
  }
  return owned.size() * sizeof(void*) + n * (sizeof(Partition) + sketch);
}

uint64_t SparseTable::FreeRows() const { return SumOverVshards(&Partition::free_rows); }

bool SparseTable::HasRow(uint64_t key) const {
  const Partition& p = *partitions_[VshardOfKey(key, num_vshards())];
  absl::MutexLock lock(&p.mu);
  return p.index.Find(key) != KeyIndex::kNone;
}

uint64_t SparseTable::RowsNeedingMemory(const VshardGrouping& groups) const {
  uint64_t rows = 0;
  for (const VshardRun& run : groups.runs) {
    const uint32_t n = run.end - run.begin;
    const uint32_t free = partitions_[run.vshard]->free_rows.load(std::memory_order_relaxed);
    rows += n > free ? n - free : 0;
  }
  return rows;
}

uint64_t SparseTable::MissingRowsNeedingMemory(absl::Span<const uint64_t> keys,
                                               const VshardGrouping& groups) const {
  uint64_t rows = 0;
  for (const VshardRun& run : groups.runs) {
    const Partition& p = *partitions_[run.vshard];
    if (run.end - run.begin <= p.free_rows.load(std::memory_order_relaxed)) continue;
    absl::MutexLock lock(&p.mu);
    uint64_t missing = 0;
    for (uint32_t j = run.begin; j < run.end; ++j) p.index.Prefetch(keys[groups.KeyIndex(j)]);
    for (uint32_t j = run.begin; j < run.end; ++j) {
      missing += p.index.Find(keys[groups.KeyIndex(j)]) == KeyIndex::kNone ? 1 : 0;
    }
    const uint64_t free = p.rows.size() - p.rows.live();
    rows += missing > free ? missing - free : 0;
  }
  return rows;
}

}  // namespace tessera
