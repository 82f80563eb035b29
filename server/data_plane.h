// The server's data plane (docs/data_plane.md): the four bulk calls on framed TCP connections
// beside gRPC, run through GrpcService::RunBulk exactly as their gRPC methods.
#ifndef TESSERA_SERVER_DATA_PLANE_H_
#define TESSERA_SERVER_DATA_PLANE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

typedef struct ssl_ctx_st SSL_CTX;

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace tessera {

class Authenticator;
class CallLimiter;
class GrpcService;
class MemoryBudget;

struct DataPlaneOptions {
  std::string address = "127.0.0.1";
  int port = 0;  // 0: a free port
  // Connections open at once; more are closed at accept (their clients use gRPC).
  int max_connections = 1024;
  // Largest request frame (the server's --max_request_bytes).
  uint32_t max_frame_bytes = 256 << 20;
  // TLS (docs/security.md): the context for a new connection (asked at each accept, so that a
  // reload takes effect); null, or answering null: plaintext.
  std::function<std::shared_ptr<SSL_CTX>()> tls_context;
};

// Thread-safe. `service`, `budget`, `registry`, `auth` and `limiter` must outlive it.
class DataPlane {
 public:
  // `auth` checks the token of every handshake and the role of every frame, `limiter` admits
  // every frame (docs/security.md).
  static absl::StatusOr<std::unique_ptr<DataPlane>> Start(
      const DataPlaneOptions& options, GrpcService* service, MemoryBudget* budget,
      prometheus::Registry* registry, const Authenticator* auth, CallLimiter* limiter);
  ~DataPlane();  // Stop()

  int port() const;
  // Stops accepting connections and reading requests; calls in flight go on and their
  // responses are sent. Idempotent.
  void Drain();
  // Drain(), waits until `deadline` for the calls in flight to be answered, then closes every
  // connection and waits until every call it started has finished (bounded once the
  // replicator is stopped: pushes waiting for backups fail). Idempotent.
  void Stop(absl::Time deadline = absl::InfinitePast());

  struct Impl;

 private:
  explicit DataPlane(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera

#endif  // TESSERA_SERVER_DATA_PLANE_H_
