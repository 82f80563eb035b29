// Adapts ServerCore to the gRPC callback API and records request metrics.
#ifndef TESSERA_SERVER_GRPC_SERVICE_H_
#define TESSERA_SERVER_GRPC_SERVICE_H_

#include "proto/tessera.grpc.pb.h"
#include "server/metrics.h"
#include "server/server_core.h"

namespace tessera {

// Handlers run ServerCore inline on gRPC's callback threads: the work is CPU-bound and holds
// only vshard locks, never across I/O. Thread-safe. `core` and `metrics` must outlive it.
class GrpcService final : public v1::ParameterServer::CallbackService {
 public:
  GrpcService(ServerCore* core, ServerMetrics* metrics) : core_(core), metrics_(metrics) {}

  grpc::ServerUnaryReactor* CreateTable(grpc::CallbackServerContext* ctx,
                                        const v1::CreateTableRequest* req,
                                        v1::CreateTableResponse* resp) override;
  grpc::ServerUnaryReactor* DropTable(grpc::CallbackServerContext* ctx,
                                      const v1::DropTableRequest* req,
                                      v1::DropTableResponse* resp) override;
  grpc::ServerUnaryReactor* DescribeTable(grpc::CallbackServerContext* ctx,
                                          const v1::DescribeTableRequest* req,
                                          v1::DescribeTableResponse* resp) override;
  grpc::ServerUnaryReactor* ListTables(grpc::CallbackServerContext* ctx,
                                       const v1::ListTablesRequest* req,
                                       v1::ListTablesResponse* resp) override;
  grpc::ServerUnaryReactor* PullSparse(grpc::CallbackServerContext* ctx,
                                       const v1::PullSparseRequest* req,
                                       v1::PullSparseResponse* resp) override;
  grpc::ServerUnaryReactor* PushSparse(grpc::CallbackServerContext* ctx,
                                       const v1::PushSparseRequest* req,
                                       v1::PushResponse* resp) override;
  grpc::ServerUnaryReactor* PullDense(grpc::CallbackServerContext* ctx,
                                      const v1::PullDenseRequest* req,
                                      v1::PullDenseResponse* resp) override;
  grpc::ServerUnaryReactor* PushDense(grpc::CallbackServerContext* ctx,
                                      const v1::PushDenseRequest* req,
                                      v1::PushResponse* resp) override;

 private:
  template <typename Req, typename Resp>
  grpc::ServerUnaryReactor* Handle(Method method, grpc::CallbackServerContext* ctx,
                                   const Req* req, Resp* resp,
                                   absl::Status (ServerCore::*fn)(const Req&, Resp*));

  ServerCore* core_;
  ServerMetrics* metrics_;
};

}  // namespace tessera

#endif  // TESSERA_SERVER_GRPC_SERVICE_H_
