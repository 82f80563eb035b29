// Changes of the embedding lifecycle (docs/embedding_lifecycle.md): the removal of sparse rows
// as an entry of the shard's log, applied alike on the primary and on every backup.
#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "proto/tessera.pb.h"
#include "server/apply_executors.h"
#include "server/request_checks.h"
#include "server/server_core.h"
#include "server/sparse_table.h"

namespace tessera {

absl::Status ServerCore::SubmitRemoveRows(std::shared_ptr<const v1::RemoveRowsRequest> req,
                                          v1::RemoveRowsResponse* resp, const Origin& origin,
                                          Done& done) {
  absl::StatusOr<std::shared_ptr<Table>> found = LookupTable(req->table());
  if (!found.ok()) return found.status();
  const std::shared_ptr<Table> table = *std::move(found);
  if (table->sparse == nullptr) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "table '%s' is dense: RemoveRows removes rows of sparse tables", ShortName(req->table())));
  }
  SparseTable& sparse = *table->sparse;
  // The request's own checks (key type, count, bytes, ownership), before the order lock.
  SparseKeys keys;
  TESSERA_RETURN_IF_ERROR(CheckSparseRequest(sparse, req->table(), req->key_type(),
                                             v1::DTYPE_FLOAT32, sparse.dim(), req->num_keys(),
                                             req->keys(), &keys));
  const uint64_t n = keys.keys.size();
  if (!req->stamps().empty() && req->stamps().size() != n * sizeof(uint64_t)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "table '%s': RemoveRows stamps must be empty or num_keys (%u) x 8 bytes, got %u bytes",
        ShortName(req->table()), n, req->stamps().size()));
  }
  if (!req->stamps().empty() && !sparse.has_lifecycle()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("table '%s' has no lifecycle: its rows carry no stamps to compare",
                        ShortName(req->table())));
  }
  if (!v1::RemoveReason_IsValid(req->reason())) {
    return absl::InvalidArgumentError(
        absl::StrFormat("table '%s': RemoveRows reason %d is not a known reason",
                        ShortName(req->table()), static_cast<int>(req->reason())));
  }
  const bool demote = req->reason() == v1::REMOVE_REASON_DEMOTE;
  if (demote && !sparse.has_tier()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "table '%s' has no disk tier: RemoveRows with reason DEMOTE moves rows to it (set "
        "lifecycle.tier_ram_rows, tier_ram_bytes or tier_idle_seconds)",
        ShortName(req->table())));
  }
  // Each vshard's keys (and stamps), gathered before the change is logged: nothing after
  // Sequence may fail.
  struct Run {
    uint32_t vshard;
    std::vector<uint64_t> keys, stamps;
  };
  std::vector<Run> by_vshard;
  by_vshard.reserve(keys.groups.runs.size());
  for (const VshardRun& run : keys.groups.runs) {
    Run& r = by_vshard.emplace_back(Run{run.vshard, {}, {}});
    r.keys.reserve(run.end - run.begin);
    for (uint32_t j = run.begin; j < run.end; ++j) {
      const uint32_t i = keys.groups.KeyIndex(j);
      r.keys.push_back(keys.keys[i]);
      if (!req->stamps().empty()) {
        uint64_t stamp;
        std::memcpy(&stamp, req->stamps().data() + size_t{i} * sizeof(stamp), sizeof(stamp));
        r.stamps.push_back(stamp);  // (little-endian hosts: common/wire.h)
      }
    }
  }
  {
    absl::MutexLock order(&order_mu_);
    std::shared_ptr<Table> current;
    TESSERA_RETURN_IF_ERROR(
        CheckSequence(origin, req->table(),
                      origin.replay != nullptr ? origin.replay->table_id : table->id, &current));
    if (current != table) {  // (replays only: a client's is refused by CheckSequence)
      return absl::FailedPreconditionError(absl::StrFormat(
          "table '%s' changed while the removal was checked", ShortName(req->table())));
    }
    LogEntry entry;
    entry.op = req;
    entry.table_id = table->id;
    Sequence(origin, &entry);
    // A barrier (as ApplyStep): every earlier change is applied before the rows go, so the
    // removal lands in every vshard's LSN order on every replica.
    executors_->Drain();
    uint64_t removed = 0;
    uint32_t kept = 0;
    try {
      absl::ReaderMutexLock gate(&gate_);  // (a checkpoint's cut sees all of it or none)
      const uint64_t gen = generation_.load(std::memory_order_relaxed);
      for (const Run& r : by_vshard) {
        removed += demote ? sparse.Demote(r.vshard, r.keys, r.stamps, &kept)
                          : sparse.Remove(r.vshard, r.keys, r.stamps, gen, &kept);
      }
      // Removal records (16 bytes each, not charged) beyond a sixteenth of the rows (at least
      // 64 Ki): forgotten, the next checkpoint full.
      if (!demote) {
        sparse.BoundRemovals(gen, std::max<uint64_t>(uint64_t{1} << 16, sparse.num_rows() / 16));
      }
    } catch (const std::bad_alloc&) {
      // Logged and half applied: crash-only, as an executor that cannot apply (a replica that
      // holds the entry whole takes over; docs/state_machine.md).
      LogError("out of memory applying change %u; exiting so that a replica takes over", entry.lsn);
      std::abort();
    }
    // The rows' memory stays (reused by the vshard's next new rows, which are then not charged
    // again): so does their charge.
    SparseTable::LifecycleCounters& counters = sparse.lifecycle_counters();
    if (req->reason() == v1::REMOVE_REASON_TTL) counters.evicted_ttl += removed;
    if (req->reason() == v1::REMOVE_REASON_CAPACITY) counters.evicted_capacity += removed;
    if (req->reason() == v1::REMOVE_REASON_MEMORY) counters.evicted_memory += removed;
    counters.kept += kept;
    resp->set_rows(removed);
    resp->set_kept(kept);
    resp->set_lsn(entry.lsn);
  }
  std::exchange(done, nullptr)(absl::OkStatus());
  return absl::OkStatus();
}

// ---- The primary's lifecycle task ----

namespace {

// How often a table's rows are scanned for its TTL: a quarter of it, from 100 ms to a minute.
int64_t TtlScanIntervalMs(uint64_t ttl_seconds) {
  return std::clamp<int64_t>(static_cast<int64_t>(ttl_seconds) * 250, 100, 60'000);
}

// Most keys in one RemoveRows entry of the lifecycle task.
constexpr size_t kRemoveBatch = 4096;

}  // namespace

void ServerCore::LifecycleLoop() {
  const absl::Duration interval = absl::Milliseconds(options_.lifecycle_interval_ms);
  for (;;) {
    {
      absl::MutexLock lock(&lifecycle_mu_);
      if (lifecycle_mu_.AwaitWithTimeout(absl::Condition(&lifecycle_stop_), interval)) return;
    }
    RunLifecycle();
  }
}

uint64_t ServerCore::RunLifecycle() {
  if (!bound() || !serving_.load(std::memory_order_acquire) ||
      restoring_.load(std::memory_order_acquire)) {
    return 0;  // (backups never decide: they apply the primary's entries)
  }
  std::vector<std::shared_ptr<Table>> tables;
  {
    absl::ReaderMutexLock lock(&tables_mu_);
    for (const auto& [name, t] : tables_) {
      if (t->sparse != nullptr && t->sparse->has_lifecycle()) tables.push_back(t);
    }
  }
  uint64_t removed = 0;
  for (const std::shared_ptr<Table>& t : tables) {
    SparseTable& sparse = *t->sparse;
    const LifecycleConfig& policy = t->config.lifecycle;
    const int64_t now = NowMs();
    // (A TTL in steps is scanned each time the table's step moved a quarter of it.)
    const bool ttl_due = policy.ttl_steps != 0
                             ? sparse.max_step() >= t->ttl_scan_step.load() +
                                                        std::max<uint64_t>(1, policy.ttl_steps / 4)
                             : policy.ttl_seconds != 0 && now - t->ttl_scan_ms.load() >=
                                                              TtlScanIntervalMs(policy.ttl_seconds);
    const uint64_t capacity = sparse.CapacityRows();
    // Pushes refused at the memory limit, or near it with few released rows to reuse (under 5%
    // of the table's rows): a table with an eviction policy keeps a reserve of released rows in
    // every vshard, its lowest-ordered rows going (SparseTable::PlanReserve); new rows take
    // their memory and a stream of new keys goes on within the limit
    // (docs/embedding_lifecycle.md, "Memory").
    const uint64_t rows = sparse.num_rows();
    const bool refused = t->refused_for_memory.exchange(false, std::memory_order_relaxed);
    const bool pressure = policy.frees_rows() && rows > 0 &&
                          (refused || (budget_.used() >= budget_.limit() / 10 * 9 &&
                                       sparse.FreeRows() < rows / 20 + 1));
    const bool evict = ttl_due || sparse.NeedsEviction(capacity);
    // The disk tier: rows idle for tier_idle_seconds (scanned as often as a TTL would be) and
    // rows above the RAM capacity move to disk.
    const bool idle_due =
        sparse.has_tier() && policy.tier_idle_seconds != 0 &&
        now - t->idle_scan_ms.load() >= TtlScanIntervalMs(policy.tier_idle_seconds);
    const bool demote =
        sparse.has_tier() && (idle_due || sparse.NeedsEviction(sparse.TierRamRows()));
    if (!evict && !pressure && !demote) continue;
    if (ttl_due) {
      t->ttl_scan_ms = now;
      t->ttl_scan_step = sparse.max_step();
    }
    if (idle_due) t->idle_scan_ms = now;
    // Removes what a plan chose for `reason`: entries of at most kRemoveBatch keys, any
    // vshards of the shard.
    using Chosen = std::vector<std::pair<uint32_t, std::vector<SparseTable::Victim>>>;
    auto remove = [&](v1::RemoveReason reason, const Chosen& chosen) {
      auto req = std::make_shared<v1::RemoveRowsRequest>();
      auto submit = [&] {
        if (req->num_keys() == 0) return;
        if (policy.dry_run && reason != v1::REMOVE_REASON_DEMOTE) {
          sparse.lifecycle_counters().would_evict += req->num_keys();
        } else {
          req->mutable_header()->set_shard_map_epoch(shard_map_epoch());
          req->set_table(t->config.name);
          req->set_key_type(v1::KEY_TYPE_UINT64);
          req->set_reason(reason);
          v1::RemoveRowsResponse resp;
          absl::Status result = absl::UnknownError("not answered");
          // (Applied under the order lock: `done` runs before this returns.)
          SubmitFromClient(&ServerCore::SubmitRemoveRows,
                           std::shared_ptr<const v1::RemoveRowsRequest>(req), &resp, nullptr,
                           [&result](absl::Status st) { result = std::move(st); });
          if (result.ok()) {
            removed += resp.rows();
          } else if (!absl::IsFailedPrecondition(result) && !absl::IsNotFound(result) &&
                     !absl::IsUnavailable(result)) {
            // (Not the primary any more, or the table dropped: the next round sees it.)
            LogWarning("lifecycle: removing %u rows of table '%s' failed: %s", req->num_keys(),
                       ShortName(t->config.name), result.ToString());
          }
        }
        req = std::make_shared<v1::RemoveRowsRequest>();
      };
      for (const auto& [vshard, victims] : chosen) {
        for (const SparseTable::Victim& v : victims) {
          // (Little-endian hosts: common/wire.h.)
          req->mutable_keys()->append(reinterpret_cast<const char*>(&v.key), sizeof(v.key));
          req->mutable_stamps()->append(reinterpret_cast<const char*>(&v.stamp), sizeof(v.stamp));
          req->set_num_keys(req->num_keys() + 1);
          if (req->num_keys() == kRemoveBatch) submit();
        }
      }
      submit();
    };
    if (evict) {
      SparseTable::EvictionPlan plan;
      sparse.PlanEvictions(now, ttl_due, capacity, &plan);
      if (ttl_due) sparse.PlanDiskTtl(now, &plan);  // (a TTL empties both tiers)
      remove(v1::REMOVE_REASON_TTL, plan.ttl);
      remove(v1::REMOVE_REASON_CAPACITY, plan.capacity);
    }
    if (demote) {
      SparseTable::EvictionPlan plan;
      sparse.PlanDemotions(now, idle_due, &plan);
      remove(v1::REMOVE_REASON_DEMOTE, plan.ttl);
      remove(v1::REMOVE_REASON_DEMOTE, plan.capacity);
    }
    if (pressure) {
      // Each vshard's reserve (a push's keys spread over the vshards, a few each), counted
      // after the TTL's and the capacity's removals above. A table with a disk tier moves
      // those rows to disk instead of removing them.
      SparseTable::EvictionPlan reserve;
      sparse.PlanReserve(now, /*min_reserve=*/8, &reserve);
      remove(sparse.has_tier() ? v1::REMOVE_REASON_DEMOTE : v1::REMOVE_REASON_MEMORY,
             reserve.capacity);
    }
  }
  return removed;
}

}  // namespace tessera
