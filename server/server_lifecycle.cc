// Changes of the embedding lifecycle (docs/embedding_lifecycle.md): the removal of sparse rows
// as an entry of the shard's log, applied alike on the primary and on every backup.
#include <algorithm>
#include <vector>

#include "absl/strings/str_format.h"
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
  {
    absl::MutexLock order(&order_mu_);
    std::shared_ptr<Table> current;
    TESSERA_RETURN_IF_ERROR(
        CheckSequence(origin, req->table(),
                      origin.replay != nullptr ? origin.replay->table_id : table->id, &current));
    LogEntry entry;
    entry.op = req;
    entry.table_id = table->id;
    Sequence(origin, &entry);
    // A barrier (as ApplyStep): every earlier change is applied before the rows go, so the
    // removal lands in every vshard's LSN order on every replica.
    executors_->Drain();
    uint64_t removed = 0;
    {
      absl::ReaderMutexLock gate(&gate_);  // (a checkpoint's cut sees all of it or none)
      const uint64_t gen = generation_.load(std::memory_order_relaxed);
      std::vector<uint64_t> run_keys;
      for (const VshardRun& run : keys.groups.runs) {
        run_keys.clear();
        for (uint32_t j = run.begin; j < run.end; ++j) {
          run_keys.push_back(keys.keys[keys.groups.KeyIndex(j)]);
        }
        removed += sparse.Remove(run.vshard, run_keys, gen);
      }
    }
    // The removed rows' charge goes back (their memory is reused by the next new rows, which
    // are charged again).
    const uint64_t freed = std::min(removed * sparse.row_charge(), table->charged.load());
    table->charged -= freed;
    budget_.Release(freed);
    resp->set_rows(removed);
    resp->set_lsn(entry.lsn);
  }
  std::exchange(done, nullptr)(absl::OkStatus());
  return absl::OkStatus();
}

}  // namespace tessera
