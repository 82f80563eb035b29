// The server's memory budget (docs/state_machine.md, "Resources"): every byte a request would
// make the server hold is reserved here, in O(1), before it is allocated.
#ifndef TESSERA_SERVER_MEMORY_BUDGET_H_
#define TESSERA_SERVER_MEMORY_BUDGET_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

namespace tessera {

// Thread-safe.
class MemoryBudget {
 public:
  // limit: bytes; 0 means no limit.
  explicit MemoryBudget(uint64_t limit) : limit_(limit) {}

  // Reserves `bytes` for `what` (a phrase naming the table and the request), or returns
  // RESOURCE_EXHAUSTED naming it, the size and the limit, reserving nothing.
  absl::Status Reserve(uint64_t bytes, const std::string& what) {
    uint64_t used = used_.load(std::memory_order_relaxed);
    for (;;) {
      if (limit_ != 0 && (bytes > limit_ || used > limit_ - bytes)) {
        return absl::ResourceExhaustedError(
            absl::StrFormat("%s needs %u bytes; this server holds %u of its --max_memory_bytes %u",
                            what, bytes, used, limit_));
      }
      if (used_.compare_exchange_weak(used, used + bytes, std::memory_order_relaxed)) {
        return absl::OkStatus();
      }
    }
  }
  // Reserves without a limit: what a backup must hold because its primary does.
  void Force(uint64_t bytes) { used_.fetch_add(bytes, std::memory_order_relaxed); }
  void Release(uint64_t bytes) { used_.fetch_sub(bytes, std::memory_order_relaxed); }

  uint64_t used() const { return used_.load(std::memory_order_relaxed); }
  uint64_t limit() const { return limit_; }

 private:
  const uint64_t limit_;
  std::atomic<uint64_t> used_{0};
};

}  // namespace tessera

#endif  // TESSERA_SERVER_MEMORY_BUDGET_H_
