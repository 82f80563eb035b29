// The Replicator: the map and roles, heartbeats, acknowledgements (docs/replication.md).
#include <string>
#include <type_traits>
#include <variant>

#include "proto/tessera.pb.h"
#include "server/replicator_impl.h"

namespace tessera {

void Replicator::Impl::HeartbeatLoop() {
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

v1::ServerRole Replicator::Impl::ToProto(Role r) {
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

void Replicator::Impl::ApplyMap(const v1::ClusterMap& m) {
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

void Replicator::Impl::Recompute(std::vector<std::pair<Callback, absl::Status>>* done) {
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

void Replicator::Impl::WhenReplicated(uint64_t lsn, Callback cb) {
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

namespace {

// The request of a change this server made itself (the lifecycle task's), which has no bytes
// as received: serialized, so that it travels to the backups like every change.
grpc::ByteBuffer SerializeRequest(const LogEntry& entry) {
  std::string bytes;
  std::visit(
      [&](const auto& op) {
        if constexpr (!std::is_same_v<std::decay_t<decltype(op)>, RestoreOp>) {
          op->SerializeToString(&bytes);
        }
      },
      entry.op);
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

}  // namespace

void Replicator::Impl::Append(const LogEntry& entry) {
  const bool restore = std::holds_alternative<RestoreOp>(entry.op);
  const grpc::ByteBuffer bytes = restore ? grpc::ByteBuffer()
                                 : entry.wire == nullptr
                                     ? SerializeRequest(entry)
                                     : static_cast<const GrpcWire&>(*entry.wire).bytes;
  absl::MutexLock lock(&mu);
  appended = std::max(appended, entry.lsn);
  if (restore) {
    // The state was replaced: every backup gets a snapshot taken after this point, which
    // acknowledges this LSN once installed.
    for (auto& [addr, s] : senders) s->needs_snapshot = true;
    return;
  }
  const int kind = LogEntryKindOf(entry);
  for (auto& [addr, s] : senders) {
    s->queue.push_back({entry.lsn, kind, entry.time_ms, entry.table_id, bytes});
  }
}

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

void Replicator::Append(const LogEntry& entry) { impl_->Append(entry); }

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
