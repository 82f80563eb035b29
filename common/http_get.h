// A minimal HTTP/1.0 GET, for reading /metrics and Prometheus' API (the CLI, the admin client's
// status and the tests).
#ifndef TESSERA_COMMON_HTTP_GET_H_
#define TESSERA_COMMON_HTTP_GET_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tessera {

// Sends GET `path` to 127.0.0.1:port over HTTP/1.0 and returns the body (status 200 only).
absl::StatusOr<std::string> HttpGet(int port, const std::string& path,
                                    absl::Duration timeout = absl::Seconds(10));
// The same to host:port (an IPv4 address or a name).
absl::StatusOr<std::string> HttpGet(const std::string& host, int port, const std::string& path,
                                    absl::Duration timeout = absl::Seconds(10));

// How to reach a protected /metrics (docs/security.md, "/metrics").
struct HttpGetSecurity {
  std::string tls_ca_file;  // set: HTTPS, the server's certificate verified with this CA
  std::string basic_auth;   // "USER:PASSWORD" for basic authentication; empty: none
};
absl::StatusOr<std::string> HttpGet(const std::string& host, int port, const std::string& path,
                                    absl::Duration timeout, const HttpGetSecurity& security);
}  // namespace tessera

#endif  // TESSERA_COMMON_HTTP_GET_H_
