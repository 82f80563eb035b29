#include "server/replicator.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include <algorithm>
#include <deque>
#include <map>
#include <random>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/raw_unary.h"
#include "common/logging.h"
#include "common/slice_reader.h"
#include "proto/cluster.grpc.pb.h"
#include "server/grpc_wire.h"
#include "server/replication_codec.h"
#include "server/replica_rules.h"

namespace tessera {
namespace {

using Callback = std::function<void(absl::Status)>;

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  // Reconnect quickly after a peer comes back: the default backoff reaches 120 s.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

// Trailing metadata of a refused batch whose backup needs a snapshot first.
constexpr char kNeedsSnapshotKey[] = "tessera-needs-snapshot";
// Trailing metadata of a batch refused by a FAILED replica (docs/state_machine.md): its reason.
constexpr char kReplicaFailedKey[] = "tessera-replica-failed";

absl::Status Reroute(absl::Status status) {
  status.SetPayload("type.tessera/reroute", absl::Cord("1"));
  return status;
}

}  // namespace

struct Replicator::Impl
    : public v1::Replication::WithRawCallbackMethod_Replicate<
          v1::Replication::WithRawCallbackMethod_InstallSnapshot<
              v1::Replication::CallbackService>> {
  struct Sender {
    ReplicaId id;  // the backup entry it serves (R3)
    std::string address;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<v1::Replication::Stub> stub;
    std::unique_ptr<grpc::GenericStub> generic;
    std::thread thread;
    // Guarded by Impl::mu.
    bool stop = false;
    bool needs_snapshot = true;
    bool snapshotting = false;
    std::deque<Entry> queue;  // appended and not yet acknowledged, in LSN order
    uint64_t acked = 0;
    uint64_t sent = 0;     // last LSN sent (acknowledged or in flight)
    int in_flight = 0;     // batches
    absl::Status failure;  // of a batch, handled by the send loop
    // Calls in flight, cancelled when the sender stops (a stalled backup must not hold it).
    absl::flat_hash_set<grpc::ClientContext*> calls;
    bool live_in_map = false;      // LIVE in the map this primary acts on
    bool found_caught_up = false;  // R6: this primary found it caught up (counts it from then)
    bool report_caught_up = false;
    uint64_t snapshot_bytes = 0;
  };

  ReplicatorOptions options;
  ServerCore* core;
  std::string address;  // set once by Start(), before any thread reads it
  // The process's identity: a restart at the same address has a larger one (wall-clock
  // microseconds, shifted) and is a new member (docs/replication.md, "Who is who").
  const uint64_t incarnation = NewIncarnation();
  std::unique_ptr<v1::Coordinator::Stub> coordinator;

  mutable absl::Mutex mu;
  bool stopping ABSL_GUARDED_BY(mu) = false;
  bool poked ABSL_GUARDED_BY(mu) = false;
  bool confirm ABSL_GUARDED_BY(mu) = false;  // the coordinator asked for a proof (R7)
  int confirm_streak ABSL_GUARDED_BY(mu) = 0;
  uint64_t epoch ABSL_GUARDED_BY(mu) = 0;
  Placement placement ABSL_GUARDED_BY(mu);  // in the map we act on
  int32_t shard ABSL_GUARDED_BY(mu) = -1;   // (placement.shard, or the last one when removed)
  // Grows whenever the upstream changes (SameUpstream: shard, primary, own entry); a replayed
  // batch or snapshot applies only under the term it was checked in (R4).
  uint64_t term ABSL_GUARDED_BY(mu) = 1;
  uint64_t synced_term ABSL_GUARDED_BY(mu) = 0;     // backup: holds a snapshot taken in this term
  uint64_t snapshot_floor ABSL_GUARDED_BY(mu) = 0;  // the newest snapshot started in this term
  uint64_t echo_life ABSL_GUARDED_BY(mu) = 0, echo_seq ABSL_GUARDED_BY(mu) = 0;
  absl::flat_hash_map<std::string, std::unique_ptr<Sender>> senders ABSL_GUARDED_BY(mu);  // by Key
  std::multimap<uint64_t, Callback> pending ABSL_GUARDED_BY(mu);
  uint64_t appended ABSL_GUARDED_BY(mu) = 0;       // last LSN appended (primary)
  uint64_t max_completed ABSL_GUARDED_BY(mu) = 0;  // highest LSN acknowledged to a client
  uint64_t snapshot_counter ABSL_GUARDED_BY(mu) = 0;
  uint64_t snapshots_sent ABSL_GUARDED_BY(mu) = 0;
  uint64_t snapshots_installed ABSL_GUARDED_BY(mu) = 0;
  uint64_t fenced_refusals ABSL_GUARDED_BY(mu) = 0;
  uint64_t replica_failures ABSL_GUARDED_BY(mu) = 0;  // batches a FAILED backup refused
  absl::Time last_heartbeat ABSL_GUARDED_BY(mu) = absl::InfinitePast();
  std::string heartbeat_error ABSL_GUARDED_BY(mu);  // the last refusal, logged once
  std::thread heartbeat_thread;

  static uint64_t NewIncarnation() {
    const uint64_t us = static_cast<uint64_t>(absl::ToUnixMicros(absl::Now()));
    return (us << 12) | (std::random_device{}() & 0xfff);
  }

  struct Parked {
    std::shared_ptr<DecodedBatch> batch;
    grpc::ByteBuffer* response;
    grpc::ServerUnaryReactor* reactor;
    uint64_t term;  // checked in (R4)
    grpc::CallbackServerContext* ctx;
  };
  // Serializes the application of snapshot chunks on a backup.
  absl::Mutex replay_mu;
  absl::Mutex park_mu ABSL_ACQUIRED_BEFORE(mu);
  std::map<uint64_t, Parked> parked ABSL_GUARDED_BY(park_mu);  // by first LSN
  bool draining ABSL_GUARDED_BY(park_mu) = false;

  Impl(const ReplicatorOptions& o, ServerCore* c) : options(o), core(c) {
    coordinator = v1::Coordinator::NewStub(MakeChannel(options.coordinator));
  }

  // ---- Map and roles ----

  void HeartbeatLoop() {
    while (true) {
      v1::HeartbeatRequest req;
      {
        absl::MutexLock lock(&mu);
        if (stopping) return;
        poked = false;
        confirm = false;
        v1::ServerStatus* st = req.mutable_status();
        st->set_address(address);
        st->set_incarnation(incarnation);
        st->set_epoch(epoch);
        st->set_role(ToProto(placement.role));
        st->set_metrics_port(options.metrics_port);
        st->set_echo_life(echo_life);
        st->set_echo_seq(echo_seq);
        st->set_checkpoint_dir(options.checkpoint_dir);
      }
      req.mutable_status()->set_shard(core->shard_index());
      req.mutable_status()->set_lsn(core->lsn());
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(1000));
      v1::HeartbeatResponse resp;
      const grpc::Status s = coordinator->Heartbeat(&ctx, req, &resp);
      if (s.ok()) {
        {
          absl::MutexLock lock(&mu);
          last_heartbeat = absl::Now();
          echo_life = resp.life();
          echo_seq = resp.seq();
          confirm = resp.confirm();
          heartbeat_error.clear();
        }
        ApplyMap(resp.map());
      } else if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
                 s.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
        absl::MutexLock lock(&mu);
        if (heartbeat_error != s.error_message()) {
          heartbeat_error = s.error_message();
          LogError("the coordinator refuses this server: %s", heartbeat_error);
        }
      }
      absl::MutexLock lock(&mu);
      // R7: the proof goes out at once (twice in a row at most: a coordinator that keeps
      // asking is answered at the normal pace).
      confirm_streak = confirm ? confirm_streak + 1 : 0;
      if (confirm && confirm_streak <= 2) continue;
      auto wake = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu) { return stopping || poked; };
      mu.AwaitWithTimeout(absl::Condition(&wake), absl::Milliseconds(options.heartbeat_ms));
      if (poked && !stopping) {  // at most one extra heartbeat per 20 ms
        mu.Unlock();
        absl::SleepFor(absl::Milliseconds(20));
        mu.Lock();
      }
    }
  }

  static v1::ServerRole ToProto(Role r) {
    switch (r) {
      case Role::kPrimary:
        return v1::SERVER_ROLE_PRIMARY;
      case Role::kBackup:
        return v1::SERVER_ROLE_BACKUP;
      case Role::kJoining:
        return v1::SERVER_ROLE_JOINING;
      case Role::kRestoring:
        return v1::SERVER_ROLE_RESTORING;
      default:
        return v1::SERVER_ROLE_NONE;
    }
  }

  void ApplyMap(const v1::ClusterMap& m) {
    Placement where = Locate(m, address, incarnation);  // R1, R2
    if (where.shard >= 0) {
      if (absl::Status st = core->Bind(where.shard, m.num_shards()); !st.ok()) {
        LogError("cannot take shard %d: %s", where.shard, st.ToString());
        where = Placement();
      }
    }
    std::vector<std::pair<Callback, absl::Status>> done;
    std::vector<std::unique_ptr<Sender>> stopped;
    const uint64_t core_lsn = core->lsn();  // (not under mu: Append runs under the order)
    bool upstream_changed = false;
    const char* new_role = nullptr;  // set when the role changed
    {
      absl::MutexLock lock(&mu);
      if (m.epoch() < epoch || stopping) return;
      appended = std::max(appended, core_lsn);
      epoch = m.epoch();
      const Placement old = placement;
      placement = where;
      if (where.shard >= 0) shard = where.shard;
      if (!SameUpstream(where, old)) {
        ++term;
        synced_term = 0;
        snapshot_floor = 0;
        upstream_changed = true;
      }
      if (!(where == old)) {
        if (where.role != old.role) new_role = RoleName(where.role);
        LogInfo("shard-map epoch %u: %s%s", epoch, RoleName(where.role),
                where.shard >= 0
                    ? absl::StrFormat(" of shard %d (primary %s)", where.shard, where.primary)
                    : std::string());
      }
      const bool is_primary = where.role == Role::kPrimary || where.role == Role::kRestoring;
      core->SetRouting(epoch, is_primary, term, where.role == Role::kRestoring);
      if (!is_primary) {
        for (auto& [key, sender] : senders) stopped.push_back(std::move(sender));
        senders.clear();
        for (auto& [lsn, cb] : pending) {
          done.emplace_back(std::move(cb),
                            Reroute(absl::FailedPreconditionError(absl::StrFormat(
                                "this server stopped being the primary of shard %d at epoch %u "
                                "before the push reached its backups; retry at the new primary",
                                shard, epoch))));
        }
        pending.clear();
      } else {
        // R3: one sender per backup entry; entries that left the map lose theirs.
        std::vector<BackupEntry> backups = BackupsOf(m, where.shard);
        absl::flat_hash_map<std::string, bool> in_map;
        for (const BackupEntry& b : backups) in_map[b.id.Key()] = b.live;
        for (auto it = senders.begin(); it != senders.end();) {
          auto next = std::next(it);
          if (!in_map.contains(it->first)) {
            stopped.push_back(std::move(it->second));
            senders.erase(it);
          }
          it = next;
        }
        for (const BackupEntry& b : backups) {
          auto it = senders.find(b.id.Key());
          Sender* s = it != senders.end() ? it->second.get() : StartSender(b.id);
          s->live_in_map = b.live;  // R5
        }
        Recompute(&done);
      }
    }
    StopSenders(std::move(stopped));
    if (upstream_changed) {
      DropParked(absl::FailedPreconditionError("this replica's primary or entry changed"));
    }
    for (auto& [cb, st] : done) cb(st);
    if (new_role != nullptr && options.on_role_change) options.on_role_change(new_role);
  }

  // ---- Primary: acknowledgements ----

  static bool IsCounted(const Sender& s) { return Counted(s.live_in_map, s.found_caught_up); }

  // Completes every pending acknowledgement that every counted backup has reached (R5).
  void Recompute(std::vector<std::pair<Callback, absl::Status>>* done)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    uint64_t reached = appended;
    for (const auto& [key, s] : senders) {
      if (IsCounted(*s)) reached = std::min(reached, s->acked);
    }
    while (!pending.empty() && pending.begin()->first <= reached) {
      max_completed = std::max(max_completed, pending.begin()->first);
      done->emplace_back(std::move(pending.begin()->second), absl::OkStatus());
      pending.erase(pending.begin());
    }
  }

  void WhenReplicated(uint64_t lsn, Callback cb) {
    std::vector<std::pair<Callback, absl::Status>> done;
    {
      absl::MutexLock lock(&mu);
      if (stopping) {
        done.emplace_back(std::move(cb), absl::UnavailableError("server shutting down; retry"));
      } else if (placement.role != Role::kPrimary && placement.role != Role::kRestoring) {
        done.emplace_back(std::move(cb),
                          Reroute(absl::FailedPreconditionError(
                              "this server stopped being the primary before the push reached "
                              "its backups; retry at the new primary")));
      } else {
        pending.emplace(lsn, std::move(cb));
        Recompute(&done);
      }
    }
    for (auto& [c, st] : done) c(st);
  }

  void Append(const LogEntry& entry) {
    absl::MutexLock lock(&mu);
    appended = std::max(appended, entry.lsn);
    if (std::holds_alternative<RestoreOp>(entry.op)) {
      // The state was replaced: every backup gets a snapshot taken after this point, which
      // acknowledges this LSN once installed.
      for (auto& [addr, s] : senders) s->needs_snapshot = true;
      return;
    }
    if (entry.wire == nullptr) return;  // (only changes that came over gRPC are logged)
    const grpc::ByteBuffer& bytes = static_cast<const GrpcWire&>(*entry.wire).bytes;
    const int kind = LogEntryKindOf(entry);
    for (auto& [addr, s] : senders) {
      s->queue.push_back({entry.lsn, kind, entry.time_ms, entry.table_id, bytes});
    }
  }

  // ---- Primary: senders ----

  Sender* StartSender(const ReplicaId& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto s = std::make_unique<Sender>();
    s->id = id;
    s->address = id.address;
    s->channel = MakeChannel(id.address);
    s->stub = v1::Replication::NewStub(s->channel);
    s->generic = std::make_unique<grpc::GenericStub>(s->channel);
    Sender* raw = s.get();
    senders.emplace(id.Key(), std::move(s));
    raw->thread = std::thread([this, raw] { SendLoop(raw); });
    return raw;
  }

  void StopSenders(std::vector<std::unique_ptr<Sender>> stopped) {
    {
      absl::MutexLock lock(&mu);
      for (auto& s : stopped) {
        s->stop = true;
        for (grpc::ClientContext* ctx : s->calls) ctx->TryCancel();
      }
    }
    for (auto& s : stopped) s->thread.join();
  }

  void Backoff(Sender* s, int* failures) {
    *failures = std::min(*failures + 1, 6);
    absl::MutexLock lock(&mu);
    auto stop = [s]() { return s->stop; };
    mu.AwaitWithTimeout(absl::Condition(&stop), absl::Milliseconds(10 << *failures));
  }

  // Up to kMaxInFlight batches travel at once (the backup applies them in LSN order); what
  // accumulates meanwhile goes in the next batch.
  static constexpr int kMaxInFlight = 4;

  void SendLoop(Sender* s) {
    int failures = 0;
    while (true) {
      bool snapshot = false, report = false;
      absl::Status failed;
      std::vector<Entry*> batch;
      v1::ReplicateRequest header;
      {
        absl::MutexLock lock(&mu);
        auto ready = [s]() {
          if (s->stop || !s->failure.ok()) return true;
          if (s->needs_snapshot || s->report_caught_up) return s->in_flight == 0;
          return s->in_flight < kMaxInFlight && !s->queue.empty() && s->queue.back().lsn > s->sent;
        };
        mu.AwaitWithTimeout(absl::Condition(&ready), absl::Milliseconds(200));
        if (s->stop) {
          auto idle = [s]() { return s->in_flight == 0; };
          mu.Await(absl::Condition(&idle));  // callbacks touch *s
          return;
        }
        if (!s->failure.ok()) {
          auto idle = [s]() { return s->in_flight == 0; };
          mu.Await(absl::Condition(&idle));
          failed = std::exchange(s->failure, absl::OkStatus());
          s->sent = s->acked;  // resend what was not acknowledged
        } else if (s->in_flight > 0) {
          // (only sending is possible now)
        } else if (s->needs_snapshot) {
          snapshot = true;
          s->snapshotting = true;
        } else if (s->report_caught_up) {
          report = true;
        }
        if (failed.ok() && !snapshot && !report && !s->needs_snapshot &&
            s->in_flight < kMaxInFlight) {
          size_t bytes = 0;
          for (Entry& e : s->queue) {
            if (e.lsn <= s->sent) continue;
            if (!batch.empty() && (bytes >= options.max_batch_bytes || batch.size() >= 4096)) break;
            batch.push_back(&e);
            bytes += e.request.Length();
          }
          if (!batch.empty()) {
            header.set_epoch(epoch);
            header.set_shard(static_cast<uint32_t>(shard));
            header.set_primary(address);
            header.set_primary_incarnation(incarnation);
            header.set_first_lsn(batch.front()->lsn);
            s->sent = batch.back()->lsn;
            ++s->in_flight;
          }
        }
      }
      absl::Status st = failed;
      if (snapshot) {
        st = SendSnapshot(s);
      } else if (report) {
        st = ReportCaughtUp(s);
      } else if (!batch.empty()) {
        // The entries stay in the queue until acknowledged; the request shares their slices.
        SendBatch(s, header, batch);
        continue;
      }
      if (st.ok()) {
        if (snapshot || report) failures = 0;
        continue;
      }
      if (st.code() == absl::StatusCode::kFailedPrecondition) Poke();
      if (failures == 0) {  // the first of a streak (the streak ends with a success)
        LogWarning("replication to %s: %s; retrying", s->address, st.ToString());
      }
      Backoff(s, &failures);
    }
  }

  struct BatchCall {
    grpc::ClientContext ctx;
    grpc::ByteBuffer request;
    grpc::ByteBuffer response;
  };

  void SendBatch(Sender* s, const v1::ReplicateRequest& header, const std::vector<Entry*>& batch) {
    auto call = std::make_shared<BatchCall>();
    call->request = EncodeBatch(header, batch);
    call->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    {
      absl::MutexLock lock(&mu);
      s->calls.insert(&call->ctx);
      if (s->stop) call->ctx.TryCancel();
    }
    s->generic->UnaryCall(&call->ctx, "/tessera.v1.Replication/Replicate", grpc::StubOptions(),
                          &call->request, &call->response,
                          [this, s, call](grpc::Status st) { OnBatchDone(s, *call, st); });
  }

  void OnBatchDone(Sender* s, BatchCall& call, const grpc::Status& status) {
    absl::Status st = FromGrpcStatus(status);
    v1::ReplicateResponse resp;
    if (st.ok()) {
      std::vector<grpc::Slice> slices;
      (void)call.response.Dump(&slices);
      std::string bytes;
      for (const auto& sl : slices) {
        bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
      }
      if (!resp.ParseFromString(bytes)) st = absl::DataLossError("malformed ReplicateResponse");
    }
    std::vector<std::pair<Callback, absl::Status>> done;
    {
      absl::MutexLock lock(&mu);
      s->calls.erase(&call.ctx);
      --s->in_flight;
      if (!st.ok()) {
        if (s->failure.ok()) s->failure = st;
        const auto& trailers = call.ctx.GetServerTrailingMetadata();
        if (trailers.count(kNeedsSnapshotKey) > 0) {
          s->needs_snapshot = true;  // the backup holds no snapshot of this primary's (R4)
        }
        if (auto it = trailers.find(kReplicaFailedKey); it != trailers.end()) {
          // It applied nothing it did not acknowledge; a snapshot is its way back.
          if (!s->needs_snapshot) {
            LogWarning("backup %s is FAILED (%s); re-syncing it with a snapshot", s->address,
                       std::string(it->second.data(), it->second.size()));
          }
          s->needs_snapshot = true;
          ++replica_failures;
        }
      } else {
        s->acked = std::max(s->acked, resp.lsn());
        while (!s->queue.empty() && s->queue.front().lsn <= s->acked) s->queue.pop_front();
        MaybeCaughtUp(s);
        Recompute(&done);
      }
    }
    for (auto& [cb, result] : done) cb(result);
  }

  // R6: a joining replica counts for acknowledgements once it has every change this primary
  // has acknowledged; then the coordinator is told, and makes it LIVE.
  void MaybeCaughtUp(Sender* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (IsCounted(*s)) return;
    if (!IsCaughtUp(!s->needs_snapshot && !s->snapshotting, s->acked, max_completed)) return;
    s->found_caught_up = true;
    s->report_caught_up = true;
  }

  absl::Status ReportCaughtUp(Sender* s) {
    v1::ReportCaughtUpRequest req;
    {
      absl::MutexLock lock(&mu);
      req.set_epoch(epoch);
      req.set_shard(static_cast<uint32_t>(shard));
      req.set_primary(address);
      req.set_primary_incarnation(incarnation);
      req.set_replica(s->id.address);
      req.set_replica_incarnation(s->id.incarnation);
      req.set_join_epoch(s->id.join_epoch);
    }
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    v1::ReportCaughtUpResponse resp;
    const grpc::Status status = coordinator->ReportCaughtUp(&ctx, req, &resp);
    if (!status.ok()) return FromGrpcStatus(status);
    {
      absl::MutexLock lock(&mu);
      s->report_caught_up = false;
    }
    LogInfo("replica %s of shard %u caught up", req.replica(), req.shard());
    Poke();  // the heartbeat thread applies the new map (this thread may be stopped by it)
    return absl::OkStatus();
  }

  absl::Status SendSnapshot(Sender* s) {
    uint64_t id, seq = 0;
    v1::InstallSnapshotRequest base;
    {
      absl::MutexLock lock(&mu);
      id = ++snapshot_counter;
      s->snapshot_bytes = 0;
    }
    const absl::Time start = absl::Now();
    absl::StatusOr<uint64_t> cut = core->ExportSnapshot(
        options.max_batch_bytes, [&](v1::InstallSnapshotRequest& chunk) -> absl::Status {
          {
            absl::MutexLock lock(&mu);
            if (s->stop) return absl::CancelledError("replica removed");
            chunk.set_epoch(epoch);
            chunk.set_shard(static_cast<uint32_t>(shard));
          }
          chunk.set_primary(address);
          chunk.set_primary_incarnation(incarnation);
          chunk.set_snapshot_id(id);
          chunk.set_seq(seq++);
          grpc::ClientContext ctx;
          ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
          {
            absl::MutexLock lock(&mu);
            s->calls.insert(&ctx);
            if (s->stop) ctx.TryCancel();
          }
          v1::InstallSnapshotResponse resp;
          const grpc::Status st = s->stub->InstallSnapshot(&ctx, chunk, &resp);
          absl::MutexLock lock(&mu);
          s->calls.erase(&ctx);
          s->snapshot_bytes += chunk.ByteSizeLong();
          return FromGrpcStatus(st);
        });
    absl::MutexLock lock(&mu);
    s->snapshotting = false;
    if (!cut.ok()) return cut.status();
    s->needs_snapshot = false;
    s->acked = *cut;
    s->sent = *cut;
    while (!s->queue.empty() && s->queue.front().lsn <= *cut) s->queue.pop_front();
    ++snapshots_sent;
    MaybeCaughtUp(s);
    LogInfo("sent a snapshot of shard %d at LSN %u to %s: %.1f MB in %.2f s", shard, *cut,
            s->address, s->snapshot_bytes / 1e6, absl::ToDoubleSeconds(absl::Now() - start));
    return absl::OkStatus();
  }

  // ---- Backup: the Replication service ----

  // R4: only our shard's primary (address and incarnation), as our map has it, may send.
  absl::Status CheckSender(uint64_t req_epoch, uint32_t req_shard, const std::string& sender,
                           uint64_t sender_incarnation) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    switch (
        tessera::CheckSender(epoch, placement, req_epoch, req_shard, sender, sender_incarnation)) {
      case SenderCheck::kOk:
        return absl::OkStatus();
      case SenderCheck::kBehind:
        poked = true;
        return absl::UnavailableError(
            absl::StrFormat("replica %s is at shard-map epoch %u, behind the sender's %u; retry",
                            address, epoch, req_epoch));
      case SenderCheck::kNotPrimary:
        break;
    }
    ++fenced_refusals;
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s is not a replica of shard %u with primary %s (incarnation %x) at shard-map epoch %u "
        "(its primary: %s); the sender is not the primary",
        address, req_shard, sender, sender_incarnation, epoch,
        placement.primary.empty() ? "none" : placement.primary));
  }

  // Batches arrive over several calls at once; they are applied in LSN order. A batch that
  // does not follow what is applied yet waits (parked, its call open) for its predecessor.
  grpc::ServerUnaryReactor* Replicate(grpc::CallbackServerContext* ctx,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override {
    auto* reactor = ctx->DefaultReactor();
    auto batch = std::make_shared<DecodedBatch>();
    absl::Status st = DecodeBatch(*request, batch.get());
    uint64_t checked_term = 0;
    if (st.ok()) {
      absl::MutexLock lock(&mu);
      st = CheckSender(batch->epoch, batch->shard, batch->primary, batch->primary_incarnation);
      if (st.ok() && synced_term != term) {
        st = absl::FailedPreconditionError(absl::StrFormat(
            "%s holds no snapshot from %s yet: send a snapshot first", address, batch->primary));
        ctx->AddTrailingMetadata(kNeedsSnapshotKey, "1");
      }
      checked_term = term;
    }
    if (!st.ok()) {
      reactor->Finish(ToGrpcStatus(st));
      return reactor;
    }
    absl::MutexLock lock(&park_mu);
    const uint64_t first = batch->first_lsn;
    auto [it, inserted] =
        parked.try_emplace(first, Parked{std::move(batch), response, reactor, checked_term, ctx});
    if (!inserted) {  // a resend of a batch still waiting: answer the older copy
      it->second.reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "superseded"));
      it->second.response = response;
      it->second.reactor = reactor;
      it->second.ctx = ctx;
      it->second.term = checked_term;
    }
    if (draining) return reactor;  // the thread draining applies it
    draining = true;
    while (!parked.empty()) {
      const uint64_t next = core->lsn() + 1;
      auto head = parked.begin();
      if (head->first > next) break;  // waits for its predecessor
      Parked p = std::move(head->second);
      parked.erase(head);
      park_mu.Unlock();
      absl::Status applied;
      for (size_t i = 0; i < p.batch->entries.size() && applied.ok(); ++i) {
        DecodedBatch::Item& item = p.batch->entries[i];
        grpc::ProtoBufferReader reader(&item.request);
        absl::StatusOr<LogEntry> entry = ServerCore::DecodeEntry(item.kind, &reader);
        if (!entry.ok()) {
          applied = entry.status();
          break;
        }
        entry->lsn = p.batch->first_lsn + i;
        entry->time_ms = item.time_ms;
        entry->table_id = item.table_id;
        applied = core->Replay(p.term, *std::move(entry));
      }
      core->WaitApplied();  // acknowledges only what is applied (docs/state_machine.md)
      if (ServerCore::IsReplicaFailed(applied)) {
        p.ctx->AddTrailingMetadata(
            kReplicaFailedKey,
            std::string(applied.GetPayload("type.tessera/replica-failed").value_or(absl::Cord()))
                .substr(0, 200));
      }
      v1::ReplicateResponse resp;
      resp.set_lsn(core->lsn());
      bool own = false;
      (void)grpc::SerializationTraits<v1::ReplicateResponse>::Serialize(resp, p.response, &own);
      p.reactor->Finish(ToGrpcStatus(applied));
      park_mu.Lock();
    }
    draining = false;
    return reactor;
  }

  // Answers every parked batch (the primary changed, or the server stops).
  void DropParked(const absl::Status& why) {
    absl::MutexLock lock(&park_mu);
    for (auto& [lsn, p] : parked) p.reactor->Finish(ToGrpcStatus(why));
    parked.clear();
  }

  // Raw, parsed by RunParsed: garbage gets INVALID_ARGUMENT, not UNIMPLEMENTED.
  grpc::ServerUnaryReactor* InstallSnapshot(grpc::CallbackServerContext* ctx,
                                            const grpc::ByteBuffer* in,
                                            grpc::ByteBuffer* out) override {
    return RunParsed<v1::InstallSnapshotRequest, v1::InstallSnapshotResponse>(
        ctx, in, out,
        [this](grpc::CallbackServerContext*, const v1::InstallSnapshotRequest* req,
               v1::InstallSnapshotResponse*, ReplyReactor* reactor) {
          reactor->Finish(ToGrpcStatus(InstallChunk(*req)));
        });
  }

  absl::Status InstallChunk(const v1::InstallSnapshotRequest& request) {
    const v1::InstallSnapshotRequest* req = &request;
    absl::Status st;
    uint64_t checked_term = 0;
    {
      absl::MutexLock lock(&mu);
      st = CheckSender(req->epoch(), req->shard(), req->primary(), req->primary_incarnation());
      if (st.ok() && req->seq() == 0) {
        // A snapshot older than one this replica already started in this term (a call that
        // timed out and arrived late) must not roll it back (R4).
        if (req->snapshot_id() <= snapshot_floor) {
          st = absl::FailedPreconditionError(absl::StrFormat(
              "snapshot %u from %s is older than snapshot %u already started; ignored",
              req->snapshot_id(), req->primary(), snapshot_floor));
        } else {
          snapshot_floor = req->snapshot_id();
          synced_term = 0;
        }
      }
      checked_term = term;
    }
    if (st.ok()) {
      absl::MutexLock replay(&replay_mu);
      st = core->InstallSnapshot(checked_term, *req);
    }
    if (st.ok() && req->done()) {
      absl::MutexLock lock(&mu);
      if (term == checked_term) synced_term = term;
      ++snapshots_installed;
    }
    return st;
  }

  void Poke() {
    absl::MutexLock lock(&mu);
    poked = true;
  }
};

Replicator::Replicator(const ReplicatorOptions& options, ServerCore* core)
    : impl_(std::make_unique<Impl>(options, core)) {}

Replicator::~Replicator() { Stop(); }

void Replicator::Start(const std::string& address) {
  impl_->address = address;
  impl_->core->SetNewerMapCallback([this] { Poke(); });
  impl_->heartbeat_thread = std::thread([this] { impl_->HeartbeatLoop(); });
}

void Replicator::Stop() {
  std::vector<std::unique_ptr<Impl::Sender>> stopped;
  std::vector<Callback> failed;
  {
    absl::MutexLock lock(&impl_->mu);
    if (impl_->stopping) return;
    impl_->stopping = true;
    impl_->core->SetRouting(impl_->epoch, /*serving=*/false, ++impl_->term, /*restoring=*/false);
    for (auto& [addr, s] : impl_->senders) stopped.push_back(std::move(s));
    impl_->senders.clear();
    for (auto& [lsn, cb] : impl_->pending) failed.push_back(std::move(cb));
    impl_->pending.clear();
  }
  if (impl_->heartbeat_thread.joinable()) impl_->heartbeat_thread.join();
  impl_->StopSenders(std::move(stopped));
  impl_->DropParked(absl::UnavailableError("server shutting down"));
  for (auto& cb : failed) cb(absl::UnavailableError("server shutting down"));
}

void Replicator::Append(const LogEntry& entry) {
  impl_->Append(entry);
}

void Replicator::WhenReplicated(uint64_t lsn, std::function<void(absl::Status)> done) {
  impl_->WhenReplicated(lsn, std::move(done));
}

grpc::Service* Replicator::service() { return impl_.get(); }

void Replicator::Poke() { impl_->Poke(); }

ReplicationStats Replicator::Stats() const {
  ReplicationStats out;
  out.failed = impl_->core->failed();  // (before mu: the core's order lock comes first)
  absl::MutexLock lock(&impl_->mu);
  out.epoch = impl_->epoch;
  out.role = RoleName(impl_->placement.role);
  out.shard = impl_->shard;
  out.lsn = impl_->appended;
  for (const auto& [addr, s] : impl_->senders) {
    ReplicationStats::Backup b;
    b.address = s->id.address;
    b.live = Impl::IsCounted(*s);
    b.catching_up = s->needs_snapshot || s->snapshotting;
    b.acked_lsn = s->acked;
    b.lag = impl_->appended > s->acked ? impl_->appended - s->acked : 0;
    b.snapshot_bytes_sent = s->snapshot_bytes;
    out.backups.push_back(std::move(b));
  }
  out.snapshots_sent = impl_->snapshots_sent;
  out.snapshots_installed = impl_->snapshots_installed;
  out.fenced_refusals = impl_->fenced_refusals;
  out.backup_failures = impl_->replica_failures;
  out.seconds_since_heartbeat = absl::ToDoubleSeconds(absl::Now() - impl_->last_heartbeat);
  return out;
}

}  // namespace tessera
