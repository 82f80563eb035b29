// The lifecycle policy's choices for a sparse table (docs/embedding_lifecycle.md, "The
// primary's lifecycle task"): which rows a TTL, a capacity, a memory reserve or the disk tier's
// RAM capacity take, decided by the primary from the rows' metadata; and the age sample of
// `tessera status`. Decisions only: the rows change by the entries that carry them
// (server/sparse_table.cc).
#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "common/hash.h"
#include "common/logging.h"
#include "server/row_meta.h"
#include "server/sparse_table.h"
#include "server/tier_store.h"

namespace tessera {

using row_meta::DecayedCount;
using row_meta::MetaSecond;

std::vector<uint32_t> SparseTable::SampleUpdateAges(int64_t now_ms, size_t max_rows) const {
  size_t owned = 0;
  for (const auto& p : partitions_) owned += p != nullptr ? 1 : 0;
  const size_t per_vshard = owned == 0 ? 0 : (max_rows + owned - 1) / owned;
  const uint32_t now = MetaNow(now_ms);
  std::vector<uint32_t> ages;
  for (const auto& p : partitions_) {
    if (p == nullptr || ages.size() >= max_rows) continue;
    absl::MutexLock lock(&p->mu);
    // (The first rows in slot order, a sample since keys are hashed; the scan stops there:
    // status calls on a large table read a few rows a vshard, not its whole index.)
    size_t taken = 0;
    RowArena& arena = const_cast<RowArena&>(p->rows);
    p->index.ForEachWhile([&](uint64_t, uint32_t id) {
      if (taken++ >= per_vshard || ages.size() >= max_rows) return false;
      const uint32_t last = static_cast<uint32_t>(Stamp(arena.Row(id)) >> 32);
      ages.push_back(now > last ? now - last : 0);
      return true;
    });
  }
  std::sort(ages.begin(), ages.end());
  return ages;
}

uint64_t SparseTable::CapacityRows() const {
  return RowsWithin(config_.lifecycle.capacity_rows, config_.lifecycle.capacity_bytes);
}

template <typename Fn>
void SparseTable::ScanStamps(const Partition& p, std::vector<std::pair<uint64_t, uint32_t>>* rows,
                             Fn&& fn) const {
  // The index first (sequential), then the rows' metadata with kAhead rows' cache misses in
  // flight: rows lie in the arena in creation order, at random with respect to the index.
  rows->clear();
  rows->reserve(p.index.size());
  p.index.ForEach([&](uint64_t key, uint32_t id) { rows->emplace_back(key, id); });
  RowArena& arena = const_cast<RowArena&>(p.rows);
  constexpr size_t kAhead = 16;
  const size_t n = rows->size();
  for (size_t i = 0; i < std::min(n, kAhead); ++i) {
    __builtin_prefetch(arena.Row((*rows)[i].second) + meta_offset_, 0, 0);
  }
  for (size_t i = 0; i < n; ++i) {
    if (i + kAhead < n)
      __builtin_prefetch(arena.Row((*rows)[i + kAhead].second) + meta_offset_, 0, 0);
    fn((*rows)[i].first, Stamp(arena.Row((*rows)[i].second)));
  }
}

uint32_t SparseTable::VshardCap(uint64_t capacity_rows) const {
  if (capacity_rows == 0) return 0;
  uint64_t owned = 0;
  for (const auto& p : partitions_) owned += p != nullptr ? 1 : 0;
  const uint64_t share =
      (capacity_rows + capacity_rows / 10 + owned - 1) / std::max<uint64_t>(owned, 1);
  return static_cast<uint32_t>(std::min<uint64_t>(share + kVshardSlack, UINT32_MAX));
}

bool SparseTable::NeedsEviction(uint64_t capacity_rows) const {
  if (capacity_rows == 0) return false;
  if (num_rows() > capacity_rows) return true;
  const uint32_t cap = VshardCap(capacity_rows);
  for (const auto& p : partitions_) {
    if (p != nullptr && p->live_rows.load(std::memory_order_relaxed) > cap) return true;
  }
  return false;
}

void SparseTable::PlanReserve(int64_t now_ms, uint32_t min_reserve, EvictionPlan* out) const {
  out->ttl.clear();
  out->capacity.clear();
  const LifecycleConfig& l = config_.lifecycle;
  const uint32_t now = MetaNow(now_ms);
  std::vector<std::pair<uint64_t, uint32_t>> scratch;
  struct Candidate {
    uint64_t order;
    Victim victim;
  };
  std::vector<Candidate> rows;
  for (uint32_t v = 0; v < num_vshards(); ++v) {
    if (!Owns(v)) continue;
    const Partition& p = *partitions_[v];
    absl::MutexLock lock(&p.mu);
    const uint32_t live = p.rows.live(), free = p.rows.size() - live;
    const uint32_t reserve = std::max(min_reserve, live / 20);
    if (free >= reserve || live == 0) continue;
    const size_t need = std::min<size_t>(reserve - free, live);
    rows.clear();
    ScanStamps(p, &scratch, [&](uint64_t key, uint64_t stamp) {
      const uint32_t last = static_cast<uint32_t>(stamp >> 32);
      const uint64_t order = l.victims != EvictionVictims::kLfu
                                 ? stamp
                                 : (uint64_t{DecayedCount(static_cast<uint32_t>(stamp), last, now,
                                                          l.lfu_half_life_seconds)}
                                    << 32) |
                                       last;
      rows.push_back({order, {key, stamp}});
    });
    std::nth_element(rows.begin(), rows.begin() + (need - 1), rows.end(),
                     [](const Candidate& a, const Candidate& b) { return a.order < b.order; });
    std::vector<Victim>& chosen = out->capacity.emplace_back(v, std::vector<Victim>{}).second;
    for (size_t i = 0; i < need; ++i) chosen.push_back(rows[i].victim);
  }
}

void SparseTable::PlanEvictions(int64_t now_ms, bool ttl, uint64_t capacity_rows,
                                EvictionPlan* out) const {
  PlanChoices(now_ms, ttl ? TtlUnits() : 0, capacity_rows, out);
}

void SparseTable::PlanDemotions(int64_t now_ms, bool idle, EvictionPlan* out) const {
  PlanChoices(now_ms, idle ? config_.lifecycle.tier_idle_seconds : 0, TierRamRows(), out);
}

void SparseTable::PlanDiskTtl(int64_t now_ms, EvictionPlan* out) const {
  const uint64_t ttl_s = TtlUnits();
  if (tier_ == nullptr || ttl_s == 0) return;
  const uint32_t now = MetaNow(now_ms);
  const size_t meta_byte = meta_offset_ * sizeof(float);
  for (uint32_t v = 0; v < num_vshards(); ++v) {
    if (!Owns(v)) continue;
    const Partition& p = *partitions_[v];
    absl::MutexLock lock(&p.mu);
    if (p.demoted.load(std::memory_order_relaxed) == 0) continue;
    std::vector<Victim> gone;
    const absl::Status s = tier_->Scan(tier_space_, v, [&](uint64_t key, absl::string_view b) {
      if (b.size() != stored_bytes()) return;
      uint32_t meta[2];
      std::memcpy(meta, b.data() + meta_byte, sizeof(meta));
      if (now >= meta[0] && now - meta[0] >= ttl_s) {
        gone.push_back({key, (uint64_t{meta[0]} << 32) | meta[1]});
      }
    });
    if (!s.ok()) {
      LogWarning("table '%s': the TTL scan of the disk tier failed: %s", config_.name,
                 s.ToString());
      return;  // (a decision only: the next scan tries again)
    }
    if (!gone.empty()) out->ttl.emplace_back(v, std::move(gone));
  }
}

void SparseTable::PlanChoices(int64_t now_ms, uint64_t ttl_s, uint64_t capacity_rows,
                              EvictionPlan* out) const {
  out->ttl.clear();
  out->capacity.clear();
  const LifecycleConfig& l = config_.lifecycle;
  const uint32_t now = MetaNow(now_ms);
  // Rows to give up: down to 95% of the capacity; and in each vshard, down to its cap.
  const uint64_t total = num_rows();
  const uint64_t target = capacity_rows - capacity_rows / 20;
  // (At most an eighth of the capacity a round, at least 64 Ki rows: a plan's lists live
  // outside the memory budget, 16 bytes a victim and more for ties and caps; a stream of new
  // keys above the capacity would otherwise have the plan hold tens of MiB at once. The next
  // round, 100 ms on, takes the rest.)
  uint64_t over = capacity_rows != 0 && total > capacity_rows
                      ? std::min<uint64_t>(total - target,
                                           std::max<uint64_t>(uint64_t{1} << 16, capacity_rows / 8))
                      : 0;
  const uint32_t vshard_cap = VshardCap(capacity_rows);
  if (ttl_s == 0 && !NeedsEviction(capacity_rows)) return;
  // A row's place in the order of victims: lower goes first. LRU: the oldest update, then the
  // fewest updates (the stamp itself); LFU: the lowest count decayed to now, then the oldest.
  const auto order_of = [&](uint64_t stamp) {
    const uint32_t last = static_cast<uint32_t>(stamp >> 32);
    if (l.victims != EvictionVictims::kLfu) return stamp;
    return (uint64_t{DecayedCount(static_cast<uint32_t>(stamp), last, now, l.lfu_half_life_seconds)}
            << 32) |
           last;
  };
  const auto expired = [&](uint64_t stamp) {
    const uint32_t last = static_cast<uint32_t>(stamp >> 32);
    return ttl_s != 0 && now >= last && now - last >= ttl_s;
  };
  // Pass 1: the rows past the TTL, the rows each vshard keeps, and a uniform sample of their
  // order (reservoir): the whole of it when the table is small, so that the threshold below is
  // then exact.
  constexpr size_t kSample = 8192;
  std::vector<std::pair<uint64_t, uint32_t>> scratch;
  std::vector<uint64_t> sample;
  std::vector<uint32_t> kept(num_vshards(), 0);
  bool vshard_over = false;
  uint64_t others = 0;
  uint64_t rng = Mix64(now_ms ^ total);
  for (uint32_t v = 0; v < num_vshards(); ++v) {
    if (!Owns(v)) continue;
    const Partition& p = *partitions_[v];
    std::vector<Victim> gone;
    {
      absl::MutexLock lock(&p.mu);
      ScanStamps(p, &scratch, [&](uint64_t key, uint64_t stamp) {
        if (expired(stamp)) {
          gone.push_back({key, stamp});
          return;
        }
        ++kept[v];
        if (over == 0) return;
        ++others;
        if (sample.size() < kSample) {
          sample.push_back(order_of(stamp));
        } else {
          rng = Mix64(rng);
          if (const uint64_t j = rng % others; j < kSample) sample[j] = order_of(stamp);
        }
      });
    }
    vshard_over |= vshard_cap != 0 && kept[v] > vshard_cap;
    over -= std::min<uint64_t>(over, gone.size());
    if (!gone.empty()) out->ttl.emplace_back(v, std::move(gone));
  }
  if ((over == 0 || others == 0) && !vshard_over) return;
  // The order below which about `over` of the other rows lie (exactly, from a whole sample);
  // none without an excess over the table's capacity.
  uint64_t threshold = 0;
  if (over != 0 && others != 0) {
    std::sort(sample.begin(), sample.end());
    const size_t rank = std::min<size_t>(
        sample.size() - 1, static_cast<size_t>(static_cast<double>(over) * sample.size() / others));
    threshold = sample[rank];
  }
  // Pass 2: those rows, then rows at the threshold until `over` are chosen; and in a vshard
  // still above its cap after that, its lowest-ordered others down to the cap (rows released
  // in one vshard serve only its own new rows: the cap keeps the memory each vshard holds, and
  // so the table's, near the capacity whatever the spread of new keys).
  // Rows at the threshold (ties: e.g. every row updated in one second, once) are sampled
  // uniformly over the table, not taken vshard by vshard: the rows removed serve their own
  // vshards' next rows, so removals bunched in the first vshards left the others without any.
  std::vector<Victim> at_threshold;
  uint64_t ties = 0;
  absl::flat_hash_set<uint64_t> capped_keys;  // chosen by a vshard's cap
  uint64_t chosen = 0;
  struct Candidate {
    uint64_t order;
    Victim victim;
  };
  std::vector<Candidate> rest;
  for (uint32_t v = 0; v < num_vshards(); ++v) {
    if (!Owns(v) || (chosen >= over && kept[v] <= vshard_cap)) continue;
    const Partition& p = *partitions_[v];
    std::vector<Victim> victims;
    rest.clear();
    const bool capped = vshard_cap != 0 && kept[v] > vshard_cap;
    {
      absl::MutexLock lock(&p.mu);
      ScanStamps(p, &scratch, [&](uint64_t key, uint64_t stamp) {
        if (expired(stamp)) return;
        const uint64_t order = order_of(stamp);
        if (chosen < over && order < threshold) {
          victims.push_back({key, stamp});
          ++chosen;
        } else {
          if (over != 0 && order == threshold) {  // (a reservoir of `over` ties)
            ++ties;
            if (at_threshold.size() < over) {
              at_threshold.push_back({key, stamp});
            } else {
              rng = Mix64(rng);
              if (const uint64_t j = rng % ties; j < over) at_threshold[j] = {key, stamp};
            }
          }
          if (capped) rest.push_back({order, {key, stamp}});
        }
      });
    }
    const uint64_t left = kept[v] - std::min<uint64_t>(kept[v], victims.size());
    if (capped && left > vshard_cap) {
      const size_t more = std::min<size_t>(rest.size(), left - vshard_cap);
      std::nth_element(rest.begin(), rest.begin() + (more - 1), rest.end(),
                       [](const Candidate& a, const Candidate& b) { return a.order < b.order; });
      for (size_t i = 0; i < more; ++i) {
        victims.push_back(rest[i].victim);
        capped_keys.insert(rest[i].victim.key);
      }
    }
    if (!victims.empty()) out->capacity.emplace_back(v, std::move(victims));
  }
  // The ties needed, in a random order of the reservoir (deterministic: a decision of the
  // primary's, any order would do), each appended to its vshard's list.
  for (size_t i = at_threshold.size(); i > 1; --i) {
    rng = Mix64(rng);
    std::swap(at_threshold[i - 1], at_threshold[rng % i]);
  }
  std::vector<int32_t> list_of(num_vshards(), -1);
  for (size_t i = 0; i < out->capacity.size(); ++i) {
    list_of[out->capacity[i].first] = static_cast<int32_t>(i);
  }
  for (const Victim& victim : at_threshold) {
    if (chosen >= over) break;
    if (capped_keys.contains(victim.key)) continue;  // (taken by its vshard's cap already)
    const uint32_t v = VshardOfKey(victim.key, num_vshards());
    if (list_of[v] < 0) {
      list_of[v] = static_cast<int32_t>(out->capacity.size());
      out->capacity.emplace_back(v, std::vector<Victim>{});
    }
    out->capacity[list_of[v]].second.push_back(victim);
    ++chosen;
  }
  // (Lists in vshard order, as the ttl ones.)
  std::sort(out->capacity.begin(), out->capacity.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
}

}  // namespace tessera
