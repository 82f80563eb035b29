// The Replicator on a backup: the Replication service (docs/replication.md, "Fencing").
#include "server/replicator_impl.h"

namespace tessera {

absl::Status Replicator::Impl::CheckSender(uint64_t req_epoch, uint32_t req_shard,
                                           const std::string& sender, uint64_t sender_incarnation) {
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

grpc::ServerUnaryReactor* Replicator::Impl::Replicate(grpc::CallbackServerContext* ctx,
                                                      const grpc::ByteBuffer* request,
                                                      grpc::ByteBuffer* response) {
  auto* reactor = ctx->DefaultReactor();
  if (grpc::Status s = options.auth->Check(*ctx, "/tessera.v1.Replication/Replicate"); !s.ok()) {
    reactor->Finish(std::move(s));
    return reactor;
  }
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

void Replicator::Impl::DropParked(const absl::Status& why) {
  absl::MutexLock lock(&park_mu);
  for (auto& [lsn, p] : parked) p.reactor->Finish(ToGrpcStatus(why));
  parked.clear();
}

grpc::ServerUnaryReactor* Replicator::Impl::InstallSnapshot(grpc::CallbackServerContext* ctx,
                                                            const grpc::ByteBuffer* in,
                                                            grpc::ByteBuffer* out) {
  return RunParsed<v1::InstallSnapshotRequest, v1::InstallSnapshotResponse>(
      ctx, in, out, *options.auth, "/tessera.v1.Replication/InstallSnapshot",
      [this](grpc::CallbackServerContext*, const v1::InstallSnapshotRequest* req,
             v1::InstallSnapshotResponse*,
             ReplyReactor* reactor) { reactor->Finish(ToGrpcStatus(InstallChunk(*req))); });
}

absl::Status Replicator::Impl::InstallChunk(const v1::InstallSnapshotRequest& request) {
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

void Replicator::Impl::Poke() {
  absl::MutexLock lock(&mu);
  poked = true;
}

}  // namespace tessera
