// ServerCore's pushes and BSP steps: validation, sequencing under the order lock (through
// server_changes.cc's CheckSequence and Sequence) and the executors' parts, for a client's
// push and a backup's replay alike (docs/state_machine.md).
#include <algorithm>
#include <bit>
#include <cmath>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "optimizer/optimizer.h"
#include "proto/cluster.pb.h"
#include "proto/tessera.pb.h"
#include "server/apply_executors.h"
#include "server/dense_table.h"
#include "server/request_checks.h"
#include "server/server_core.h"
#include "server/sparse_table.h"

namespace tessera {

// ---- Pushes ----

namespace {

// A push's bulk field: where the transport left it (in the request's bytes), else the message's.
absl::string_view BulkBytes(const WireBytes::Field& f, const std::string& in_message) {
  return f.data != nullptr ? absl::string_view(f.data, f.size) : absl::string_view(in_message);
}

}  // namespace

struct ServerCore::SparsePush {
  std::shared_ptr<const v1::PushSparseRequest> req;
  std::shared_ptr<const WireBytes> wire;  // (keys and values may point into it)
  std::shared_ptr<Table> table;
  SparseKeys keys;
  std::vector<float> scratch;
  absl::Span<const float> values;
  std::unique_ptr<Reservation> rows;  // settled when the last part is done with it
  std::unique_ptr<Reservation> sums;  // (an accumulate push: its BSP sums instead)
};

namespace {
// What one key's BSP sum holds: its floats, the vector and its map entry.
uint64_t SumCharge(uint32_t dim) { return uint64_t{dim} * sizeof(float) + 64; }
}  // namespace

absl::StatusOr<bool> ServerCore::SequencePush(const Origin& origin, const std::string& name,
                                              Table& t, const v1::PushId& id, uint64_t step,
                                              LogEntry::Op op, v1::PushResponse* resp, Done* done) {
  const bool replay = origin.replay != nullptr;
  std::shared_ptr<Table> current;
  TESSERA_RETURN_IF_ERROR(
      CheckSequence(origin, name, replay ? origin.replay->table_id : t.id, &current));
  if (current.get() != &t) {  // (replays only: a client's is refused by CheckSequence)
    return absl::FailedPreconditionError(
        absl::StrFormat("table '%s' changed while the push was checked", ShortName(name)));
  }
  absl::Status refusal;
  if (CheckDuplicate(origin, id, name, resp, &refusal)) {
    if (!refusal.ok()) return refusal;
    return false;
  }
  if (step != 0) TESSERA_RETURN_IF_ERROR(CheckAccumulate(t, step));
  LogEntry entry;
  entry.op = std::move(op);
  entry.table_id = t.id;
  Sequence(origin, &entry);
  dedup_.Record(id.client_id(), id.sequence(), id.floor(), entry.time_ms);
  resp->set_lsn(entry.lsn);
  if (!replay) *done = MaybeDropResponse(id, std::move(*done));  // (applied ones only)
  return true;
}

absl::Status ServerCore::SubmitPushSparse(std::shared_ptr<const v1::PushSparseRequest> req,
                                          v1::PushResponse* resp, const Origin& origin,
                                          Done& done) {
  const bool replay = origin.replay != nullptr;
  const std::string& name = req->table();
  absl::StatusOr<std::shared_ptr<Table>> found = FindTable(nullptr, name, TableKind::kSparse);
  if (!found.ok()) return found.status();
  auto work = std::make_shared<SparsePush>();
  work->req = req;
  work->wire = origin.wire;
  const WireBytes::Field none;
  work->table = *std::move(found);
  SparseTable& sparse = *work->table->sparse;
  TESSERA_RETURN_IF_ERROR(CheckPushId(req->id(), name));
  TESSERA_RETURN_IF_ERROR(CheckSparseRequest(
      sparse, name, req->key_type(), req->dtype(), req->dim(), req->num_keys(),
      BulkBytes(origin.wire != nullptr ? origin.wire->keys : none, req->keys()), &work->keys));
  absl::StatusOr<absl::Span<const float>> values =
      PushValues(BulkBytes(origin.wire != nullptr ? origin.wire->values : none, req->values()),
                 req->num_keys() * sparse.dim(), name, &work->scratch, /*trusted=*/replay);
  if (!values.ok()) return values.status();
  work->values = *values;
  if (!replay) TESSERA_RETURN_IF_ERROR(CheckDistinct(work->keys.keys, work->keys.groups, name));
  TESSERA_RETURN_IF_ERROR(CheckAssign(req->assign(), req->accumulate_step(), name));
  if (sparse.step_clock() && req->step() == 0 && req->accumulate_step() == 0) {
    // (Without one the rows it touches would look never updated, and go at the next scan.)
    return absl::InvalidArgumentError(absl::StrFormat(
        "table '%s' counts its TTL in training steps (lifecycle.ttl_steps): a push to it must "
        "carry its step (PushOptions.step, Python push_sparse(step=...)) or accumulate_step",
        ShortName(name)));
  }
  // Memory for the rows (or BSP sums) it may create, before anything is inserted.
  if (req->accumulate_step() == 0) {
    // (Rows released by removals are reused first: only the rest can need new memory. An
    // estimate; a row created beyond it is charged when the push is settled.)
    absl::StatusOr<std::unique_ptr<Reservation>> rows =
        ReserveRows(work->table, sparse.RowsNeedingMemory(work->keys.groups), replay, "push");
    if (!rows.ok() && absl::IsResourceExhausted(rows.status())) {
      // Near a limit: only keys without a row can take memory (most of a push's keys are
      // resident in a table that fills its memory): look them up before refusing.
      rows = ReserveRows(work->table,
                         sparse.MissingRowsNeedingMemory(work->keys.keys, work->keys.groups),
                         replay, "push");
    }
    if (!rows.ok()) {
      if (absl::IsResourceExhausted(rows.status()) && work->table->config.lifecycle.frees_rows()) {
        // The table's lifecycle makes room (its evictions or demotions, by capacity or near the
        // memory limit, give rows back to their vshards; its next round knows of this refusal): a
        // refusal that passes, with a hint when to retry (L4).
        work->table->refused_for_memory.store(true, std::memory_order_relaxed);
      }
      if (absl::IsResourceExhausted(rows.status()) && work->table->config.lifecycle.frees_rows() &&
          options_.lifecycle_interval_ms > 0) {
        return RetryLater(
            absl::ResourceExhaustedError(absl::StrCat(
                rows.status().message(), "; the table's lifecycle is evicting rows: retry")),
            options_.lifecycle_interval_ms);
      }
      return rows.status();
    }
    work->rows = *std::move(rows);
  } else {
    const uint64_t bytes = work->keys.keys.size() * SumCharge(sparse.dim());
    if (replay) {
      budget_.Force(bytes);
    } else {
      TESSERA_RETURN_IF_ERROR(
          budget_.Reserve(bytes, absl::StrFormat("BSP sums of table '%s'", ShortName(name))));
    }
    work->sums = std::make_unique<Reservation>(work->table, &budget_, bytes,
                                               SumCharge(sparse.dim()), /*sums=*/true);
  }
  if (options_.testing_push_delay_ms > 0 && !replay) {
    absl::SleepFor(absl::Milliseconds(options_.testing_push_delay_ms));
  }
  if (options_.testing_before_sequencing && !replay) options_.testing_before_sequencing();
  Table& t = *work->table;
  {
    absl::MutexLock order(&order_mu_);
    absl::StatusOr<bool> sequenced =
        SequencePush(origin, name, t, req->id(), req->accumulate_step(), req, resp, &done);
    if (!sequenced.ok()) return sequenced.status();
    if (*sequenced) {
      const uint64_t step = req->accumulate_step();
      if (step != 0) t.sums.step = step;  // (the decision; the sums change on the executors)
      uint32_t mask = 0;
      for (const VshardRun& run : work->keys.groups.runs) {
        mask |= 1u << executors_->ExecutorOf(run.vshard);
      }
      const int64_t time_ms = replay ? origin.replay->time_ms : time_ms_;  // (the entry's)
      Dispatch(
          mask,
          [this, work, step, time_ms](uint32_t e) {
            if (step != 0) return AccumulateSparse(*work, e);
            absl::ReaderMutexLock gate(&gate_);
            work->rows->AddCreated(work->table->sparse->Push(
                work->keys.keys, work->keys.groups, work->values.data(),
                generation_.load(std::memory_order_relaxed), work->req->assign(), e,
                executors_->size(), time_ms, work->req->step()));
          },
          std::exchange(done, nullptr));
      return absl::OkStatus();
    }
  }
  std::exchange(done, nullptr)(absl::OkStatus());
  return absl::OkStatus();
}

void ServerCore::AccumulateSparse(SparsePush& work, uint32_t e) {
  Table& t = *work.table;
  EntrySums& part = t.sums.parts[e];
  const uint32_t dim = t.sparse->dim();
  uint64_t created = 0;
  for (const VshardRun& run : work.keys.groups.runs) {
    if (executors_->ExecutorOf(run.vshard) != e) continue;
    for (uint32_t j = run.begin; j < run.end; ++j) {
      const uint32_t i = work.keys.groups.KeyIndex(j);
      std::vector<float>& sum = part[work.keys.keys[i]];
      if (sum.empty()) {
        sum.resize(dim, 0.0f);
        ++created;
      }
      AddSaturating(sum.data(), &work.values[size_t{i} * dim], dim);
    }
  }
  work.sums->AddCreated(created);
}

struct ServerCore::DensePush {
  std::shared_ptr<const v1::PushDenseRequest> req;
  std::shared_ptr<const WireBytes> wire;  // (values may point into it)
  std::shared_ptr<Table> table;
  std::vector<float> scratch;
  absl::Span<const float> values;
};

absl::Status ServerCore::SubmitPushDense(std::shared_ptr<const v1::PushDenseRequest> req,
                                         v1::PushResponse* resp, const Origin& origin, Done& done) {
  const bool replay = origin.replay != nullptr;
  const std::string& name = req->table();
  absl::StatusOr<std::shared_ptr<Table>> found = FindTable(nullptr, name, TableKind::kDense);
  if (!found.ok()) return found.status();
  auto work = std::make_shared<DensePush>();
  work->req = req;
  work->wire = origin.wire;
  const WireBytes::Field none;
  work->table = *std::move(found);
  DenseTable& dense = *work->table->dense;
  TESSERA_RETURN_IF_ERROR(CheckDtype(req->dtype(), name));
  TESSERA_RETURN_IF_ERROR(CheckPushId(req->id(), name));
  TESSERA_RETURN_IF_ERROR(CheckDenseRange(dense, name, req->offset(), req->count()));
  absl::StatusOr<absl::Span<const float>> values =
      PushValues(BulkBytes(origin.wire != nullptr ? origin.wire->values : none, req->values()),
                 req->count(), name, &work->scratch, /*trusted=*/replay);
  if (!values.ok()) return values.status();
  work->values = *values;
  TESSERA_RETURN_IF_ERROR(CheckAssign(req->assign(), req->accumulate_step(), name));
  if (options_.testing_push_delay_ms > 0 && !replay) {
    absl::SleepFor(absl::Milliseconds(options_.testing_push_delay_ms));
  }
  if (options_.testing_before_sequencing && !replay) options_.testing_before_sequencing();
  Table& t = *work->table;
  const DenseLayout& layout = dense.layout();
  {
    absl::MutexLock order(&order_mu_);
    absl::StatusOr<bool> sequenced =
        SequencePush(origin, name, t, req->id(), req->accumulate_step(), req, resp, &done);
    if (!sequenced.ok()) return sequenced.status();
    if (*sequenced) {
      const uint64_t step = req->accumulate_step();
      const uint64_t begin = req->offset(), end = req->offset() + req->count();
      const uint64_t first_block = begin / layout.block_elems;
      const uint64_t last_block = end == begin ? first_block : (end - 1) / layout.block_elems;
      uint32_t mask = 0;
      if (last_block - first_block >= 64) {
        mask = (1u << executors_->size()) - 1;  // (size() <= 16)
      } else {
        for (uint64_t b = first_block; b <= last_block && end > begin; ++b) {
          mask |= 1u << executors_->ExecutorOf(dense.VshardOf(b));
        }
      }
      if (step != 0) t.sums.step = step;  // (the decision; the sums change on the executors)
      Dispatch(
          mask,
          [this, work, step](uint32_t e) {
            if (step != 0) return AccumulateDense(*work, e);
            absl::ReaderMutexLock gate(&gate_);
            work->table->dense->Push(work->req->offset(), work->req->count(), work->values.data(),
                                     generation_.load(std::memory_order_relaxed),
                                     work->req->assign(), e, executors_->size());
          },
          std::exchange(done, nullptr));
      return absl::OkStatus();
    }
  }
  std::exchange(done, nullptr)(absl::OkStatus());
  return absl::OkStatus();
}

void ServerCore::AccumulateDense(DensePush& work, uint32_t e) {
  Table& t = *work.table;
  EntrySums& part = t.sums.parts[e];
  const DenseLayout& layout = t.dense->layout();
  const uint64_t begin = work.req->offset(), end = begin + work.req->count();
  for (uint64_t b = begin / layout.block_elems;
       b < layout.num_blocks() && layout.BlockBegin(b) < end; ++b) {
    if (executors_->ExecutorOf(t.dense->VshardOf(b)) != e) continue;
    std::vector<float>& sum = part[b];
    if (sum.empty()) {
      const uint64_t bytes = SumCharge(layout.BlockEnd(b) - layout.BlockBegin(b));
      budget_.Force(bytes);  // (a dense table's sums are bounded by the table itself)
      t.sums_charged += bytes;
      t.charged += bytes;
      sum.resize(layout.BlockEnd(b) - layout.BlockBegin(b), 0.0f);
    }
    const uint64_t lo = std::max(layout.BlockBegin(b), begin);
    const uint64_t hi = std::min(layout.BlockEnd(b), end);
    AddSaturating(&sum[lo - layout.BlockBegin(b)], &work.values[lo - begin], hi - lo);
  }
}

absl::Status ServerCore::CheckAccumulate(const Table& table, uint64_t step) {
  const StepSums& sums = table.sums;
  if (step <= sums.applied_step) {
    return absl::FailedPreconditionError(
        absl::StrFormat("table '%s': step %u was applied already (last applied: %u)",
                        ShortName(table.config.name), step, sums.applied_step));
  }
  if (sums.step != 0 && sums.step != step) {
    return absl::FailedPreconditionError(
        absl::StrFormat("table '%s': step %u is pending; apply it before accumulating step %u",
                        ShortName(table.config.name), sums.step, step));
  }
  return absl::OkStatus();
}

// ---- BSP steps: a barrier ----

absl::Status ServerCore::SubmitApplyStep(std::shared_ptr<const v1::ApplyStepRequest> req,
                                         v1::ApplyStepResponse* resp, const Origin& origin,
                                         Done& done) {
  absl::StatusOr<std::shared_ptr<Table>> found = LookupTable(req->table());
  if (!found.ok()) return found.status();
  const std::shared_ptr<Table> table = *std::move(found);
  if (req->step() == 0 || !std::isfinite(req->scale())) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "table '%s': ApplyStep needs a step >= 1 and a finite scale", ShortName(req->table())));
  }
  {
    absl::MutexLock order(&order_mu_);
    std::shared_ptr<Table> current;
    TESSERA_RETURN_IF_ERROR(
        CheckSequence(origin, req->table(),
                      origin.replay != nullptr ? origin.replay->table_id : table->id, &current));
    StepSums& sums = table->sums;
    if (req->step() <= sums.applied_step) {
      if (origin.replay != nullptr) {
        return absl::FailedPreconditionError(
            absl::StrFormat("table '%s': step %u was applied here already but not on the primary",
                            ShortName(req->table()), req->step()));
      }
      resp->set_duplicate(true);
      resp->set_lsn(lsn_);
    } else {
      if (sums.step != 0 && sums.step != req->step()) {
        return absl::FailedPreconditionError(
            absl::StrFormat("table '%s': step %u is pending, not step %u", ShortName(req->table()),
                            sums.step, req->step()));
      }
      LogEntry entry;
      entry.op = req;
      entry.table_id = table->id;
      Sequence(origin, &entry);
      // A barrier: every earlier change to the table's rows is applied before the step's sums.
      executors_->Drain();
      ApplyStepSums(*table, req->scale(), entry.time_ms, req->step(), resp);
      for (EntrySums& part : sums.parts) part.clear();
      const uint64_t freed = table->sums_charged.exchange(0);
      table->charged -= freed;  // (the sums are freed: the table holds less)
      budget_.Release(freed);
      sums.step = 0;
      sums.applied_step = req->step();
      resp->set_lsn(entry.lsn);
    }
  }
  std::exchange(done, nullptr)(absl::OkStatus());
  return absl::OkStatus();
}

void ServerCore::ApplyStepSums(Table& table, float scale, int64_t time_ms, uint64_t step,
                               v1::ApplyStepResponse* resp) {
  absl::ReaderMutexLock gate(&gate_);
  uint64_t rows = 0;
  for (const EntrySums& part : table.sums.parts) {
    rows += table.data().ApplySums(part, scale, generation_.load(std::memory_order_relaxed),
                                   time_ms, step);
  }
  resp->set_rows(rows);
}

}  // namespace tessera
