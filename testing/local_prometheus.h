// Debian's Prometheus as a child process on 127.0.0.1, scraping given targets: used by
// `tessera local --prometheus` and the metrics integration test (tests/prometheus_test.cc).
#ifndef TESSERA_TESTING_LOCAL_PROMETHEUS_H_
#define TESSERA_TESTING_LOCAL_PROMETHEUS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tessera {

// A loopback TCP port nobody listens on now (bound, then released for a child to take).
absl::StatusOr<int> FreeLoopbackPort();

class LocalPrometheus {
 public:
  // (job name, host:port targets) pairs.
  using Targets = std::vector<std::pair<std::string, std::vector<std::string>>>;
  // How every target is scraped: HTTPS verified with ca_file (empty: HTTP), and basic
  // authentication (empty username: none). docs/security.md, "/metrics".
  struct Scrape {
    std::string ca_file;
    std::string username;
    std::string password;
  };

  // Starts /usr/bin/prometheus with its configuration and data in `dir`, scraping `targets`
  // every `interval`, with `rule_files` loaded (may be empty). FAILED_PRECONDITION when
  // Prometheus is not installed. It dies with this process.
  static absl::StatusOr<std::unique_ptr<LocalPrometheus>> Start(
      const std::string& dir, const Targets& targets, absl::Duration interval,
      const std::vector<std::string>& rule_files = {}, const Scrape& scrape = {});
  ~LocalPrometheus();  // SIGTERM, then SIGKILL after 10 s

  int port() const { return port_; }
  std::string url() const;

  // The first result's value of an instant query; NaN when there is none.
  double Query(const std::string& promql) const;
  // Polls `promql` until it equals `want` (bounded); returns the last value seen.
  double AwaitValue(const std::string& promql, double want, absl::Duration timeout) const;

 private:
  LocalPrometheus() = default;
  int port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace tessera

#endif  // TESSERA_TESTING_LOCAL_PROMETHEUS_H_
