#include "server/grpc_service.h"

#include <string>

#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/wire.h"

namespace tessera {
namespace {

// Keys (or elements) and bulk bytes a request moves, for metrics.
struct Volume {
  uint64_t keys = 0;
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
};

template <typename Req, typename Resp>
Volume VolumeOf(const Req&, const Resp&) {
  return {};
}
Volume VolumeOf(const v1::PullSparseRequest& req, const v1::PullSparseResponse& resp) {
  return {req.num_keys(), req.keys().size(), resp.values().size()};
}
Volume VolumeOf(const v1::PushSparseRequest& req, const v1::PushResponse&) {
  return {req.num_keys(), req.keys().size() + req.values().size(), 0};
}
Volume VolumeOf(const v1::PullDenseRequest& req, const v1::PullDenseResponse& resp) {
  return {req.count(), 0, resp.values().size()};
}
Volume VolumeOf(const v1::PushDenseRequest& req, const v1::PushResponse&) {
  return {req.count(), req.values().size(), 0};
}

}  // namespace

template <typename Req, typename Resp>
grpc::ServerUnaryReactor* GrpcService::Handle(Method method, grpc::CallbackServerContext* ctx,
                                              const Req* req, Resp* resp,
                                              absl::Status (ServerCore::*fn)(const Req&, Resp*)) {
  const absl::Time start = absl::Now();
  metrics_->AddInFlight(1);
  const absl::Status status = (core_->*fn)(*req, resp);
  if (!status.ok()) {
    ctx->AddTrailingMetadata(kEpochMetadataKey, std::to_string(core_->shard_map_epoch()));
  }
  const Volume v = VolumeOf(*req, *resp);
  const grpc::Status grpc_status = ToGrpcStatus(status);
  metrics_->Record(method, grpc_status.error_code(), absl::ToDoubleSeconds(absl::Now() - start),
                   v.keys, v.bytes_in, v.bytes_out);
  metrics_->AddInFlight(-1);
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(grpc_status);
  return reactor;
}

grpc::ServerUnaryReactor* GrpcService::CreateTable(grpc::CallbackServerContext* ctx,
                                                   const v1::CreateTableRequest* req,
                                                   v1::CreateTableResponse* resp) {
  return Handle(Method::kCreateTable, ctx, req, resp, &ServerCore::CreateTable);
}
grpc::ServerUnaryReactor* GrpcService::DropTable(grpc::CallbackServerContext* ctx,
                                                 const v1::DropTableRequest* req,
                                                 v1::DropTableResponse* resp) {
  return Handle(Method::kDropTable, ctx, req, resp, &ServerCore::DropTable);
}
grpc::ServerUnaryReactor* GrpcService::DescribeTable(grpc::CallbackServerContext* ctx,
                                                     const v1::DescribeTableRequest* req,
                                                     v1::DescribeTableResponse* resp) {
  return Handle(Method::kDescribeTable, ctx, req, resp, &ServerCore::DescribeTable);
}
grpc::ServerUnaryReactor* GrpcService::ListTables(grpc::CallbackServerContext* ctx,
                                                  const v1::ListTablesRequest* req,
                                                  v1::ListTablesResponse* resp) {
  return Handle(Method::kListTables, ctx, req, resp, &ServerCore::ListTables);
}
grpc::ServerUnaryReactor* GrpcService::PullSparse(grpc::CallbackServerContext* ctx,
                                                  const v1::PullSparseRequest* req,
                                                  v1::PullSparseResponse* resp) {
  return Handle(Method::kPullSparse, ctx, req, resp, &ServerCore::PullSparse);
}
grpc::ServerUnaryReactor* GrpcService::PushSparse(grpc::CallbackServerContext* ctx,
                                                  const v1::PushSparseRequest* req,
                                                  v1::PushResponse* resp) {
  return Handle(Method::kPushSparse, ctx, req, resp, &ServerCore::PushSparse);
}
grpc::ServerUnaryReactor* GrpcService::PullDense(grpc::CallbackServerContext* ctx,
                                                 const v1::PullDenseRequest* req,
                                                 v1::PullDenseResponse* resp) {
  return Handle(Method::kPullDense, ctx, req, resp, &ServerCore::PullDense);
}
grpc::ServerUnaryReactor* GrpcService::PushDense(grpc::CallbackServerContext* ctx,
                                                 const v1::PushDenseRequest* req,
                                                 v1::PushResponse* resp) {
  return Handle(Method::kPushDense, ctx, req, resp, &ServerCore::PushDense);
}

}  // namespace tessera
