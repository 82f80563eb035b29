// Checks of a request that depend only on the request (docs/state_machine.md: they run before
// the order lock, on the caller's thread).
#ifndef TESSERA_SERVER_REQUEST_CHECKS_H_
#define TESSERA_SERVER_REQUEST_CHECKS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/shard_map.h"

namespace tessera {

namespace v1 {
class PushId;
}  // namespace v1

// `name` as it appears in messages: at most 64 characters (a 100 KB table name must not make
// the error too large for gRPC's metadata).
std::string ShortName(const std::string& name);

absl::Status CheckDtype(int dtype, const std::string& table);
absl::Status CheckKeyType(int key_type, const std::string& table);
// Names the first value that is NaN or infinite.
absl::Status CheckFinite(const float* values, size_t n, const std::string& table);
// The values of a push: exactly `count` floats, finite unless `trusted` (a replayed push,
// which its primary checked: only what memory safety needs is checked again).
absl::StatusOr<absl::Span<const float>> PushValues(absl::string_view bytes, uint64_t count,
                                                   const std::string& table,
                                                   std::vector<float>* scratch, bool trusted);
// Distinct keys (grouped by vshard in `groups`): INVALID_ARGUMENT naming a repeated one.
absl::Status CheckDistinct(absl::Span<const uint64_t> keys, const VshardGrouping& groups,
                           const std::string& table);
absl::Status CheckPushId(const v1::PushId& id, const std::string& table);
absl::Status CheckAssign(bool assign, uint64_t accumulate_step, const std::string& table);

}  // namespace tessera

#endif  // TESSERA_SERVER_REQUEST_CHECKS_H_
