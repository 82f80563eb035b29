// The Replicator on a primary: one sender per backup (docs/replication.md, "Write path",
// "Catch-up").
#include "server/replicator_impl.h"

namespace tessera {

Replicator::Impl::Sender* Replicator::Impl::StartSender(const ReplicaId& id) {
  auto s = std::make_unique<Sender>();
  s->id = id;
  s->address = id.address;
  s->channel = PeerChannel(id.address, options);
  s->stub = v1::Replication::NewStub(s->channel);
  s->generic = std::make_unique<grpc::GenericStub>(s->channel);
  Sender* raw = s.get();
  senders.emplace(id.Key(), std::move(s));
  raw->thread = std::thread([this, raw] { SendLoop(raw); });
  return raw;
}

void Replicator::Impl::StopSenders(std::vector<std::unique_ptr<Sender>> stopped) {
  {
    absl::MutexLock lock(&mu);
    for (auto& s : stopped) {
      s->stop = true;
      for (grpc::ClientContext* ctx : s->calls) ctx->TryCancel();
    }
  }
  for (auto& s : stopped) s->thread.join();
}

namespace {

// What a primary's report about one of its backup entries names (T7, T10): itself, the map it
// acts on and the entry.
template <typename Report>
void FillReport(uint64_t epoch, int32_t shard, const std::string& primary, uint64_t incarnation,
                const ReplicaId& entry, Report* r) {
  r->set_epoch(epoch);
  r->set_shard(static_cast<uint32_t>(shard));
  r->set_primary(primary);
  r->set_primary_incarnation(incarnation);
  r->set_replica(entry.address);
  r->set_replica_incarnation(entry.incarnation);
  r->set_join_epoch(entry.join_epoch);
}

}  // namespace

void Replicator::Impl::Backoff(Sender* s, int* failures) {
  *failures = std::min(*failures + 1, 6);
  absl::MutexLock lock(&mu);
  auto stop = [s]() { return s->stop; };
  mu.AwaitWithTimeout(absl::Condition(&stop), absl::Milliseconds(10 << *failures));
}

void Replicator::Impl::SendLoop(Sender* s) {
  int failures = 0;
  while (true) {
    bool snapshot = false, report = false, report_failed = false;
    absl::Status failed;
    std::vector<Entry*> batch;
    v1::ReplicateRequest header;
    {
      absl::MutexLock lock(&mu);
      auto ready = [s]() {
        if (s->stop || !s->failure.ok()) return true;
        if (s->needs_snapshot || s->report_caught_up || s->report_failed) {
          return s->in_flight == 0;
        }
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
      } else if (s->report_failed) {
        report_failed = true;
        s->report_failed = false;  // one attempt; the snapshot follows whatever the answer
      } else if (s->needs_snapshot) {
        snapshot = true;
        s->snapshotting = true;
      } else if (s->report_caught_up) {
        report = true;
      }
      if (failed.ok() && !snapshot && !report && !report_failed && !s->needs_snapshot &&
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
    if (report_failed) {
      // Refused (a coordinator that is down or already moved on): the backup stays counted and
      // is re-synced all the same, while writes wait for it (docs/state_machine.md).
      if (absl::Status r = ReportReplicaFailed(s); !r.ok()) {
        LogWarning("could not report FAILED backup %s to the coordinator: %s", s->address,
                   r.ToString());
      } else {
        // This sender's entry is gone from the new map: give the heartbeat thread a moment to
        // apply it (and stop this sender) rather than snapshot an entry that no longer exists.
        absl::MutexLock lock(&mu);
        auto stopped = [s]() { return s->stop; };
        mu.AwaitWithTimeout(absl::Condition(&stopped),
                            absl::Milliseconds(4 * std::max(options.heartbeat_ms, 50)));
      }
      continue;
    }
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

void Replicator::Impl::SendBatch(Sender* s, const v1::ReplicateRequest& header,
                                 const std::vector<Entry*>& batch) {
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

void Replicator::Impl::OnBatchDone(Sender* s, BatchCall& call, const grpc::Status& status) {
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
          s->failed_reason = std::string(it->second.data(), it->second.size());
          LogWarning("backup %s is FAILED (%s); re-syncing it with a snapshot", s->address,
                     s->failed_reason);
          s->report_failed = true;
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

void Replicator::Impl::MaybeCaughtUp(Sender* s) {
  if (IsCounted(*s)) return;
  if (!IsCaughtUp(!s->needs_snapshot && !s->snapshotting, s->acked, max_completed)) return;
  s->found_caught_up = true;
  s->report_caught_up = true;
}

absl::Status Replicator::Impl::ReportCaughtUp(Sender* s) {
  v1::ReportCaughtUpRequest req;
  {
    absl::MutexLock lock(&mu);
    FillReport(epoch, shard, address, incarnation, s->id, &req);
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

absl::Status Replicator::Impl::ReportReplicaFailed(Sender* s) {
  v1::ReportReplicaFailedRequest req;
  {
    absl::MutexLock lock(&mu);
    FillReport(epoch, shard, address, incarnation, s->id, &req);
    req.set_reason(s->failed_reason);
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  v1::ReportReplicaFailedResponse resp;
  const grpc::Status status = coordinator->ReportReplicaFailed(&ctx, req, &resp);
  if (!status.ok()) return FromGrpcStatus(status);
  LogInfo("FAILED backup %s of shard %u is JOINING again; re-syncing it", req.replica(),
          req.shard());
  Poke();  // the heartbeat thread applies the new map: a new sender snapshots it as a joiner
  return absl::OkStatus();
}

absl::Status Replicator::Impl::SendSnapshot(Sender* s) {
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
  LogInfo("sent a snapshot of shard %d at LSN %u to %s: %.1f MB in %.2f s", shard, *cut, s->address,
          s->snapshot_bytes / 1e6, absl::ToDoubleSeconds(absl::Now() - start));
  return absl::OkStatus();
}

}  // namespace tessera
