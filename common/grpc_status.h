// The one adapter between gRPC statuses and absl::Status.
#ifndef TESSERA_COMMON_GRPC_STATUS_H_
#define TESSERA_COMMON_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace tessera {

// Messages are capped at 1 KiB (a message echoing a huge name must not exceed what a default
// gRPC client accepts as metadata; it would then see a transport error instead of the code).
inline grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  constexpr size_t kMaxMessage = 1024;
  std::string message(s.message().substr(0, kMaxMessage));
  if (s.message().size() > kMaxMessage) message += "...";
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::move(message));
}

inline absl::Status FromGrpcStatus(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

}  // namespace tessera

#endif  // TESSERA_COMMON_GRPC_STATUS_H_
