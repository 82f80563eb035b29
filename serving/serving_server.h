// tessera-serving's daemon (docs/online_serving.md): the Serving gRPC service over a store and
// a source, health, reflection, /metrics, TLS and tokens as every Tessera daemon has them.
#ifndef TESSERA_SERVING_SERVING_SERVER_H_
#define TESSERA_SERVING_SERVING_SERVER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/process_metrics.h"
#include "common/tls.h"

namespace tessera::serving {

struct ServingServerOptions {
  std::string address = "127.0.0.1";
  int port = 0;
  std::string metrics_address = "127.0.0.1";
  int metrics_port = 0;  // -1: none
  MetricsSecurity metrics_security;
  TlsFiles tls;
  std::string auth_token_file;
  int max_request_bytes = 64 << 20;
  // Exactly one source.
  std::string checkpoint_dir;
  int poll_ms = 1000;
  std::vector<std::string> upstream;
  int upstream_timeout_ms = 5000;
  size_t keep_versions = 3;
  int apply_nice = 10;  // the applying thread's nice value
  uint64_t max_memory_bytes = 0;
  uint64_t max_response_bytes = uint64_t{64} << 20;  // one lookup's answer
};

class ServingServer {
 public:
  static absl::StatusOr<std::unique_ptr<ServingServer>> Start(const ServingServerOptions& options);
  ~ServingServer();
  int port() const;
  int metrics_port() const;
  absl::Status ReloadCredentials();
  void Shutdown();

  struct Impl;

 private:
  explicit ServingServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera::serving

#endif  // TESSERA_SERVING_SERVING_SERVER_H_
