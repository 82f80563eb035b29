// ServerCore's changes: validation, sequencing under the order lock and applying on the
// executors, for a client's request and a backup's replay alike (docs/state_machine.md).
#include <bit>
#include <cmath>
#include <cstdlib>
#include <new>
#include <type_traits>
#include <variant>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/wire.h"
#include "optimizer/optimizer.h"
#include "proto/cluster.pb.h"
#include "proto/tessera.pb.h"
#include "server/apply_executors.h"
#include "server/dense_table.h"
#include "server/request_checks.h"
#include "server/server_core.h"
#include "server/sparse_table.h"

namespace tessera {

namespace {

constexpr char kReplicaFailedPayload[] = "type.tessera/replica-failed";

template <typename... Fs>
struct Overloaded : Fs... {
  using Fs::operator()...;
};
template <typename... Fs>
Overloaded(Fs...) -> Overloaded<Fs...>;

}  // namespace

int LogEntryKindOf(const LogEntry& entry) {
  return std::visit(Overloaded{
                        [](const std::shared_ptr<const v1::CreateTableRequest>&) {
                          return int{v1::LOG_ENTRY_KIND_CREATE_TABLE};
                        },
                        [](const std::shared_ptr<const v1::DropTableRequest>&) {
                          return int{v1::LOG_ENTRY_KIND_DROP_TABLE};
                        },
                        [](const std::shared_ptr<const v1::PushSparseRequest>&) {
                          return int{v1::LOG_ENTRY_KIND_PUSH_SPARSE};
                        },
                        [](const std::shared_ptr<const v1::PushDenseRequest>&) {
                          return int{v1::LOG_ENTRY_KIND_PUSH_DENSE};
                        },
                        [](const std::shared_ptr<const v1::ApplyStepRequest>&) {
                          return int{v1::LOG_ENTRY_KIND_APPLY_STEP};
                        },
                        [](const RestoreOp&) { return int{v1::LOG_ENTRY_KIND_RESTORE}; },
                        [](const std::shared_ptr<const v1::RemoveRowsRequest>&) {
                          return int{v1::LOG_ENTRY_KIND_REMOVE_ROWS};
                        },
                    },
                    entry.op);
}

bool ServerCore::IsReplicaFailed(const absl::Status& status) {
  return status.GetPayload(kReplicaFailedPayload).has_value();
}

bool ServerCore::failed() const {
  // A FAILED replica refused an entry before changing anything: it holds a prefix of its old
  // primary's order, every acknowledged change included, and may serve it if promoted; as a
  // backup again it installs a snapshot first (a new upstream), which clears FAILED.
  if (serving_.load(std::memory_order_acquire)) return false;
  absl::MutexLock lock(&order_mu_);
  return !failed_.ok();
}

absl::Status ServerCore::FailReplica(absl::Status why) {
  if (failed_.ok()) {
    LogError(
        "this replica of shard %u cannot apply change %u as its primary did: %s; it stops "
        "acknowledging until it installs a snapshot",
        shard_index_, lsn_ + 1, why.ToString());
    failed_ = absl::FailedPreconditionError(
        absl::StrFormat("replica FAILED at change %u: %s", lsn_ + 1, std::string(why.message())));
    failed_.SetPayload(kReplicaFailedPayload, absl::Cord(why.message()));
  }
  return failed_;
}

void ServerCore::WaitApplied() { executors_->Drain(); }

// ---- Sequencing ----

absl::Status ServerCore::CheckSequence(const Origin& origin, const std::string& name,
                                       uint64_t table_id, std::shared_ptr<Table>* current) {
  if (origin.replay != nullptr) {
    if (!failed_.ok()) return failed_;
    if (origin.replay->lsn != lsn_ + 1) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "replicated change %u does not follow this replica's %u", origin.replay->lsn, lsn_));
    }
  }
  {
    absl::ReaderMutexLock lock(&tables_mu_);
    auto it = tables_.find(name);
    *current = it == tables_.end() ? nullptr : it->second;
  }
  if (table_id == 0) return absl::OkStatus();
  if (*current == nullptr) {
    return absl::NotFoundError(absl::StrFormat("table '%s' does not exist", ShortName(name)));
  }
  if ((*current)->id != table_id) {
    if (origin.replay != nullptr) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "table '%s' here was made by change %u, the entry is for the table of change %u",
          ShortName(name), (*current)->id, table_id));
    }
    return absl::UnavailableError(absl::StrFormat(
        "table '%s' was dropped and re-created while this change was on its way; retry",
        ShortName(name)));
  }
  return absl::OkStatus();
}

void ServerCore::Sequence(const Origin& origin, LogEntry* entry) {
  if (origin.replay != nullptr) {
    entry->lsn = origin.replay->lsn;
    entry->time_ms = origin.replay->time_ms;
    lsn_ = entry->lsn;
    time_ms_ = std::max(time_ms_, entry->time_ms);
    return;
  }
  entry->lsn = ++lsn_;
  // The only clock replicated state sees, non-decreasing along the log.
  time_ms_ = std::max(time_ms_, NowMs());
  entry->time_ms = time_ms_;
  entry->wire = origin.wire;
  if (log_ != nullptr) log_->Append(*entry);
}

bool ServerCore::CheckDuplicate(const Origin& origin, const v1::PushId& id,
                                const std::string& table, v1::PushResponse* resp,
                                absl::Status* refusal) {
  if (!dedup_.IsDuplicate(id.client_id(), id.sequence(), id.floor())) return false;
  if (origin.replay != nullptr) {
    *refusal = absl::FailedPreconditionError(absl::StrFormat(
        "push (client %u, sequence %u) to table '%s' is a duplicate here but was applied by the "
        "primary",
        id.client_id(), id.sequence(), ShortName(table)));
    return true;
  }
  duplicate_pushes_.fetch_add(1, std::memory_order_relaxed);
  resp->set_duplicate(true);
  resp->set_lsn(lsn_);  // its original is at or below: acknowledged once that is
  return true;
}

namespace {

// The change is sequenced and logged; it cannot be half applied here and acknowledged
// elsewhere. Crash-only: the backups hold it whole and one is promoted.
void ApplyOrDie(const std::function<void(uint32_t)>& apply, uint32_t e, uint64_t lsn) {
  try {
    apply(e);
  } catch (const std::bad_alloc&) {
    LogError("out of memory applying change %u; exiting so that a replica takes over", lsn);
    std::abort();
  }
}

}  // namespace

void ServerCore::Dispatch(uint32_t mask, std::function<void(uint32_t)> apply, Done done) {
  if (mask == 0) mask = 1;  // nothing to apply: still completes in order
  struct Pending {
    std::atomic<int> left;
    std::function<void(uint32_t)> apply;
    Done done;
    uint64_t lsn;
  };
  auto p = std::make_shared<Pending>();
  p->left.store(std::popcount(mask));
  p->apply = std::move(apply);
  p->done = std::move(done);
  p->lsn = lsn_;
  for (uint32_t e = 0; e < executors_->size(); ++e) {
    if ((mask & (1u << e)) == 0) continue;
    executors_->Enqueue(e, [p, e]() -> std::function<void()> {
      ApplyOrDie(p->apply, e, p->lsn);
      if (p->left.fetch_sub(1) != 1) return nullptr;
      // Runs after the part counts as applied; holds only the completion, so that the entry
      // (its table, its memory reservation) is freed before a Drain() returns.
      return [done = std::move(p->done)]() mutable { done(absl::OkStatus()); };
    });
  }
}

ServerCore::Done ServerCore::MaybeDropResponse(const v1::PushId& id, Done done) {
  const uint32_t every = options_.testing_fail_push_after_apply_every;
  if (every == 0) return done;
  const uint64_t n = pushes_applied_.fetch_add(1, std::memory_order_relaxed) + 1;
  if (n % every != 0) return done;
  return [done = std::move(done), client = id.client_id(), seq = id.sequence()](absl::Status st) {
    if (!st.ok()) return done(std::move(st));
    done(absl::UnavailableError(absl::StrFormat(
        "testing: push (client %u, sequence %u) applied, response dropped", client, seq)));
  };
}

template <typename Req, typename Resp>
void ServerCore::SubmitFromClient(SubmitFn<Req, Resp> submit, std::shared_ptr<const Req> req,
                                  Resp* resp, std::shared_ptr<const WireBytes> wire, Done done) {
  absl::Status st = CheckRouting(req->header());
  if (st.ok()) {
    try {
      st = (this->*submit)(std::move(req), resp, Origin{nullptr, std::move(wire)}, done);
    } catch (const std::bad_alloc&) {
      if (!done) throw;  // sequenced: cannot be undone (never reached: see Dispatch)
      st = absl::ResourceExhaustedError("out of memory while validating the request");
    }
  }
  if (!st.ok()) done(std::move(st));
}

template <typename Req, typename Resp>
absl::Status ServerCore::SubmitAndWait(SubmitFn<Req, Resp> submit, const Req& req, Resp* resp) {
  absl::Notification applied;
  absl::Status result;
  SubmitFromClient(submit, std::make_shared<const Req>(req), resp, nullptr, [&](absl::Status st) {
    result = std::move(st);
    applied.Notify();
  });
  applied.WaitForNotification();
  return result;
}

#define TESSERA_CHANGE(Name, Submit, ReqT, RespT)                                                  \
  void ServerCore::Name(std::shared_ptr<const ReqT> req, RespT* resp,                              \
                        std::shared_ptr<const WireBytes> wire, Done done) {                        \
    SubmitFromClient(&ServerCore::Submit, std::move(req), resp, std::move(wire), std::move(done)); \
  }                                                                                                \
  absl::Status ServerCore::Name(const ReqT& req, RespT* resp) {                                    \
    return SubmitAndWait(&ServerCore::Submit, req, resp);                                          \
  }
TESSERA_CHANGE(CreateTable, SubmitCreate, v1::CreateTableRequest, v1::CreateTableResponse)
TESSERA_CHANGE(DropTable, SubmitDrop, v1::DropTableRequest, v1::DropTableResponse)
TESSERA_CHANGE(PushSparse, SubmitPushSparse, v1::PushSparseRequest, v1::PushResponse)
TESSERA_CHANGE(PushDense, SubmitPushDense, v1::PushDenseRequest, v1::PushResponse)
TESSERA_CHANGE(ApplyStep, SubmitApplyStep, v1::ApplyStepRequest, v1::ApplyStepResponse)
TESSERA_CHANGE(RemoveRows, SubmitRemoveRows, v1::RemoveRowsRequest, v1::RemoveRowsResponse)
#undef TESSERA_CHANGE

// ---- Replay (backups) ----

absl::StatusOr<LogEntry> ServerCore::DecodeEntry(
    int kind, google::protobuf::io::ZeroCopyInputStream* request) {
  LogEntry entry;
  auto parse = [&]<typename Req>(std::shared_ptr<Req> req) -> absl::Status {
    if (!req->ParseFromZeroCopyStream(request)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("replicated %s does not parse", Req::descriptor()->full_name()));
    }
    entry.op = std::shared_ptr<const Req>(std::move(req));
    return absl::OkStatus();
  };
  absl::Status st;
  switch (kind) {
    case v1::LOG_ENTRY_KIND_CREATE_TABLE:
      st = parse(std::make_shared<v1::CreateTableRequest>());
      break;
    case v1::LOG_ENTRY_KIND_DROP_TABLE:
      st = parse(std::make_shared<v1::DropTableRequest>());
      break;
    case v1::LOG_ENTRY_KIND_PUSH_SPARSE:
      st = parse(std::make_shared<v1::PushSparseRequest>());
      break;
    case v1::LOG_ENTRY_KIND_PUSH_DENSE:
      st = parse(std::make_shared<v1::PushDenseRequest>());
      break;
    case v1::LOG_ENTRY_KIND_APPLY_STEP:
      st = parse(std::make_shared<v1::ApplyStepRequest>());
      break;
    case v1::LOG_ENTRY_KIND_REMOVE_ROWS:
      st = parse(std::make_shared<v1::RemoveRowsRequest>());
      break;
    default:
      st =
          absl::InvalidArgumentError(absl::StrFormat("log entry kind %d cannot be replayed", kind));
  }
  if (!st.ok()) return st;
  return entry;
}

absl::Status ServerCore::Replay(uint64_t term, LogEntry entry) {
  absl::ReaderMutexLock role(&role_mu_);
  TESSERA_RETURN_IF_ERROR(CheckReplayTerm(term));
  {
    absl::MutexLock order(&order_mu_);
    if (!failed_.ok()) return failed_;
    if (entry.lsn <= lsn_) return absl::OkStatus();  // applied before (a resent batch)
    if (entry.lsn != lsn_ + 1) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "replicated change %u does not follow this replica's %u", entry.lsn, lsn_));
    }
  }
  // One replayer at a time (the replicator's), so the order checked above still holds.
  const Origin origin{&entry, nullptr};
  Done done = [](absl::Status) {};  // the batch is answered after WaitApplied()
  // Each kind through its Submit function; the response lives until `done` is dropped.
  auto replay = [&]<typename Req, typename Resp>(SubmitFn<Req, Resp> submit,
                                                 const std::shared_ptr<const Req>& r) {
    auto resp = std::make_shared<Resp>();
    done = [resp](absl::Status) {};
    return (this->*submit)(r, resp.get(), origin, done);
  };
  absl::Status st;
  try {
    st = std::visit(
        Overloaded{
            [&](const std::shared_ptr<const v1::CreateTableRequest>& r) {
              return replay(&ServerCore::SubmitCreate, r);
            },
            [&](const std::shared_ptr<const v1::DropTableRequest>& r) {
              return replay(&ServerCore::SubmitDrop, r);
            },
            [&](const std::shared_ptr<const v1::PushSparseRequest>& r) {
              return replay(&ServerCore::SubmitPushSparse, r);
            },
            [&](const std::shared_ptr<const v1::PushDenseRequest>& r) {
              return replay(&ServerCore::SubmitPushDense, r);
            },
            [&](const std::shared_ptr<const v1::ApplyStepRequest>& r) {
              return replay(&ServerCore::SubmitApplyStep, r);
            },
            [&](const RestoreOp&) {
              return absl::InvalidArgumentError("a restore cannot be replayed (needs a snapshot)");
            },
            [&](const std::shared_ptr<const v1::RemoveRowsRequest>& r) {
              return replay(&ServerCore::SubmitRemoveRows, r);
            },
        },
        entry.op);
  } catch (const std::bad_alloc&) {  // (validating, before anything changed)
    st = absl::ResourceExhaustedError("out of memory while checking the entry");
  }
  if (st.ok()) return st;
  absl::MutexLock order(&order_mu_);
  return FailReplica(st);
}

// ---- Tables ----

absl::Status ServerCore::SubmitCreate(std::shared_ptr<const v1::CreateTableRequest> req,
                                      v1::CreateTableResponse* resp, const Origin& origin,
                                      Done& done) {
  absl::StatusOr<TableConfig> parsed = TableConfigFromProto(req->spec());
  if (!parsed.ok()) return parsed.status();
  absl::StatusOr<TableConfig> config = ResolveTableConfig(*parsed);
  if (!config.ok()) return config.status();
  // Pass 1 answers a table that exists already without building one (a retried create of a
  // large dense table must not allocate it again); otherwise the table is built outside the
  // lock (that takes a while) and pass 2 inserts it, unless a concurrent create won meanwhile.
  std::shared_ptr<Table> table;
  for (int pass = 0; pass < 2; ++pass) {
    if (pass == 1) {
      absl::StatusOr<std::shared_ptr<Table>> made =
          NewTable(*config, /*initialize=*/true, /*force=*/origin.replay != nullptr);
      if (!made.ok()) return made.status();
      table = *std::move(made);
    }
    absl::MutexLock order(&order_mu_);
    std::shared_ptr<Table> current;
    TESSERA_RETURN_IF_ERROR(CheckSequence(origin, config->name, 0, &current));
    if (current != nullptr) {
      if (!(current->config == *config)) {
        return absl::AlreadyExistsError(absl::StrFormat(
            "table '%s' already exists with a different spec (%s); drop it first",
            ShortName(config->name), DescribeSpecDifference(current->config, *config)));
      }
      if (origin.replay != nullptr) {
        return absl::FailedPreconditionError(absl::StrFormat(
            "table '%s' exists here but its primary created it", ShortName(config->name)));
      }
      resp->set_lsn(lsn_);  // acknowledged once the create that made it is replicated
      break;
    }
    if (table == nullptr) continue;  // absent: build it
    LogEntry entry;
    entry.op = req;
    Sequence(origin, &entry);
    {
      absl::ReaderMutexLock gate(&gate_);
      table->created_gen = generation_.load();
    }
    table->id = entry.lsn;
    entry.table_id = table->id;
    {
      absl::MutexLock lock(&tables_mu_);
      tables_.emplace(config->name, std::move(table));
    }
    resp->set_lsn(entry.lsn);
  }
  TableConfigToProto(*config, resp->mutable_spec());
  std::exchange(done, nullptr)(absl::OkStatus());
  return absl::OkStatus();
}

absl::Status ServerCore::SubmitDrop(std::shared_ptr<const v1::DropTableRequest> req,
                                    v1::DropTableResponse* resp, const Origin& origin, Done& done) {
  std::shared_ptr<Table> dropped;  // freed outside the lock; entries in flight keep theirs
  {
    absl::MutexLock order(&order_mu_);
    TESSERA_RETURN_IF_ERROR(CheckSequence(origin, req->table(), 0, &dropped));
    if (dropped == nullptr) {
      return absl::NotFoundError(
          absl::StrFormat("table '%s' does not exist", ShortName(req->table())));
    }
    if (origin.replay != nullptr && origin.replay->table_id != dropped->id) {
      return absl::FailedPreconditionError(
          absl::StrFormat("table '%s' here was made by change %u, the drop is of change %u's",
                          ShortName(req->table()), dropped->id, origin.replay->table_id));
    }
    LogEntry entry;
    entry.op = req;
    entry.table_id = dropped->id;
    Sequence(origin, &entry);
    {
      absl::MutexLock lock(&tables_mu_);
      tables_.erase(req->table());
    }
    resp->set_lsn(entry.lsn);
  }
  std::exchange(done, nullptr)(absl::OkStatus());
  return absl::OkStatus();
}

}  // namespace tessera
