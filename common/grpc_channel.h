// Channels to Tessera's daemons, presenting a process's credentials (docs/security.md). Every
// channel a Tessera process opens is made here.
#ifndef TESSERA_COMMON_GRPC_CHANNEL_H_
#define TESSERA_COMMON_GRPC_CHANNEL_H_

#include <grpcpp/channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "common/credentials.h"

namespace tessera {

// Asked for the token on every call (a daemon's reloadable token); empty: none.
using TokenSource = std::function<std::string()>;

// A channel to `address` that sends credentials.auth_token (or, when set, what token_source
// answers) as "authorization: Bearer TOKEN" on every call, over TLS when credentials name a CA
// (or over `transport`, when given: a daemon's own reloadable TLS credentials). TLS files that
// cannot be used make a channel whose every call fails UNAVAILABLE naming them; check them
// first with CheckCredentials to report the error at once.
std::shared_ptr<grpc::Channel> MakeChannel(
    const std::string& address, const Credentials& credentials,
    const grpc::ChannelArguments& args = {}, TokenSource token_source = nullptr,
    std::shared_ptr<grpc::ChannelCredentials> transport = nullptr);

// Whether `credentials`' TLS files can be used (INVALID_ARGUMENT naming the file otherwise).
absl::Status CheckCredentials(const Credentials& credentials);

}  // namespace tessera

#endif  // TESSERA_COMMON_GRPC_CHANNEL_H_
