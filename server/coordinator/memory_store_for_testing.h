// An in-memory CoordinatorStore for tests and the simulation: writes can be made to fail, and
// the last written state survives a simulated coordinator crash.
#ifndef TESSERA_SERVER_COORDINATOR_MEMORY_STORE_FOR_TESTING_H_
#define TESSERA_SERVER_COORDINATOR_MEMORY_STORE_FOR_TESTING_H_

#include <optional>

#include "absl/status/status.h"
#include "server/coordinator/coordinator_core.h"

namespace tessera {

// Thread-compatible.
class MemoryStoreForTesting final : public CoordinatorStore {
 public:
  absl::StatusOr<std::optional<v1::CoordinatorState>> Read() override { return saved_; }
  absl::Status Write(const v1::CoordinatorState& state) override {
    if (fail_) return absl::UnavailableError("testing: the disk is failing");
    saved_ = state;
    ++writes_;
    return absl::OkStatus();
  }
  void set_fail(bool fail) { fail_ = fail; }
  const std::optional<v1::CoordinatorState>& saved() const { return saved_; }
  uint64_t writes() const { return writes_; }

 private:
  std::optional<v1::CoordinatorState> saved_;
  bool fail_ = false;
  uint64_t writes_ = 0;
};

}  // namespace tessera

#endif  // TESSERA_SERVER_COORDINATOR_MEMORY_STORE_FOR_TESTING_H_
