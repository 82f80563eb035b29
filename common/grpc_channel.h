// Channels to Tessera's daemons, presenting a process's credentials (docs/security.md). Every
// channel a Tessera process opens is made here.
#ifndef TESSERA_COMMON_GRPC_CHANNEL_H_
#define TESSERA_COMMON_GRPC_CHANNEL_H_

#include <grpcpp/channel.h>
#include <grpcpp/support/channel_arguments.h>

#include <functional>
#include <memory>
#include <string>

#include "common/credentials.h"

namespace tessera {

// Asked for the token on every call (a daemon's reloadable token); empty: none.
using TokenSource = std::function<std::string()>;

// A channel to `address` that sends credentials.auth_token (or, when set, what token_source
// answers) as "authorization: Bearer TOKEN" on every call.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address,
                                           const Credentials& credentials,
                                           const grpc::ChannelArguments& args = {},
                                           TokenSource token_source = nullptr);

}  // namespace tessera

#endif  // TESSERA_COMMON_GRPC_CHANNEL_H_
