// Limits on calls per token and per connection, in flight and per second (docs/security.md,
// "Abuse limits"). Thread-safe.
#ifndef TESSERA_COMMON_CALL_LIMITER_H_
#define TESSERA_COMMON_CALL_LIMITER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace tessera {

// 0 disables a limit. Rates allow bursts of one second's worth.
struct CallLimits {
  int max_in_flight_per_token = 16384;
  double max_per_second_per_token = 0;
  int max_in_flight_per_connection = 1024;
  double max_per_second_per_connection = 0;
};

class CallLimiter {
 public:
  // `clock` (tests): the time rates are measured in.
  explicit CallLimiter(CallLimits limits, std::function<absl::Time()> clock = absl::Now)
      : limits_(limits), clock_(std::move(clock)) {}

  // An admitted call's place; the in-flight counts drop when it is destroyed.
  class Ticket {
   public:
    Ticket(CallLimiter* limiter, std::string token, std::string connection)
        : limiter_(limiter), token_(std::move(token)), connection_(std::move(connection)) {}
    Ticket(const Ticket&) = delete;
    Ticket& operator=(const Ticket&) = delete;
    ~Ticket();

   private:
    CallLimiter* limiter_;
    std::string token_;       // empty: not counted per token
    std::string connection_;  // empty: not counted per connection
  };

  // Admits a call presenting `token` (empty: none, not limited per token) on `connection` (an
  // identity of the connection, e.g. gRPC's peer string). Refused: RESOURCE_EXHAUSTED naming the
  // limit and *retry_after_ms (at least 1): how long until a call may pass.
  absl::StatusOr<std::unique_ptr<Ticket>> Admit(absl::string_view token,
                                                absl::string_view connection,
                                                int64_t* retry_after_ms) ABSL_LOCKS_EXCLUDED(mu_);

  // Called on every refusal with the limit: "token_in_flight", "token_rate",
  // "connection_in_flight" or "connection_rate" (for metrics). Set before use.
  void set_refusal_hook(std::function<void(const char* limit)> hook) { hook_ = std::move(hook); }

 private:
  struct Entry {
    int in_flight = 0;
    double allowance = 0;  // calls that may start now (a token bucket)
    absl::Time refilled = absl::InfinitePast();
  };
  // Checks one entry's limits at `now`; OK or the refusal.
  absl::Status Check(Entry& e, int max_in_flight, double per_second, absl::Time now, bool by_token,
                     int64_t* retry_after_ms) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Release(const std::string& token, const std::string& connection) ABSL_LOCKS_EXCLUDED(mu_);
  // Forgets idle entries once a map holds many.
  void Sweep(absl::flat_hash_map<std::string, Entry>& map, double per_second, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const CallLimits limits_;
  const std::function<absl::Time()> clock_;
  std::function<void(const char* limit)> hook_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Entry> tokens_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Entry> connections_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tessera

#endif  // TESSERA_COMMON_CALL_LIMITER_H_
