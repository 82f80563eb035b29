// The request bytes of a change as gRPC received them (docs/state_machine.md, "The log
// entry"): every WireBytes in a server process is one of these.
#ifndef TESSERA_SERVER_GRPC_WIRE_H_
#define TESSERA_SERVER_GRPC_WIRE_H_

#include <grpcpp/support/byte_buffer.h>

#include <string>

#include "server/shard_log.h"

namespace tessera {

struct GrpcWire final : WireBytes {
  explicit GrpcWire(const grpc::ByteBuffer& b) : bytes(b) {}  // shares the slices
  grpc::ByteBuffer bytes;
  // Bulk fields that straddled slices, copied (keys and values point here then).
  std::string spill[2];
};

}  // namespace tessera

#endif  // TESSERA_SERVER_GRPC_WIRE_H_
