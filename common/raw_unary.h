// Unary gRPC methods registered "raw" (grpc::ByteBuffer in and out) whose handlers still work
// on parsed messages. The point is the error: gRPC's callback API answers a request that does
// not deserialize with UNIMPLEMENTED and no message; here it is INVALID_ARGUMENT naming the
// message type and its size, like the ParameterServer service (server/grpc_service.h).
#ifndef TESSERA_COMMON_RAW_UNARY_H_
#define TESSERA_COMMON_RAW_UNARY_H_

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include <string>

#include "absl/strings/str_format.h"
#include "common/auth.h"

namespace tessera {

// A call's reactor: Finish serializes the response first (on OK). Handlers hold it as a
// ReplyReactor* so that Finish is this one. Deletes itself when gRPC is done with the call.
class ReplyReactor : public grpc::ServerUnaryReactor {
 public:
  void Finish(grpc::Status status) {
    if (status.ok()) status = Serialize();
    grpc::ServerUnaryReactor::Finish(std::move(status));
  }
  void OnDone() override { delete this; }

 protected:
  virtual grpc::Status Serialize() = 0;
};

template <typename Req, typename Resp>
class ParsedCall final : public ReplyReactor {
 public:
  explicit ParsedCall(grpc::ByteBuffer* out) : out_(out) {}
  Req req;
  Resp resp;

 private:
  grpc::Status Serialize() override {
    bool own = false;
    return grpc::SerializationTraits<Resp>::Serialize(resp, out_, &own);
  }
  grpc::ByteBuffer* out_;
};

// Checks the call with `auth` (docs/security.md: refused before anything is parsed), parses
// `in` and runs handler(ctx, &req, &resp, reactor), which finishes the reactor (now or later);
// a request that does not parse is finished with INVALID_ARGUMENT.
template <typename Req, typename Resp, typename Handler>
grpc::ServerUnaryReactor* RunParsed(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in,
                                    grpc::ByteBuffer* out, const Authenticator& auth,
                                    absl::string_view full_method, Handler&& handler) {
  auto* call = new ParsedCall<Req, Resp>(out);
  if (grpc::Status s = auth.Check(*ctx, full_method); !s.ok()) {
    call->Finish(std::move(s));
    return call;
  }
  grpc::ByteBuffer copy(*in);  // shares the slices
  grpc::ProtoBufferReader reader(&copy);
  if (!reader.status().ok() || !call->req.ParseFromZeroCopyStream(&reader)) {
    call->Finish(
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                     absl::StrFormat("malformed %s (%u bytes): not a valid protobuf message",
                                     Req::descriptor()->full_name(), in->Length())));
    return call;
  }
  handler(ctx, &call->req, &call->resp, static_cast<ReplyReactor*>(call));
  return call;
}

}  // namespace tessera

#endif  // TESSERA_COMMON_RAW_UNARY_H_
