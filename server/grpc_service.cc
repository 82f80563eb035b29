#include "server/grpc_service.h"

#include <grpcpp/support/proto_buffer_reader.h>

#include <memory>
#include <new>
#include <string>
#include <thread>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/bulk_codec.h"
#include "common/data_frame.h"
#include "common/grpc_status.h"
#include "common/wire.h"
#include "server/grpc_wire.h"
#include "server/replicator.h"

namespace tessera {
namespace {

// Keys (or elements) and bulk bytes a request moves, for metrics.
struct Volume {
  uint64_t keys = 0;
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
};

// Bytes of the response a request asks for, as it declares them (pulls); 0 for the rest.
template <typename Req>
uint64_t ResponseBytesOf(const Req&) {
  return 0;
}
uint64_t ResponseBytesOf(const v1::PullSparseRequest& req) {
  return std::min<uint64_t>(req.num_keys(), uint64_t{1} << 40) * req.dim() * sizeof(float);
}
uint64_t ResponseBytesOf(const v1::PullDenseRequest& req) {
  return std::min<uint64_t>(req.count(), uint64_t{1} << 40) * sizeof(float);
}

// Working memory of a sparse call beyond its parsed copy, per key: the vshard order (4 bytes)
// and its runs (up to 12), an aligned copy of the keys (8) and the repeated-key table (below 4
// slots of 9 bytes); plus the table's minimum. An upper bound, reserved with the request.
constexpr uint64_t kScratchBytesPerKey = 64;
constexpr uint64_t kScratchBytesFixed = 4096;
template <typename Req>
uint64_t ScratchBytesOf(const Req& req) {
  if constexpr (requires { req.keys(); }) {  // (the sparse requests)
    return kScratchBytesFixed + req.keys().size() / sizeof(uint64_t) * kScratchBytesPerKey;
  } else {
    return 0;
  }
}

template <typename Req, typename Resp>
Volume VolumeOf(const Req&, const Resp&) {
  return {};
}
Volume VolumeOf(const v1::PullSparseRequest& req, const v1::PullSparseResponse&) {
  return {req.num_keys(), req.keys().size(), 0};  // (bytes out: the BulkBuffer's)
}
Volume VolumeOf(const v1::PushSparseRequest& req, const v1::PushResponse&) {
  return {req.num_keys(), req.keys().size() + req.values().size(), 0};
}
Volume VolumeOf(const v1::PullDenseRequest& req, const v1::PullDenseResponse&) {
  return {req.count(), 0, 0};  // (bytes out: the BulkBuffer's)
}
Volume VolumeOf(const v1::PushDenseRequest& req, const v1::PushResponse&) {
  return {req.count(), req.values().size(), 0};
}

// Parses a request; a payload that is not a valid message is the client's error.
template <typename Req>
absl::Status Parse(const grpc::ByteBuffer& bytes, Req* req) {
  grpc::ByteBuffer copy(bytes);  // shares the slices
  grpc::ProtoBufferReader reader(&copy);
  if (!reader.status().ok() || !req->ParseFromZeroCopyStream(&reader)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("malformed %s (%u bytes): not a valid protobuf message",
                        Req::descriptor()->full_name(), bytes.Length()));
  }
  return absl::OkStatus();
}

// Parses a push, leaving its keys and values in the request's bytes where each lies within one
// slice (always on the data plane): *wire points at them (docs/data_plane.md, "Zero copy").
template <typename Req>
absl::Status ParseChange(const grpc::ByteBuffer& bytes, Req* req, GrpcWire*) {
  return Parse(bytes, req);
}
template <typename Req>
requires requires(Req r) { r.id(); }  // (the pushes)
absl::Status ParseChange(const grpc::ByteBuffer& bytes, Req* req, GrpcWire* wire) {
  constexpr bool kSparse = requires { req->keys(); };
  BulkView views[2];
  views[0].field_number = Req::kValuesFieldNumber;
  if constexpr (kSparse) views[1].field_number = Req::kKeysFieldNumber;
  if (absl::Status s = DecodeWithBulkViews(bytes, req, views, kSparse ? 2 : 1); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("malformed %s (%u bytes): not a valid protobuf message (%s)",
                        Req::descriptor()->full_name(), bytes.Length(), s.message()));
  }
  WireBytes::Field* fields[2] = {&wire->values, &wire->keys};
  for (int i = 0; i < 2; ++i) {
    if (views[i].field_number == 0) continue;
    if (!views[i].spill.empty()) {
      wire->spill[i] = std::move(views[i].spill);
      views[i].data = wire->spill[i].data();
    }
    *fields[i] = {views[i].data, views[i].size};
  }
  return absl::OkStatus();
}

}  // namespace

GrpcService::~GrpcService() {
  absl::MutexLock lock(&offload_mu_);
  offload_mu_.Await(absl::Condition(
      +[](int* n) { return *n == 0; }, &offloaded_));
}

bool GrpcService::Refused(Ctx* ctx, Reactor* reactor, const char* method,
                          std::shared_ptr<CallLimiter::Ticket>* ticket) {
  if (auth_->enabled()) {
    const grpc::Status s = auth_->Check(
        *ctx, absl::StrCat("/", v1::ParameterServer::service_full_name(), "/", method));
    if (!s.ok()) {
      GrpcSink(ctx, reactor)(s, core_->shard_map_epoch(), false, 0);
      return true;
    }
  }
  // The call limits (docs/security.md, "Abuse limits"), per token and per connection.
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  const absl::string_view token =
      it == md.end() ? absl::string_view()
                     : BearerToken(absl::string_view(it->second.data(), it->second.size()));
  int64_t retry_after_ms = 0;
  absl::StatusOr<std::unique_ptr<CallLimiter::Ticket>> admitted =
      limiter_->Admit(token, ctx->peer(), &retry_after_ms);
  if (!admitted.ok()) {
    ctx->AddTrailingMetadata(kRetryAfterMetadataKey, std::to_string(retry_after_ms));
    GrpcSink(ctx, reactor)(ToGrpcStatus(admitted.status()), core_->shard_map_epoch(), false, 0);
    return true;
  }
  *ticket = *std::move(admitted);
  return false;
}

GrpcService::Sink GrpcService::GrpcSink(Ctx* ctx, Reactor* reactor,
                                        std::shared_ptr<CallLimiter::Ticket> ticket) {
  return [ctx, reactor, ticket](const grpc::Status& status, uint64_t epoch, bool reroute,
                                uint32_t retry_after_ms) {
    if (!status.ok()) {
      ctx->AddTrailingMetadata(kEpochMetadataKey, std::to_string(epoch));
      if (reroute) ctx->AddTrailingMetadata(kRerouteMetadataKey, "1");
      if (retry_after_ms > 0) {
        ctx->AddTrailingMetadata(kRetryAfterMetadataKey, std::to_string(retry_after_ms));
      }
    }
    reactor->Finish(status);
  };
}

template <typename Req, typename Resp, typename Fn>
GrpcService::Reactor* GrpcService::Handle(Method method, Ctx* ctx, const Bytes* request,
                                          Bytes* response, Fn fn) {
  Reactor* reactor = ctx->DefaultReactor();  // constructs the reactor: call it once per call
  std::shared_ptr<CallLimiter::Ticket> ticket;
  if (Refused(ctx, reactor, MethodName(method), &ticket)) return reactor;
  Run<Req, Resp>(method, request, response, fn, GrpcSink(ctx, reactor, std::move(ticket)));
  return reactor;
}

template <typename Req, typename Resp, typename Fn>
GrpcService::Reactor* GrpcService::Offload(Method method, Ctx* ctx, const Bytes* request,
                                           Bytes* response, Fn fn) {
  Reactor* reactor = ctx->DefaultReactor();  // constructs the reactor: call it once per call
  std::shared_ptr<CallLimiter::Ticket> ticket;
  if (Refused(ctx, reactor, MethodName(method), &ticket)) return reactor;
  {
    absl::MutexLock lock(&offload_mu_);
    ++offloaded_;
  }
  std::thread([this, method, request, response, fn,
               sink = GrpcSink(ctx, reactor, std::move(ticket))] {
    Run<Req, Resp>(method, request, response, fn, sink);
    absl::MutexLock lock(&offload_mu_);
    --offloaded_;  // the last use of `this`
  }).detach();
  return reactor;
}

template <typename Req, typename Resp, typename Fn>
void GrpcService::Run(Method method, const Bytes* request, Bytes* response, Fn fn, Sink sink) {
  const absl::Time start = absl::Now();
  metrics_->AddInFlight(1);
  auto req = std::make_shared<Req>();
  auto resp = std::make_shared<Resp>();
  constexpr bool kPull = requires { resp->mutable_values(); };
  // A change's bytes travel to the log and the backups as they came (GrpcWire).
  constexpr bool kChange = std::is_invocable_v<Fn, std::shared_ptr<const Req>, Resp*,
                                               ServerCore::Done, std::shared_ptr<GrpcWire>>;
  std::shared_ptr<GrpcWire> wire;
  if constexpr (kChange) wire = std::make_shared<GrpcWire>(*request);
  // A pull's values, written in place by the core and sent without a copy.
  std::shared_ptr<BulkBuffer> values;
  if constexpr (kPull) values = std::make_shared<BulkBuffer>();
  const size_t request_bytes = request->Length();
  // What the call makes the server hold, reserved before it is allocated: the parsed copy of
  // the request, then the response it asks for (docs/state_machine.md, "Resources").
  MemoryBudget& budget = core_->budget();
  uint64_t held = request_bytes;
  absl::Status status =
      budget.Reserve(request_bytes, absl::StrFormat("a request of %u bytes", request_bytes));
  if (!status.ok()) held = 0;
  if (status.ok()) {
    if constexpr (kChange) {
      status = ParseChange(*request, req.get(), wire.get());
    } else {
      status = Parse(*request, req.get());
    }
  }
  if (status.ok()) {
    const uint64_t out = std::min(ResponseBytesOf(*req), core_->max_response_bytes());
    status = budget.Reserve(out, absl::StrFormat("a response of %u bytes", out));
    if (status.ok()) held += out;
  }
  if (status.ok()) {
    // (Keys are bounded by the request's bytes, which are bounded by --max_request_bytes.)
    const uint64_t scratch = ScratchBytesOf(*req);
    status = budget.Reserve(scratch, absl::StrFormat("working memory of %u bytes for a request "
                                                     "of %u bytes",
                                                     scratch, request_bytes));
    if (status.ok()) held += scratch;
  }
  auto finish = [this, method, response, sink, start, req, resp, values, request_bytes, held,
                 wire](absl::Status status) {
    Volume v = status.ok() ? VolumeOf(*req, *resp) : Volume{0, request_bytes, 0};
    if (wire != nullptr && status.ok()) {
      v.bytes_in += wire->keys.size + wire->values.size;  // (not in the parsed message)
    }
    if constexpr (kPull) {
      if (status.ok()) v.bytes_out = values->size;  // (written in place, not in resp)
    }
    if (status.ok()) {
      if constexpr (kPull) {
        // Pull responses: the values travel as a slice that owns them, without a protobuf copy.
        *response =
            EncodeWithBulk(*resp, {OwnedBulk(Resp::kValuesFieldNumber, std::move(*values))});
      } else {
        bool own = false;
        if (grpc::Status s = grpc::SerializationTraits<Resp>::Serialize(*resp, response, &own);
            !s.ok()) {
          status = absl::InternalError("cannot serialize the response: " + s.error_message());
        }
      }
    }
    const bool reroute = !status.ok() && ServerCore::IsReroute(status);
    const grpc::Status grpc_status = ToGrpcStatus(status);
    metrics_->Record(method, grpc_status.error_code(), absl::ToDoubleSeconds(absl::Now() - start),
                     status.ok() ? v.keys : 0, v.bytes_in, status.ok() ? v.bytes_out : 0);
    metrics_->AddInFlight(-1);
    sink(grpc_status, grpc_status.ok() ? 0 : core_->shard_map_epoch(), reroute,
         status.ok() ? 0 : ServerCore::RetryAfterMs(status));
    core_->budget().Release(held);
  };
  if (!status.ok()) return finish(std::move(status));
  ServerCore::Done done = std::move(finish);
  if constexpr (requires { resp->lsn(); }) {
    // A change is acknowledged once every counted backup has it (docs/replication.md).
    if (replicator_ != nullptr) {
      done = [this, resp, finish = std::move(done)](absl::Status st) {
        if (!st.ok()) return finish(std::move(st));
        replicator_->WhenReplicated(resp->lsn(), finish);
      };
    }
  }
  if constexpr (kPull) {
    fn(std::shared_ptr<const Req>(req), resp.get(), std::move(done), values.get());
  } else if constexpr (kChange) {
    fn(std::shared_ptr<const Req>(req), resp.get(), std::move(done), std::move(wire));
  } else {
    fn(std::shared_ptr<const Req>(req), resp.get(), std::move(done));
  }
}

// Reads answer inline; memory the kernel refuses is the caller's RESOURCE_EXHAUSTED. Pulls
// get one more argument, the BulkBuffer their values are written into (Run passes it).
#define TESSERA_READ_FN(Name, ReqT, RespT)                                               \
  [this](std::shared_ptr<const ReqT> r, RespT* p, ServerCore::Done done, auto*... out) { \
    absl::Status st;                                                                     \
    try {                                                                                \
      st = core_->Name(*r, p, out...);                                                   \
    } catch (const std::bad_alloc&) {                                                    \
      st = absl::ResourceExhaustedError("out of memory answering " #Name);               \
    }                                                                                    \
    done(std::move(st));                                                                 \
  }
// Changes hand the request and its bytes to the core, which sequences, logs and applies them.
#define TESSERA_CHANGE_FN(Name, ReqT, RespT)                             \
  [this](std::shared_ptr<const ReqT> r, RespT* p, ServerCore::Done done, \
         std::shared_ptr<GrpcWire> wire) {                               \
    core_->Name(std::move(r), p, std::move(wire), std::move(done));      \
  }
#define TESSERA_RAW_METHOD(Name, ReqT, RespT)                                        \
  GrpcService::Reactor* GrpcService::Name(Ctx* ctx, const Bytes* req, Bytes* resp) { \
    return Handle<ReqT, RespT>(Method::k##Name, ctx, req, resp,                      \
                               TESSERA_READ_FN(Name, ReqT, RespT));                  \
  }
#define TESSERA_RAW_CHANGE(Name, ReqT, RespT)                                        \
  GrpcService::Reactor* GrpcService::Name(Ctx* ctx, const Bytes* req, Bytes* resp) { \
    return Handle<ReqT, RespT>(Method::k##Name, ctx, req, resp,                      \
                               TESSERA_CHANGE_FN(Name, ReqT, RespT));                \
  }

TESSERA_RAW_CHANGE(CreateTable, v1::CreateTableRequest, v1::CreateTableResponse)
TESSERA_RAW_CHANGE(DropTable, v1::DropTableRequest, v1::DropTableResponse)
TESSERA_RAW_METHOD(DescribeTable, v1::DescribeTableRequest, v1::DescribeTableResponse)
TESSERA_RAW_METHOD(ListTables, v1::ListTablesRequest, v1::ListTablesResponse)
TESSERA_RAW_METHOD(PullSparse, v1::PullSparseRequest, v1::PullSparseResponse)
TESSERA_RAW_CHANGE(PushSparse, v1::PushSparseRequest, v1::PushResponse)
TESSERA_RAW_METHOD(PullDense, v1::PullDenseRequest, v1::PullDenseResponse)
TESSERA_RAW_CHANGE(PushDense, v1::PushDenseRequest, v1::PushResponse)
TESSERA_RAW_CHANGE(ApplyStep, v1::ApplyStepRequest, v1::ApplyStepResponse)
TESSERA_RAW_CHANGE(RemoveRows, v1::RemoveRowsRequest, v1::RemoveRowsResponse)
TESSERA_RAW_METHOD(GetCheckpointState, v1::GetCheckpointStateRequest,
                   v1::GetCheckpointStateResponse)

GrpcService::Reactor* GrpcService::WriteCheckpoint(Ctx* ctx, const Bytes* req, Bytes* resp) {
  return Offload<v1::WriteCheckpointRequest, v1::WriteCheckpointResponse>(
      Method::kWriteCheckpoint, ctx, req, resp,
      [this](std::shared_ptr<const v1::WriteCheckpointRequest> r, v1::WriteCheckpointResponse* p,
             ServerCore::Done done) { done(core_->WriteCheckpoint(*r, p)); });
}

GrpcService::Reactor* GrpcService::RestoreCheckpoint(Ctx* ctx, const Bytes* req, Bytes* resp) {
  return Offload<v1::RestoreCheckpointRequest, v1::RestoreCheckpointResponse>(
      Method::kRestoreCheckpoint, ctx, req, resp,
      [this](std::shared_ptr<const v1::RestoreCheckpointRequest> r,
             v1::RestoreCheckpointResponse* p,
             ServerCore::Done done) { done(core_->RestoreCheckpoint(*r, p)); });
}

void GrpcService::RunBulk(Method method, const Bytes* req, Bytes* resp, Sink sink) {
  switch (method) {
    case Method::kPullSparse:
      return Run<v1::PullSparseRequest, v1::PullSparseResponse>(
          method, req, resp,
          TESSERA_READ_FN(PullSparse, v1::PullSparseRequest, v1::PullSparseResponse),
          std::move(sink));
    case Method::kPushSparse:
      return Run<v1::PushSparseRequest, v1::PushResponse>(
          method, req, resp, TESSERA_CHANGE_FN(PushSparse, v1::PushSparseRequest, v1::PushResponse),
          std::move(sink));
    case Method::kPullDense:
      return Run<v1::PullDenseRequest, v1::PullDenseResponse>(
          method, req, resp,
          TESSERA_READ_FN(PullDense, v1::PullDenseRequest, v1::PullDenseResponse), std::move(sink));
    case Method::kPushDense:
      return Run<v1::PushDenseRequest, v1::PushResponse>(
          method, req, resp, TESSERA_CHANGE_FN(PushDense, v1::PushDenseRequest, v1::PushResponse),
          std::move(sink));
    default:
      return sink(grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                               absl::StrCat(MethodName(method), " is not a bulk call")),
                  core_->shard_map_epoch(), false, 0);
  }
}

GrpcService::Reactor* GrpcService::GetDataPlane(Ctx* ctx, const Bytes* req, Bytes* resp) {
  Reactor* reactor = ctx->DefaultReactor();
  std::shared_ptr<CallLimiter::Ticket> ticket;  // (released when this returns)
  if (Refused(ctx, reactor, "GetDataPlane", &ticket)) return reactor;
  v1::GetDataPlaneRequest request;
  if (!Parse(*req, &request).ok()) {
    reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                 "malformed tessera.v1.GetDataPlaneRequest"));
    return reactor;
  }
  v1::GetDataPlaneResponse response;
  response.set_port(static_cast<uint32_t>(data_port_.load(std::memory_order_relaxed)));
  response.set_version(data_frame::kVersion);
  bool own = false;
  reactor->Finish(
      grpc::SerializationTraits<v1::GetDataPlaneResponse>::Serialize(response, resp, &own));
  return reactor;
}

#undef TESSERA_READ_FN
#undef TESSERA_CHANGE_FN
#undef TESSERA_RAW_METHOD
#undef TESSERA_RAW_CHANGE

}  // namespace tessera
