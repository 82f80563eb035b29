// tessera-server as a library: the gRPC server, the health service and the /metrics endpoint
// around a ServerCore. main.cc only parses flags and handles signals.
#ifndef TESSERA_SERVER_SERVER_H_
#define TESSERA_SERVER_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/call_limiter.h"
#include "common/process_metrics.h"
#include "common/tls.h"
#include "server/server_core.h"

namespace tessera {

class Replicator;

// Per-process options of tessera-server.
struct ServerOptions {
  // Address and port for gRPC; port 0 picks a free port (see Server::port()).
  std::string address = "127.0.0.1";
  int port = 0;
  // Address and port of the Prometheus /metrics endpoint; port 0 picks a free port, -1 disables.
  std::string metrics_address = "127.0.0.1";
  int metrics_port = 0;
  // HTTPS and basic authentication on /metrics (docs/security.md, "/metrics").
  MetricsSecurity metrics_security;
  // Port of the data plane (docs/data_plane.md: the bulk calls on framed TCP beside gRPC), on
  // `address`; 0 picks a free port, -1 disables it (clients then use gRPC only).
  int data_port = 0;
  // Data-plane connections open at once (two threads each). Default 1024.
  int max_data_connections = 1024;
  // Token file (docs/security.md): every call needs a token with a role its method allows.
  // Empty: no authentication.
  std::string auth_token_file;
  // Calls per token and per connection, in flight and per second, of the ParameterServer
  // service and the data plane (docs/security.md, "Abuse limits").
  CallLimits call_limits;
  // TLS (docs/security.md, "TLS"): this server's certificate and key; with the CA, clients
  // must present a certificate from it (mutual TLS) and this server's calls to its peers verify
  // them. Without a certificate: plaintext. With TLS, the data plane is off (gRPC carries all).
  TlsFiles tls;
  // Largest request message gRPC (or a data-plane frame) accepts; larger is RESOURCE_EXHAUSTED.
  // Default 256 MiB.
  int max_request_bytes = 256 << 20;
  // On Shutdown(), how long in-flight requests may run before they are cancelled. Default 10 s.
  int64_t drain_timeout_ms = 10000;
  // Restore before serving: -1 no, 0 the newest complete checkpoint, else that checkpoint.
  int64_t restore_checkpoint = -1;
  // host:port of tessera-coordinator; empty: a static shard (core.shard_index of
  // core.num_shards, no replication). With a coordinator the server joins the cluster as a
  // spare and the coordinator places it (docs/replication.md).
  std::string coordinator;
  // How peers and clients reach this server; default address:port.
  std::string advertise_address;
  int heartbeat_ms = 250;
  ServerCoreOptions core;
};

// Thread-safe.
class Server {
 public:
  // Starts serving; returns once both endpoints listen.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options);
  ~Server();  // Shutdown() if not done yet

  int port() const;
  int metrics_port() const;  // -1 when disabled
  // Reads the token file and the TLS files again (SIGHUP); on an error what is in use stays.
  absl::Status ReloadCredentials();
  int data_port() const;  // 0 when disabled

  // Reports NOT_SERVING on the health service, stops accepting calls, lets in-flight calls
  // finish for up to drain_timeout_ms, then cancels what is left. Idempotent.
  void Shutdown();

  ServerCore* core();
  Replicator* replicator();  // null without a coordinator

 private:
  struct Impl;
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera

#endif  // TESSERA_SERVER_SERVER_H_
