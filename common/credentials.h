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
};

}  // namespace tessera

#endif  // TESSERA_COMMON_CREDENTIALS_H_
