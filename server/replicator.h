// The server's side of replication and membership: heartbeats to the coordinator, the shard
// map, sending the update log to backups (primary), applying it (backup), acknowledgements
// and fencing. Design and invariants: docs/replication.md.
#ifndef TESSERA_SERVER_REPLICATOR_H_
#define TESSERA_SERVER_REPLICATOR_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "server/server_core.h"

namespace grpc {
class ChannelCredentials;
class Service;
}  // namespace grpc

namespace tessera {

class Authenticator;

struct ReplicatorOptions {
  std::string coordinator;  // host:port
  int metrics_port = -1;
  int heartbeat_ms = 250;
  std::string checkpoint_dir;  // reported to the coordinator (for `tessera status`)
  // Largest batch of log entries (bytes) and snapshot chunk sent to a backup in one call.
  size_t max_batch_bytes = size_t{8} << 20;
  // Checks the Replication service's calls and gives the server token presented to the
  // coordinator and the backups (docs/security.md). Required; must outlive the replicator.
  const Authenticator* auth = nullptr;
  // TLS for the calls to the coordinator and the backups (docs/security.md); null: plaintext.
  std::shared_ptr<grpc::ChannelCredentials> peer_credentials;
  // Called (outside the replicator's locks, on its heartbeat thread) with the new role
  // ("primary", "backup", "joining", "restoring" or "none") whenever it changes.
  std::function<void(const std::string& role)> on_role_change;
};

// Replication figures for metrics.
struct ReplicationStats {
  uint64_t epoch = 0;
  std::string role = "none";  // primary, backup, joining, restoring or none
  int32_t shard = -1;
  uint64_t lsn = 0;  // last change appended (primary) or applied (backup)
  struct Backup {
    std::string address;
    bool live = false;         // counted for acknowledgements
    bool catching_up = false;  // snapshot being sent
    uint64_t acked_lsn = 0;
    uint64_t lag = 0;  // entries behind this primary
    uint64_t snapshot_bytes_sent = 0;
  };
  std::vector<Backup> backups;
  uint64_t snapshots_sent = 0;
  uint64_t snapshots_installed = 0;
  uint64_t fenced_refusals = 0;  // batches refused because the sender was not our primary
  uint64_t backup_failures = 0;  // batches refused by a FAILED backup (primary)
  bool failed = false;           // this replica is FAILED (docs/state_machine.md)
  double seconds_since_heartbeat = 0;
};

// Thread-safe. Owns a heartbeat thread and one sender thread per backup.
class Replicator final : public ServerCore::UpdateLog {
 public:
  Replicator(const ReplicatorOptions& options, ServerCore* core);
  ~Replicator() override;  // Stop()

  // Starts heartbeating. `address` (how clients and peers reach this server, its identity in
  // the cluster): the server must already listen there.
  void Start(const std::string& address);
  // Stops every thread; pending acknowledgements fail with UNAVAILABLE.
  void Stop();

  // UpdateLog: entries that came over gRPC carry their GrpcWire.
  void Append(const LogEntry& entry) override;

  // Runs `done` once change `lsn` is on every counted backup (OK), or fails it when this
  // server stops being the primary (FAILED_PRECONDITION with the reroute payload). `done` may
  // run inline.
  void WhenReplicated(uint64_t lsn, std::function<void(absl::Status)> done);

  // The Replication gRPC service (backup side); owned by the Replicator.
  grpc::Service* service();

  // Asks the coordinator for the map now (e.g. a request showed a newer epoch).
  void Poke();

  ReplicationStats Stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera

#endif  // TESSERA_SERVER_REPLICATOR_H_
