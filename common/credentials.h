// What a process presents on Tessera's connections (docs/security.md): part of ClientOptions and
// of the admin functions' arguments. No gRPC types.
#ifndef TESSERA_COMMON_CREDENTIALS_H_
#define TESSERA_COMMON_CREDENTIALS_H_

#include <string>

namespace tessera {

struct Credentials {
  // Sent as "authorization: Bearer TOKEN" on every call and in the data plane's handshake, to
  // daemons started with --auth_token_file. Empty (default): none.
  std::string auth_token;
  // TLS: the PEM file of the CA that signed the daemons' certificates; set, every connection
  // is TLS and the daemons' certificates are verified against it (and their names against the
  // addresses dialled). Empty (default): plaintext.
  std::string tls_ca_file;
  // The client's own certificate (chain) and key, PEM, for daemons that require mutual TLS
  // (started with --tls_ca_file). Both or neither.
  std::string tls_cert_file;
  std::string tls_key_file;
  // Reading the daemons' /metrics (`tessera status`): over HTTPS (verified with tls_ca_file),
  // and "USER:PASSWORD" for basic authentication (empty: none). docs/security.md, "/metrics".
  bool metrics_tls = false;
  std::string metrics_basic_auth;
};

}  // namespace tessera

#endif  // TESSERA_COMMON_CREDENTIALS_H_
