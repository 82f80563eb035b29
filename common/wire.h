// Conversions between the wire contract (proto/tessera.proto) and Tessera's C++ types. Only
// forward declarations of generated types appear here; include "proto/tessera.pb.h" where the
// messages are used.
#ifndef TESSERA_COMMON_WIRE_H_
#define TESSERA_COMMON_WIRE_H_

#include <bit>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/table_config.h"

namespace tessera::v1 {
class TableSpec;
class LifecycleSpec;
}  // namespace tessera::v1

namespace tessera {

// Packed arrays on the wire are little-endian; Tessera runs on little-endian hosts only.
static_assert(std::endian::native == std::endian::little,
              "Tessera's packed wire arrays assume a little-endian host");

// Name of the trailing-metadata key carrying a server's shard-map epoch on FAILED_PRECONDITION.
inline constexpr char kEpochMetadataKey[] = "tessera-shard-map-epoch";
// Trailing metadata on a refusal for routing reasons (stale map, not the primary): the client
// refreshes its shard map and retries the same request (docs/replication.md).
inline constexpr char kRerouteMetadataKey[] = "tessera-reroute";
// Trailing metadata of a refusal for a call limit (RESOURCE_EXHAUSTED, docs/security.md): the
// milliseconds to wait before the call may be retried.
inline constexpr char kRetryAfterMetadataKey[] = "tessera-retry-after-ms";

void TableConfigToProto(const TableConfig& config, v1::TableSpec* spec);
// INVALID_ARGUMENT for unknown enum values. Does not resolve defaults.
absl::StatusOr<TableConfig> TableConfigFromProto(const v1::TableSpec& spec);
// A lifecycle (of table `table`, for messages); not resolved.
absl::StatusOr<LifecycleConfig> LifecycleFromProto(const v1::LifecycleSpec& lifecycle,
                                                   absl::string_view table);

// A view of `bytes` as an array of T. REQUIRES: bytes.size() % sizeof(T) == 0. When the bytes are
// not suitably aligned (never the case for buffers from the heap), copies them into *scratch.
template <typename T>
absl::Span<const T> PackedView(absl::string_view bytes, std::vector<T>* scratch) {
  const size_t n = bytes.size() / sizeof(T);
  if (reinterpret_cast<uintptr_t>(bytes.data()) % alignof(T) == 0) {
    return absl::Span<const T>(reinterpret_cast<const T*>(bytes.data()), n);
  }
  scratch->resize(n);
  std::memcpy(scratch->data(), bytes.data(), n * sizeof(T));
  return absl::Span<const T>(scratch->data(), n);
}

// Resizes *bytes to hold n values of T and returns a pointer to them. std::string storage from
// the heap is aligned for any scalar; n * sizeof(T) > 15 always uses the heap.
template <typename T>
T* PackedResize(std::string* bytes, size_t n) {
  bytes->resize(n * sizeof(T));
  return reinterpret_cast<T*>(bytes->data());
}

template <typename T>
void PackedAssign(std::string* bytes, absl::Span<const T> values) {
  bytes->assign(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

}  // namespace tessera

#endif  // TESSERA_COMMON_WIRE_H_
