// The standard Prometheus process metrics (process_cpu_seconds_total,
// process_resident_memory_bytes, process_virtual_memory_bytes, process_open_fds,
// process_max_fds, process_start_time_seconds) plus process_threads, read from /proc/self when
// scraped. Every daemon registers one on its /metrics endpoint (docs/operations.md).
#ifndef TESSERA_COMMON_PROCESS_METRICS_H_
#define TESSERA_COMMON_PROCESS_METRICS_H_

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace prometheus {
class Exposer;
class Registry;
}  // namespace prometheus

namespace tessera {

class Authenticator;
class CallLimiter;

// How a daemon protects its /metrics (docs/security.md, "/metrics").
struct MetricsSecurity {
  // Both: HTTPS with this certificate (the daemon's own, PEM).
  std::string tls_cert_file;
  std::string tls_key_file;
  // Lines "USER PASSWORD": scrapers must send one of them (HTTP basic authentication; compared
  // in constant time). Empty: none.
  std::string basic_auth_file;
};

// A daemon's /metrics endpoint: prometheus-cpp's exposer, protected as MetricsSecurity says.
// Debian 12's civetweb cannot serve TLS with its OpenSSL 3 (its table of OpenSSL functions, filled
// when it loads libssl, has a null entry that a TLS request calls: the process crashes), so
// with TLS the exposer listens on a loopback port of its own and a front made here terminates
// TLS on the configured port and passes each request on. Thread-safe.
class MetricsServer {
 public:
  // Serves on host:port (0: a free port); the error names what failed (the bind, an unusable
  // file). REQUIRES: host is a name or an IPv4 address (no brackets).
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& host, int port,
                                                              const MetricsSecurity& security);
  ~MetricsServer();  // stops promptly (see StopExposer)

  prometheus::Exposer& exposer() { return *exposer_; }
  int port() const { return port_; }  // where scrapers connect

  struct TlsFront;

 private:
  MetricsServer() = default;
  std::string host_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::unique_ptr<TlsFront> front_;
  int port_ = -1;
};

// Counts `limiter`'s refusals (tessera_call_limit_refusals_total{limit}). Call before serving.
void ExportCallLimitMetrics(CallLimiter& limiter, prometheus::Registry& registry);

// Counts `auth`'s refusals (tessera_auth_refusals_total{method, code}) and reloads
// (tessera_auth_reloads_total{outcome}) in `registry` (docs/security.md). Call before serving;
// `registry` must outlive `auth`'s use.
void ExportAuthMetrics(Authenticator& auth, prometheus::Registry& registry);

// Thread-safe. A value that cannot be read (no /proc) is left out, not reported as 0.
class ProcessCollector : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override;
};

// Destroys `exposer` (bound to `host`) promptly. Debian's civetweb sees a stop request only when
// the poll on its listening socket returns, which an idle server's does every 2 s: a plain
// reset() takes up to 2 s (every daemon's shutdown, and every test cluster's). Connections to
// the socket wake it; this makes them (at most for those 2 s) until the exposer is gone.
void StopExposer(std::unique_ptr<prometheus::Exposer>& exposer, const std::string& host);

}  // namespace tessera

#endif  // TESSERA_COMMON_PROCESS_METRICS_H_
