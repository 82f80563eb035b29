// tessera-coordinator: membership with leases, the shard map and its epoch, failover and
// re-replication decisions, its own state in RocksDB. Design: docs/replication.md.
#ifndef TESSERA_SERVER_COORDINATOR_COORDINATOR_H_
#define TESSERA_SERVER_COORDINATOR_COORDINATOR_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/process_metrics.h"
#include "common/tls.h"
#include "server/coordinator/coordinator_options.h"

namespace tessera {

struct CoordinatorServerOptions {
  std::string address = "127.0.0.1";
  int port = 0;
  int metrics_port = 0;   // -1 disables
  std::string state_dir;  // RocksDB; required
  CoordinatorOptions cluster;
  // Token file (docs/security.md); empty: no authentication.
  std::string auth_token_file;
  // TLS (docs/security.md, "TLS"); without a certificate: plaintext.
  TlsFiles tls;
  // HTTPS and basic authentication on /metrics (docs/security.md, "/metrics").
  MetricsSecurity metrics_security;
  // Test hook: FaultInjectingStoreForTesting on this path (coordinator_core.h). Empty: off.
  std::string testing_persist_fault_file;
};

// The gRPC service around a CoordinatorCore: handlers queue their requests, one loop thread
// processes them in batches (commit, then publish) and answers; GetClusterMap and
// GetClusterStatus answer from the last published state. Thread-safe.
class CoordinatorServer {
 public:
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(
      const CoordinatorServerOptions& options);
  ~CoordinatorServer();
  int port() const;
  int metrics_port() const;
  // Reads the token file and the TLS files again (SIGHUP); on an error what is in use stays.
  absl::Status ReloadCredentials();
  void Shutdown();

 private:
  struct Impl;
  explicit CoordinatorServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera

#endif  // TESSERA_SERVER_COORDINATOR_COORDINATOR_H_
