// A throwaway certificate authority for clusters on this machine (`tessera local --secure`, the
// tests): made with Debian's openssl command (docs/security.md, "TLS").
#ifndef TESSERA_TESTING_LOCAL_PKI_H_
#define TESSERA_TESTING_LOCAL_PKI_H_

#include <string>

#include "absl/status/statusor.h"

namespace tessera {

struct LocalPki {
  std::string ca_file;    // the CA's certificate
  std::string cert_file;  // one certificate for every daemon and client here (server and
                          // client use; names 127.0.0.1, ::1 and localhost), signed by the CA
  std::string key_file;   // its key (mode 0600)
};

// Makes a fresh EC P-256 CA named `name` (unless `dir` holds one already: then it stays) and a
// new certificate from it in `dir` (which must exist), valid for two days. Errors name the
// openssl step that failed (its output is in dir/openssl.log).
absl::StatusOr<LocalPki> MakeLocalPki(const std::string& dir, const std::string& name = "tessera");

}  // namespace tessera

#endif  // TESSERA_TESTING_LOCAL_PKI_H_
