// The shard's log entry: one typed change of its replicated state (docs/state_machine.md).
// Kept free of generated headers: the requests are forward-declared.
#ifndef TESSERA_SERVER_SHARD_LOG_H_
#define TESSERA_SERVER_SHARD_LOG_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <variant>

namespace tessera {

namespace v1 {
class CreateTableRequest;
class DropTableRequest;
class PushSparseRequest;
class PushDenseRequest;
class ApplyStepRequest;
class RemoveRowsRequest;
}  // namespace v1

// The request bytes as they arrived, owned by the transport (the gRPC layer's ByteBuffer):
// forwarded to backups without a copy.
class WireBytes {
 public:
  virtual ~WireBytes() = default;

  // A push's keys and values where the transport left them in these bytes instead of copying
  // them into the parsed message (whose fields are then empty); data == nullptr: in the
  // message. Valid as long as this object.
  struct Field {
    const char* data = nullptr;
    size_t size = 0;
  };
  Field keys;
  Field values;
};

// A restore replaced the whole state: backups need a snapshot taken after it.
struct RestoreOp {};

struct LogEntry {
  using Op = std::variant<
      std::shared_ptr<const v1::CreateTableRequest>, std::shared_ptr<const v1::DropTableRequest>,
      std::shared_ptr<const v1::PushSparseRequest>, std::shared_ptr<const v1::PushDenseRequest>,
      std::shared_ptr<const v1::ApplyStepRequest>, RestoreOp,
      std::shared_ptr<const v1::RemoveRowsRequest>>;
  uint64_t lsn = 0;
  int64_t time_ms = 0;    // the primary's clock at sequencing, non-decreasing along the log
  uint64_t table_id = 0;  // the table it changes (the LSN that created it); 0: none
  Op op;
  std::shared_ptr<const WireBytes> wire;  // null: not received over the wire
};

// v1::LogEntryKind of an entry.
int LogEntryKindOf(const LogEntry& entry);

}  // namespace tessera

#endif  // TESSERA_SERVER_SHARD_LOG_H_
