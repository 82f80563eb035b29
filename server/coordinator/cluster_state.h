// The coordinator's decisions (docs/replication.md, "The control-plane protocol"): what the
// membership and the shard map become on a heartbeat, an ended lease, a caught-up report or an
// operator's recovery. No transport, no storage, no clock: time is a monotonic millisecond
// count passed in, so the same code runs in the coordinator and in the deterministic
// simulation (control_plane_sim_test.cc).
#ifndef TESSERA_SERVER_COORDINATOR_CLUSTER_STATE_H_
#define TESSERA_SERVER_COORDINATOR_CLUSTER_STATE_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/cluster.pb.h"
#include "server/coordinator/coordinator_options.h"

namespace tessera {

// Thread-compatible value type (CoordinatorCore copies it for every batch it commits).
class ClusterState {
 public:
  explicit ClusterState(const CoordinatorOptions& options);

  // Replaces the state with a persisted one. Every member gets a fresh lease from `now_ms`
  // (T9), and no promotion is in progress. Errors: FAILED_PRECONDITION when the persisted
  // cluster has another shape than the options.
  absl::Status Load(const v1::CoordinatorState& state, int64_t now_ms);
  // The persisted part: members, map, failovers.
  void Save(v1::CoordinatorState* state) const;
  // Grows whenever the persisted part changes (so a caller need not compare serializations).
  uint64_t version() const { return version_; }

  // The stamp of the batch being processed: this coordinator's life and the batch's sequence
  // number. Heartbeats echoing (life, s >= t) prove their sender alive after batch t.
  void SetStamp(uint64_t life, uint64_t seq) {
    life_ = life;
    seq_ = seq;
  }

  // T1, T2, T4, T4', T5 and placement (T6, T6'). Errors: INVALID_ARGUMENT (no address or
  // incarnation), FAILED_PRECONDITION (a newer incarnation holds the address): nothing
  // changes then.
  absl::Status Heartbeat(const v1::ServerStatus& status, int64_t now_ms);
  // Whether the process (address, incarnation) is a LIVE replica of a promoting shard or a
  // holder of a LOST shard whose last heartbeat did not prove it alive: its answer asks it to
  // heartbeat again at once (R7).
  bool NeedsProof(const std::string& address, uint64_t incarnation) const;
  // T3: every member whose lease ended by `now_ms` fails; then placement.
  void ExpireLeases(int64_t now_ms);
  // T9: every lease restarts from `now_ms` (the coordinator could not hear until now).
  void RestartLeases(int64_t now_ms);
  // T7. Errors: INVALID_ARGUMENT (no such shard), FAILED_PRECONDITION (the reporter is not
  // the shard's primary, or the entry is not a JOINING replica of it any more).
  absl::Status CaughtUp(const v1::ReportCaughtUpRequest& report);
  // T10: a FAILED backup, reported by its primary, is JOINING again at a new join epoch.
  // Errors as CaughtUp.
  absl::Status ReplicaFailed(const v1::ReportReplicaFailedRequest& report);
  // T8 (operator). Errors: INVALID_ARGUMENT, FAILED_PRECONDITION (the shard is not lost, or no
  // alive unplaced server can hold it).
  absl::StatusOr<v1::RecoverShardResponse> RecoverShard(const v1::RecoverShardRequest& req);
  // T8'. Errors: INVALID_ARGUMENT, FAILED_PRECONDITION (not restoring onto that server).
  absl::Status FinishRecovery(const v1::FinishRecoveryRequest& req);

  const v1::ClusterMap& map() const { return map_; }
  uint64_t failovers() const { return failovers_; }
  // Shards whose primary's lease ended and that wait for a backup's proof.
  std::vector<uint32_t> PromotingShards() const;
  void Status(int64_t now_ms, v1::GetClusterStatusResponse* out) const;

 private:
  // The replica entry a primary reports on (T7, T10): its index in shard `shard`, or
  // INVALID_ARGUMENT (no such shard) / FAILED_PRECONDITION (the shard does not serve, the
  // reporter is not its primary, or the entry is not a replica of it any more).
  absl::StatusOr<int> ReportedReplica(uint32_t shard, const std::string& primary,
                                      uint64_t primary_incarnation, const std::string& replica,
                                      uint64_t replica_incarnation, uint64_t join_epoch) const;
  struct Member {
    uint64_t incarnation = 0;
    int32_t shard = -1;  // bound shard
    bool expired = false;
    bool heard = false;  // a heartbeat since this coordinator started (placement needs one)
    int64_t deadline_ms = 0;
    int64_t heard_ms = 0;
    uint64_t order = 0;  // first registration, for deterministic placement
    v1::ServerStatus status;
  };
  static constexpr int64_t kNone = -1;

  // Whether the process named by replica `r` is a member whose lease holds.
  bool Alive(const v1::Replica& r) const;
  // Whether member `m`'s last heartbeat echoed a stamp of this life at or after batch `batch`.
  bool Proven(const Member& m, int64_t batch) const;
  bool Placed(const std::string& address, uint64_t incarnation) const;
  // The alive, unplaced member to add to shard s: bound to s first, then unbound, earliest
  // registered first. Empty: none.
  std::string Candidate(int32_t s) const;
  void Bump(const std::string& why);
  void Touch() { ++version_; }
  // F: the member (address, incarnation) failed.
  void Fail(const std::string& address, uint64_t incarnation);
  // T4: replica `index` of shard s becomes its primary.
  void Promote(int32_t s, int index, const char* why);
  // T5: holder `index` of LOST shard s is its primary again.
  void Revive(int32_t s, int index);
  // If shard s is promoting and no LIVE replica is alive, it is LOST.
  void MaybeLost(int32_t s);
  // T6, T6'.
  void Rebalance();
  v1::Replica* AddReplica(int32_t s, const std::string& address, v1::ReplicaState state);
  void SetShardState(int32_t s, v1::ShardState state);

  CoordinatorOptions options_;
  // Persisted.
  v1::ClusterMap map_;
  std::map<std::string, Member> members_;  // by address
  uint64_t failovers_ = 0;
  // Not persisted.
  std::vector<int64_t> promoting_;   // per shard: the batch since which it promotes, or kNone
  std::vector<int64_t> lost_since_;  // per shard: the batch it became LOST in (this life)
  uint64_t next_order_ = 0;
  uint64_t version_ = 0;
  uint64_t life_ = 0;
  uint64_t seq_ = 0;
};

}  // namespace tessera

#endif  // TESSERA_SERVER_COORDINATOR_CLUSTER_STATE_H_
