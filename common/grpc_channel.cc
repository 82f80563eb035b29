#include "common/grpc_channel.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/client_interceptor.h>

#include <vector>

#include "common/tls.h"

namespace tessera {
namespace {

namespace ex = grpc::experimental;

// Adds the token to every call's initial metadata.
class TokenInterceptor final : public ex::Interceptor {
 public:
  explicit TokenInterceptor(const TokenSource* source) : source_(source) {}
  void Intercept(ex::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            ex::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      const std::string token = (*source_)();
      if (!token.empty())
        methods->GetSendInitialMetadata()->insert({"authorization", "Bearer " + token});
    }
    methods->Proceed();
  }

 private:
  const TokenSource* source_;  // (owned by the factory, which the channel keeps)
};

class TokenInterceptorFactory final : public ex::ClientInterceptorFactoryInterface {
 public:
  explicit TokenInterceptorFactory(TokenSource source) : source_(std::move(source)) {}
  ex::Interceptor* CreateClientInterceptor(ex::ClientRpcInfo*) override {
    return new TokenInterceptor(&source_);
  }

 private:
  const TokenSource source_;
};

}  // namespace

absl::Status CheckCredentials(const Credentials& credentials) {
  return ClientChannelCredentials(credentials).status();
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address,
                                           const Credentials& credentials,
                                           const grpc::ChannelArguments& args,
                                           TokenSource token_source,
                                           std::shared_ptr<grpc::ChannelCredentials> transport) {
  if (token_source == nullptr && !credentials.auth_token.empty()) {
    token_source = [token = credentials.auth_token] { return token; };
  }
  std::shared_ptr<grpc::ChannelCredentials> channel_credentials = std::move(transport);
  if (channel_credentials == nullptr) {
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> c =
        ClientChannelCredentials(credentials);
    // (unusable files: a channel to nowhere, so that every call fails naming them)
    channel_credentials = c.ok() ? *c : grpc::InsecureChannelCredentials();
    if (!c.ok()) {
      return grpc::CreateChannel(std::string("unix:/nonexistent/tessera-tls-files-unusable"),
                                 grpc::InsecureChannelCredentials());
    }
  }
  if (token_source == nullptr) {
    return grpc::CreateCustomChannel(address, channel_credentials, args);
  }
  std::vector<std::unique_ptr<ex::ClientInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<TokenInterceptorFactory>(std::move(token_source)));
  return ex::CreateCustomChannelWithInterceptors(address, channel_credentials, args,
                                                 std::move(interceptors));
}

}  // namespace tessera
