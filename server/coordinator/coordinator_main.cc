// tessera-coordinator: membership, leases, the shard map, failover (docs/replication.md).
//
// Prints one line "TESSERA_READY port=<grpc> metrics_port=<metrics>" to --ready_fd (when set)
// once it listens. SIGTERM or SIGINT stops it; its state stays in --state_dir.
#include <signal.h>
#include <unistd.h>

#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "common/process_setup.h"
#include "server/coordinator/coordinator.h"

ABSL_FLAG(std::string, address, "127.0.0.1", "Address to serve gRPC on.");
ABSL_FLAG(int, port, 0, "gRPC port; 0 picks a free one.");
ABSL_FLAG(int, metrics_port, 0, "Port of the /metrics endpoint; 0 picks a free one, -1 disables.");
ABSL_FLAG(std::string, state_dir, "", "Directory of the coordinator's state (RocksDB). Required.");
ABSL_FLAG(uint32_t, num_shards, 1, "Number of shards (replica groups).");
ABSL_FLAG(uint32_t, replication, 1, "Replicas per shard (1-3).");
ABSL_FLAG(uint32_t, num_vshards, 1024, "Number of virtual shards.");
ABSL_FLAG(int, lease_ms, 1500, "A server not heard from for this long is declared dead.");
ABSL_FLAG(int, ready_fd, -1, "File descriptor to write the ready line to, then close.");
ABSL_FLAG(std::string, tls_cert_file, "",
          "TLS (docs/security.md): this daemon's certificate (chain), PEM; with --tls_key_file. "
          "Re-read on SIGHUP. Empty: plaintext.");
ABSL_FLAG(std::string, tls_key_file, "", "TLS: this daemon's private key, PEM.");
ABSL_FLAG(std::string, tls_ca_file, "",
          "TLS: the CA whose certificates peers must present (mutual TLS); a server also "
          "verifies its coordinator and backups with it.");
ABSL_FLAG(bool, metrics_tls, false,
          "Serve /metrics over HTTPS with --tls_cert_file and --tls_key_file (docs/security.md).");
ABSL_FLAG(std::string, metrics_basic_auth_file, "",
          "/metrics requires HTTP basic authentication: lines 'USER PASSWORD'. Empty: none.");
ABSL_FLAG(std::string, auth_token_file, "",
          "Tokens and their roles, 'ROLE TOKEN' per line (docs/security.md); every call then "
          "needs one. Re-read on SIGHUP. Empty: no authentication.");
ABSL_FLAG(std::string, testing_persist_fault_file, "",
          "Fault injection for tests: while this file says 'fail', writes of the state fail; "
          "while it says 'block', they wait.");

int main(int argc, char** argv) {
  tessera::SetUpProcess();
  absl::SetProgramUsageMessage("tessera-coordinator: membership and shard map of a cluster");
  absl::ParseCommandLine(argc, argv);
  tessera::BlockStopSignals();  // before any thread starts
  tessera::SetLogTag("coordinator");

  tessera::CoordinatorServerOptions options;
  options.address = absl::GetFlag(FLAGS_address);
  options.port = absl::GetFlag(FLAGS_port);
  options.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  options.state_dir = absl::GetFlag(FLAGS_state_dir);
  options.cluster.num_shards = absl::GetFlag(FLAGS_num_shards);
  options.cluster.replication = absl::GetFlag(FLAGS_replication);
  options.cluster.num_vshards = absl::GetFlag(FLAGS_num_vshards);
  options.cluster.lease = absl::Milliseconds(absl::GetFlag(FLAGS_lease_ms));
  options.testing_persist_fault_file = absl::GetFlag(FLAGS_testing_persist_fault_file);
  options.auth_token_file = absl::GetFlag(FLAGS_auth_token_file);
  options.tls = {absl::GetFlag(FLAGS_tls_cert_file), absl::GetFlag(FLAGS_tls_key_file),
                 absl::GetFlag(FLAGS_tls_ca_file)};
  if (absl::GetFlag(FLAGS_metrics_tls)) {
    options.metrics_security.tls_cert_file = options.tls.cert_file;
    options.metrics_security.tls_key_file = options.tls.key_file;
  }
  options.metrics_security.basic_auth_file = absl::GetFlag(FLAGS_metrics_basic_auth_file);
  absl::StatusOr<std::unique_ptr<tessera::CoordinatorServer>> server =
      tessera::CoordinatorServer::Start(options);
  if (!server.ok()) {
    tessera::LogError("cannot start: %s", server.status().ToString());
    return 1;
  }
  tessera::WriteReadyLine(absl::GetFlag(FLAGS_ready_fd), (*server)->port(),
                          (*server)->metrics_port());
  tessera::LogInfo("received %s; stopping",
                   tessera::WaitForStopSignal([&] { return (*server)->ReloadCredentials(); }));
  (*server)->Shutdown();
  server->reset();
  return 0;
}
