// Changes of the embedding lifecycle (docs/embedding_lifecycle.md): the removal of sparse rows
// as an entry of the shard's log, applied alike on the primary and on every backup.
#include <algorithm>
#include <vector>

#include "absl/strings/str_format.h"
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
  // Each vshard's keys, gathered before the change is logged: nothing after Sequence may fail.
  std::vector<std::pair<uint32_t, std::vector<uint64_t>>> by_vshard;
  by_vshard.reserve(keys.groups.runs.size());
  for (const VshardRun& run : keys.groups.runs) {
    std::vector<uint64_t>& run_keys =
        by_vshard.emplace_back(run.vshard, std::vector<uint64_t>{}).second;
    run_keys.reserve(run.end - run.begin);
    for (uint32_t j = run.begin; j < run.end; ++j) {
      run_keys.push_back(keys.keys[keys.groups.KeyIndex(j)]);
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
    try {
      absl::ReaderMutexLock gate(&gate_);  // (a checkpoint's cut sees all of it or none)
      const uint64_t gen = generation_.load(std::memory_order_relaxed);
      for (const auto& [vshard, run_keys] : by_vshard)
        removed += sparse.Remove(vshard, run_keys, gen);
    } catch (const std::bad_alloc&) {
      // Logged and half applied: crash-only, as an executor that cannot apply (a replica that
      // holds the entry whole takes over; docs/state_machine.md).
      LogError("out of memory applying change %u; exiting so that a replica takes over", entry.lsn);
      std::abort();
    }
    // The rows' memory stays (reused by the vshard's next new rows, which are then not charged
    // again): so does their charge.
    resp->set_rows(removed);
    resp->set_lsn(entry.lsn);
  }
  std::exchange(done, nullptr)(absl::OkStatus());
  return absl::OkStatus();
}

}  // namespace tessera
