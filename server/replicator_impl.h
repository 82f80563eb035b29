// The Replicator's state and threads (docs/replication.md), shared by replicator.cc (the map,
// roles, heartbeats and acknowledgements), replicator_primary.cc (senders to backups) and
// replicator_backup.cc (the Replication service). Internal to those three files.
#ifndef TESSERA_SERVER_REPLICATOR_IMPL_H_
#define TESSERA_SERVER_REPLICATOR_IMPL_H_

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
#include "common/auth.h"
#include "common/grpc_channel.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "common/raw_unary.h"
#include "common/slice_reader.h"
#include "proto/cluster.grpc.pb.h"
#include "server/grpc_wire.h"
#include "server/replica_rules.h"
#include "server/replication_codec.h"
#include "server/replicator.h"

namespace tessera {
namespace replicator_detail {

using Callback = std::function<void(absl::Status)>;

// A channel to a peer (the coordinator, a backup), presenting this server's token.
inline std::shared_ptr<grpc::Channel> PeerChannel(const std::string& address,
                                                  const ReplicatorOptions& options,
                                                  int max_backoff_ms = 1000) {
  const Authenticator* auth = options.auth;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  // Reconnect quickly after a peer comes back: the default backoff reaches 120 s.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, std::min(100, max_backoff_ms));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, max_backoff_ms);
  TokenSource token;  // (asked on every call: a reloaded file takes effect at once)
  if (auth->enabled()) token = [auth] { return auth->OutgoingToken(kRoleServer); };
  return MakeChannel(address, Credentials{}, args, std::move(token), options.peer_credentials);
}

// Trailing metadata of a refused batch whose backup needs a snapshot first.
inline constexpr char kNeedsSnapshotKey[] = "tessera-needs-snapshot";
// Trailing metadata of a batch refused by a FAILED replica (docs/state_machine.md): its reason.
inline constexpr char kReplicaFailedKey[] = "tessera-replica-failed";

inline absl::Status Reroute(absl::Status status) {
  status.SetPayload("type.tessera/reroute", absl::Cord("1"));
  return status;
}

}  // namespace replicator_detail

using namespace replicator_detail;  // NOLINT (internal header of three files)

struct Replicator::Impl : public v1::Replication::WithRawCallbackMethod_Replicate<
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
    // The backup answered FAILED: the coordinator is asked, once, to make it JOINING (T10).
    bool report_failed = false;
    std::string failed_reason;
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
    // A restarted coordinator restarts every lease (T9): this server's first heartbeat must
    // reach it well within one lease (1.5 s), so its channel retries at most a heartbeat
    // interval apart (gRPC's 1 s cap plus jitter, a failed heartbeat's wait and a busy
    // machine made live servers miss it: tests/nemesis_test.cc).
    coordinator = v1::Coordinator::NewStub(
        PeerChannel(options.coordinator, options, std::clamp(options.heartbeat_ms, 20, 1000)));
  }

  // ---- Map and roles ----

  void HeartbeatLoop();

  static v1::ServerRole ToProto(Role r);

  void ApplyMap(const v1::ClusterMap& m);

  // ---- Primary: acknowledgements ----

  static bool IsCounted(const Sender& s) { return Counted(s.live_in_map, s.found_caught_up); }

  // Completes every pending acknowledgement that every counted backup has reached (R5).
  void Recompute(std::vector<std::pair<Callback, absl::Status>>* done)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  void WhenReplicated(uint64_t lsn, Callback cb);

  void Append(const LogEntry& entry);

  // ---- Primary: senders ----

  Sender* StartSender(const ReplicaId& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  void StopSenders(std::vector<std::unique_ptr<Sender>> stopped);

  void Backoff(Sender* s, int* failures);

  // Up to kMaxInFlight batches travel at once (the backup applies them in LSN order); what
  // accumulates meanwhile goes in the next batch.
  static constexpr int kMaxInFlight = 4;

  void SendLoop(Sender* s);

  struct BatchCall {
    grpc::ClientContext ctx;
    grpc::ByteBuffer request;
    grpc::ByteBuffer response;
  };

  void SendBatch(Sender* s, const v1::ReplicateRequest& header, const std::vector<Entry*>& batch);

  void OnBatchDone(Sender* s, BatchCall& call, const grpc::Status& status);

  // R6: a joining replica counts for acknowledgements once it has every change this primary
  // has acknowledged; then the coordinator is told, and makes it LIVE.
  void MaybeCaughtUp(Sender* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  absl::Status ReportCaughtUp(Sender* s);
  // T10: asks the coordinator to make a FAILED backup JOINING, so that it is neither counted
  // nor promoted while it is re-synced.
  absl::Status ReportReplicaFailed(Sender* s);

  absl::Status SendSnapshot(Sender* s);

  // ---- Backup: the Replication service ----

  // R4: only our shard's primary (address and incarnation), as our map has it, may send.
  absl::Status CheckSender(uint64_t req_epoch, uint32_t req_shard, const std::string& sender,
                           uint64_t sender_incarnation) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  // Batches arrive over several calls at once; they are applied in LSN order. A batch that
  // does not follow what is applied yet waits (parked, its call open) for its predecessor.
  grpc::ServerUnaryReactor* Replicate(grpc::CallbackServerContext* ctx,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;

  // Answers every parked batch (the primary changed, or the server stops).
  void DropParked(const absl::Status& why);

  // Raw, parsed by RunParsed: garbage gets INVALID_ARGUMENT, not UNIMPLEMENTED.
  grpc::ServerUnaryReactor* InstallSnapshot(grpc::CallbackServerContext* ctx,
                                            const grpc::ByteBuffer* in,
                                            grpc::ByteBuffer* out) override;

  absl::Status InstallChunk(const v1::InstallSnapshotRequest& request);

  void Poke();
};

}  // namespace tessera

#endif  // TESSERA_SERVER_REPLICATOR_IMPL_H_
