// Protobuf messages with large `bytes` fields, encoded and decoded without protobuf copies.
//
// A message on the wire is the concatenation of its fields in any order, so a message can be
// sent as: its small fields (serialized by protobuf, bulk fields left empty) followed by each
// bulk field as tag, length and a grpc::Slice that points at the data. Decoding walks the
// top-level fields across the ByteBuffer's slices, hands small fields to protobuf and copies a
// bulk field once, straight to where the caller wants it. The bytes are valid protobuf either
// way: a peer using plain generated code reads and writes the same messages.
#ifndef TESSERA_COMMON_BULK_CODEC_H_
#define TESSERA_COMMON_BULK_CODEC_H_

#include <grpcpp/support/byte_buffer.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace google::protobuf {
class MessageLite;
}  // namespace google::protobuf

namespace tessera {

// One bulk field to append: `size` bytes at `data`, which gRPC reads in place. `release(arg)`
// runs exactly once when gRPC no longer needs the bytes (possibly after the call completed);
// until then they must stay valid and unchanged.
struct BulkField {
  int field_number = 0;
  const void* data = nullptr;
  size_t size = 0;
  void (*release)(void* arg) = nullptr;
  void* release_arg = nullptr;
};

// Bytes for a bulk field, allocated without being zeroed (a response written in place).
struct BulkBuffer {
  std::unique_ptr<char[]> data;
  size_t size = 0;

  // Replaces the contents with `n` uninitialized elements of T and returns them.
  template <typename T>
  T* Allocate(size_t n) {
    data.reset(new char[n * sizeof(T)]);
    size = n * sizeof(T);
    return reinterpret_cast<T*>(data.get());
  }
};

// A bulk field that owns its bytes (freed on release).
BulkField OwnedBulk(int field_number, std::string bytes);
BulkField OwnedBulk(int field_number, BulkBuffer bytes);

// header's serialization followed by the bulk fields. With padding_field_number > 0, a
// length-delimited field of that number (ignored by the receiver) is put before each bulk
// field where needed so that the field's bytes start 8-byte aligned from the message's start:
// a receiver holding the message in one aligned buffer reads keys and values in place
// (DecodeWithBulkViews).
grpc::ByteBuffer EncodeWithBulk(const google::protobuf::MessageLite& header,
                                const std::vector<BulkField>& bulk, int padding_field_number = 0);

// Where a decoded bulk field's bytes go. Contiguous (record_bytes == 0): `data` has room for
// the whole field. Scattered: the field is records of `record_bytes` each, record j copied to
// data + places[j] * record_bytes (a pull's rows put straight back in the caller's order, in
// one pass over the received slices); the sink guarantees that size is a multiple of
// record_bytes and that `places` has size / record_bytes entries, each in range.
struct BulkDest {
  char* data = nullptr;
  size_t record_bytes = 0;
  const uint32_t* places = nullptr;
};

// Given the bulk field's length in bytes, sets its destination or returns an error to reject
// the message.
using BulkSink = std::function<absl::Status(size_t size, BulkDest* dest)>;

// Parses `bytes` into `header`, except field `bulk_field_number` (a length-delimited field),
// whose contents go to `sink`. A message without the bulk field calls sink(0). Errors:
// INVALID_ARGUMENT (or DATA_LOSS on the client side, chosen by the caller) for malformed bytes.
absl::Status DecodeWithBulk(const grpc::ByteBuffer& bytes, google::protobuf::MessageLite* header,
                            int bulk_field_number, const BulkSink& sink);

// A bulk field of a message decoded by DecodeWithBulkViews.
struct BulkView {
  int field_number = 0;
  bool present = false;
  // The field's bytes: inside the decoded ByteBuffer's memory when they lie within one of its
  // slices (no copy: valid while those slices live), else in `spill`.
  const char* data = "";
  size_t size = 0;
  std::string spill;
};

// Parses `bytes` into `header`, except the fields named in `views` (length-delimited, each at
// most once), which are left out of `header` and viewed in place instead. Errors as
// DecodeWithBulk.
absl::Status DecodeWithBulkViews(const grpc::ByteBuffer& bytes,
                                 google::protobuf::MessageLite* header, BulkView* views,
                                 size_t num_views);

}  // namespace tessera

#endif  // TESSERA_COMMON_BULK_CODEC_H_
