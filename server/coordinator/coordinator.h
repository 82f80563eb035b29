// tessera-coordinator: membership with leases, the shard map and its epoch, failover and
// re-replication decisions, its own state in RocksDB. Design: docs/replication.md.
#ifndef TESSERA_SERVER_COORDINATOR_COORDINATOR_H_
#define TESSERA_SERVER_COORDINATOR_COORDINATOR_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tessera {

namespace v1 {
class ClusterMap;
class CoordinatorState;
class ServerStatus;
class GetClusterStatusResponse;
}  // namespace v1

struct CoordinatorOptions {
  uint32_t num_shards = 1;
  uint32_t replication = 1;  // R, 1..3
  uint32_t num_vshards = 1024;
  absl::Duration lease = absl::Milliseconds(1500);
};

// The decisions, without transport or storage: what the map becomes on a heartbeat, an
// expired lease or a caught-up report. Thread-compatible (the service serializes calls).
class ClusterState {
 public:
  explicit ClusterState(const CoordinatorOptions& options);
  ClusterState(ClusterState&&);
  ClusterState& operator=(ClusterState&&);
  ~ClusterState();

  // Replaces the state with a persisted one; every member gets a fresh lease from `now`.
  absl::Status Load(const v1::CoordinatorState& state, absl::Time now);
  void Save(v1::CoordinatorState* state) const;

  // Each returns true when the persisted state changed (the caller persists it before
  // answering anyone).
  bool Heartbeat(const v1::ServerStatus& status, absl::Time now);
  bool ExpireLeases(absl::Time now);
  // A primary reports a JOINING replica caught up: it becomes LIVE. Errors:
  // FAILED_PRECONDITION when the reporter is not the shard's primary or the replica not joining.
  absl::StatusOr<bool> CaughtUp(uint32_t shard, const std::string& primary,
                                const std::string& replica);

  const v1::ClusterMap& map() const;
  void Status(absl::Time now, v1::GetClusterStatusResponse* out) const;
  uint64_t failovers() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct CoordinatorServerOptions {
  std::string address = "127.0.0.1";
  int port = 0;
  int metrics_port = 0;   // -1 disables
  std::string state_dir;  // RocksDB; required
  CoordinatorOptions cluster;
};

// The gRPC service, the lease checker and persistence around a ClusterState.
class CoordinatorServer {
 public:
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(
      const CoordinatorServerOptions& options);
  ~CoordinatorServer();
  int port() const;
  int metrics_port() const;
  void Shutdown();

 private:
  struct Impl;
  explicit CoordinatorServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera

#endif  // TESSERA_SERVER_COORDINATOR_COORDINATOR_H_
