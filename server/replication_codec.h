// The wire form of a batch of log entries (v1::ReplicateRequest) built from and decoded into
// gRPC slices without copying the entries' request bytes (docs/replication.md, "Write path").
// Decoding is hostile-input safe: nothing is allocated for a length the message does not hold.
#ifndef TESSERA_SERVER_REPLICATION_CODEC_H_
#define TESSERA_SERVER_REPLICATION_CODEC_H_

#include <grpcpp/support/byte_buffer.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace tessera {

namespace v1 {
class ReplicateRequest;
}  // namespace v1

// One log entry as a primary keeps it for its backups.
struct Entry {
  uint64_t lsn;
  int kind;
  int64_t time_ms;
  uint64_t table_id;
  grpc::ByteBuffer request;  // shares the client's slices
};

// A ReplicateRequest whose entries' request bytes are the clients' slices, not copies.
grpc::ByteBuffer EncodeBatch(const v1::ReplicateRequest& header, const std::vector<Entry*>& batch);

// A ReplicateRequest decoded without copying its entries' request bytes.
struct DecodedBatch {
  uint64_t epoch = 0;
  uint32_t shard = 0;
  std::string primary;
  uint64_t primary_incarnation = 0;
  uint64_t first_lsn = 0;
  struct Item {
    int kind = 0;
    int64_t time_ms = 0;
    uint64_t table_id = 0;
    grpc::ByteBuffer request;  // slices of the received message
  };
  std::vector<Item> entries;
};

// INVALID_ARGUMENT ("malformed ReplicateRequest: ...") when the bytes are not one.
absl::Status DecodeBatch(const grpc::ByteBuffer& bytes, DecodedBatch* out);

}  // namespace tessera

#endif  // TESSERA_SERVER_REPLICATION_CODEC_H_
