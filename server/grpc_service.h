// Adapts ServerCore to the gRPC callback API and records request metrics.
#ifndef TESSERA_SERVER_GRPC_SERVICE_H_
#define TESSERA_SERVER_GRPC_SERVICE_H_

#include "proto/tessera.grpc.pb.h"
#include "server/metrics.h"
#include "server/server_core.h"

namespace tessera {

// Every method is registered "raw" (grpc::ByteBuffer in and out) so that this layer parses
// requests itself: a payload that is not a valid protobuf gets INVALID_ARGUMENT with a message
// (gRPC's own deserialization would answer a bare UNIMPLEMENTED), and responses can later be
// written without a protobuf copy.
using RawParameterServerService = v1::ParameterServer::WithRawCallbackMethod_CreateTable<
    v1::ParameterServer::WithRawCallbackMethod_DropTable<
        v1::ParameterServer::WithRawCallbackMethod_DescribeTable<
            v1::ParameterServer::WithRawCallbackMethod_ListTables<
                v1::ParameterServer::WithRawCallbackMethod_PullSparse<
                    v1::ParameterServer::WithRawCallbackMethod_PushSparse<
                        v1::ParameterServer::WithRawCallbackMethod_PullDense<
                            v1::ParameterServer::WithRawCallbackMethod_PushDense<
                                v1::ParameterServer::Service>>>>>>>>;

// Handlers run ServerCore inline on gRPC's callback threads: the work is CPU-bound and holds
// only vshard locks, never across I/O. Thread-safe. `core` and `metrics` must outlive it.
class GrpcService final : public RawParameterServerService {
 public:
  GrpcService(ServerCore* core, ServerMetrics* metrics) : core_(core), metrics_(metrics) {}

  using Reactor = grpc::ServerUnaryReactor;
  using Ctx = grpc::CallbackServerContext;
  using Bytes = grpc::ByteBuffer;

  Reactor* CreateTable(Ctx* ctx, const Bytes* req, Bytes* resp) override;
  Reactor* DropTable(Ctx* ctx, const Bytes* req, Bytes* resp) override;
  Reactor* DescribeTable(Ctx* ctx, const Bytes* req, Bytes* resp) override;
  Reactor* ListTables(Ctx* ctx, const Bytes* req, Bytes* resp) override;
  Reactor* PullSparse(Ctx* ctx, const Bytes* req, Bytes* resp) override;
  Reactor* PushSparse(Ctx* ctx, const Bytes* req, Bytes* resp) override;
  Reactor* PullDense(Ctx* ctx, const Bytes* req, Bytes* resp) override;
  Reactor* PushDense(Ctx* ctx, const Bytes* req, Bytes* resp) override;

 private:
  template <typename Req, typename Resp>
  Reactor* Handle(Method method, Ctx* ctx, const Bytes* request, Bytes* response,
                  absl::Status (ServerCore::*fn)(const Req&, Resp*));

  ServerCore* core_;
  ServerMetrics* metrics_;
};

}  // namespace tessera

#endif  // TESSERA_SERVER_GRPC_SERVICE_H_
