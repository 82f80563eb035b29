// The coordinator's processing of one batch of requests: the state machine (ClusterState),
// then the write of its persisted part, then the answers: commit, then publish
// (docs/replication.md, "The control-plane protocol"). Deterministic: time is passed in, the
// store is an interface. The gRPC server (coordinator.cc) and the simulation
// (control_plane_sim_test.cc) both drive it.
#ifndef TESSERA_SERVER_COORDINATOR_COORDINATOR_CORE_H_
#define TESSERA_SERVER_COORDINATOR_COORDINATOR_CORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "proto/cluster.pb.h"
#include "server/coordinator/cluster_state.h"

namespace tessera {

// Where the coordinator's state lives. Implementations need not be thread-safe: one thread
// (the coordinator's loop) calls them.
class CoordinatorStore {
 public:
  virtual ~CoordinatorStore() = default;
  // The saved state; nullopt when none was ever written. Errors: DATA_LOSS (unreadable),
  // UNAVAILABLE (the store cannot be read).
  virtual absl::StatusOr<std::optional<v1::CoordinatorState>> Read() = 0;
  // Writes `state` durably (synced) before returning OK.
  virtual absl::Status Write(const v1::CoordinatorState& state) = 0;
};

// A RocksDB directory (key "state"), synced on every write.
absl::StatusOr<std::unique_ptr<CoordinatorStore>> OpenRocksDbStore(const std::string& dir);

// Test hook (tessera-coordinator --testing_persist_fault_file): while `path` holds "fail",
// writes fail with UNAVAILABLE; while it holds "block", writes wait (polling every 10 ms).
std::unique_ptr<CoordinatorStore> FaultInjectingStoreForTesting(
    std::unique_ptr<CoordinatorStore> base, std::string path);

// One request of a batch and where its answer goes. The pointers are borrowed until Process
// returns.
struct HeartbeatCall {
  const v1::HeartbeatRequest* request;
  v1::HeartbeatResponse* response;
};
struct CaughtUpCall {
  const v1::ReportCaughtUpRequest* request;
  v1::ReportCaughtUpResponse* response;
};
struct ReplicaFailedCall {
  const v1::ReportReplicaFailedRequest* request;
  v1::ReportReplicaFailedResponse* response;
};
struct RecoverShardCall {
  const v1::RecoverShardRequest* request;
  v1::RecoverShardResponse* response;
};
struct FinishRecoveryCall {
  const v1::FinishRecoveryRequest* request;
  v1::FinishRecoveryResponse* response;
};
struct CoordinatorCall {
  std::variant<HeartbeatCall, CaughtUpCall, ReplicaFailedCall, RecoverShardCall, FinishRecoveryCall>
      call;
  absl::Status status;  // set by Process
};

// Thread-compatible: one thread calls Start and Process.
class CoordinatorCore {
 public:
  // `life`: random per coordinator start, nonzero. `store` is borrowed.
  CoordinatorCore(const CoordinatorOptions& options, CoordinatorStore* store, uint64_t life);

  // Loads the saved state (or writes the initial one). Leases start at now_ms.
  absl::Status Start(int64_t now_ms);

  // Processes one batch at monotonic time now_ms (also with no calls: the lease tick). A gap
  // since the previous batch longer than a quarter lease restarts every lease first (T9);
  // then the calls in order; then ended leases. If the persisted part changed it is written;
  // only if that succeeds does the new state become current and do the calls get their
  // answers. A failed write leaves the state as it was and answers every call UNAVAILABLE.
  void Process(absl::Span<CoordinatorCall> calls, int64_t now_ms);

  const ClusterState& state() const { return state_; }
  uint64_t seq() const { return seq_; }
  uint64_t life() const { return life_; }
  // Writes of the state that failed, and the last failure (empty once a write succeeds).
  uint64_t persist_failures() const { return persist_failures_; }
  const std::string& persist_error() const { return persist_error_; }
  // Gaps of more than a quarter lease between batches (the coordinator could not hear).
  uint64_t stalls() const { return stalls_; }

 private:
  void Apply(ClusterState& next, CoordinatorCall& call, int64_t now_ms);
  void Answer(CoordinatorCall& call) const;

  const CoordinatorOptions options_;
  CoordinatorStore* const store_;
  const uint64_t life_;
  ClusterState state_;
  uint64_t seq_ = 0;
  std::optional<int64_t> last_ms_;
  bool restart_leases_ = false;  // a write failed: the next batch restarts the leases
  uint64_t persist_failures_ = 0;
  uint64_t stalls_ = 0;
  std::string persist_error_;
};

}  // namespace tessera

#endif  // TESSERA_SERVER_COORDINATOR_COORDINATOR_CORE_H_
