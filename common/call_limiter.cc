#include "common/call_limiter.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"

namespace tessera {
namespace {
constexpr size_t kSweepAt = 4096;  // entries in a map before idle ones are forgotten
}  // namespace

CallLimiter::Ticket::~Ticket() {
  if (limiter_ != nullptr) limiter_->Release(token_, connection_);
}

absl::Status CallLimiter::Check(Entry& e, int max_in_flight, double per_second, absl::Time now,
                                bool by_token, int64_t* retry_after_ms) {
  const char* what = by_token ? "token" : "connection";
  if (per_second > 0) {
    const double elapsed =
        e.refilled == absl::InfinitePast() ? 1.0 : absl::ToDoubleSeconds(now - e.refilled);
    e.allowance = std::min(per_second, e.allowance + elapsed * per_second);
    e.refilled = now;
    if (e.allowance < 1) {
      if (hook_) hook_(by_token ? "token_rate" : "connection_rate");
      *retry_after_ms = std::max<int64_t>(1, std::llround((1 - e.allowance) / per_second * 1000));
      return absl::ResourceExhaustedError(
          absl::StrFormat("over the limit of %g calls per second per %s; retry in %d ms",
                          per_second, what, *retry_after_ms));
    }
  }
  if (max_in_flight > 0 && e.in_flight >= max_in_flight) {
    if (hook_) hook_(by_token ? "token_in_flight" : "connection_in_flight");
    *retry_after_ms = 10;
    return absl::ResourceExhaustedError(
        absl::StrFormat("over the limit of %d calls in flight per %s; retry in %d ms",
                        max_in_flight, what, *retry_after_ms));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<CallLimiter::Ticket>> CallLimiter::Admit(
    absl::string_view token, absl::string_view connection, int64_t* retry_after_ms) {
  const bool by_token = !token.empty() && (limits_.max_in_flight_per_token > 0 ||
                                           limits_.max_per_second_per_token > 0);
  const bool by_connection = !connection.empty() && (limits_.max_in_flight_per_connection > 0 ||
                                                     limits_.max_per_second_per_connection > 0);
  const absl::Time now = clock_();
  absl::MutexLock lock(&mu_);
  Entry* t = nullptr;
  Entry* c = nullptr;
  if (by_token) {
    Sweep(tokens_, limits_.max_per_second_per_token, now);
    t = &tokens_[token];
    if (absl::Status s = Check(*t, limits_.max_in_flight_per_token,
                               limits_.max_per_second_per_token, now, true, retry_after_ms);
        !s.ok()) {
      return s;
    }
  }
  if (by_connection) {
    Sweep(connections_, limits_.max_per_second_per_connection, now);
    c = &connections_[connection];
    if (absl::Status s = Check(*c, limits_.max_in_flight_per_connection,
                               limits_.max_per_second_per_connection, now, false, retry_after_ms);
        !s.ok()) {
      return s;
    }
  }
  // Both passed: the call takes its places.
  if (t != nullptr) {
    ++t->in_flight;
    if (limits_.max_per_second_per_token > 0) t->allowance -= 1;
  }
  if (c != nullptr) {
    ++c->in_flight;
    if (limits_.max_per_second_per_connection > 0) c->allowance -= 1;
  }
  return std::make_unique<Ticket>(this, by_token ? std::string(token) : std::string(),
                                  by_connection ? std::string(connection) : std::string());
}

void CallLimiter::Release(const std::string& token, const std::string& connection) {
  absl::MutexLock lock(&mu_);
  if (!token.empty()) {
    auto it = tokens_.find(token);
    if (it != tokens_.end()) --it->second.in_flight;
  }
  if (!connection.empty()) {
    auto it = connections_.find(connection);
    if (it != connections_.end()) --it->second.in_flight;
  }
}

void CallLimiter::Sweep(absl::flat_hash_map<std::string, Entry>& map, double per_second,
                        absl::Time now) {
  if (map.size() < kSweepAt) return;
  // An entry with nothing in flight whose bucket has refilled is the same as a new one.
  absl::erase_if(map, [&](const auto& kv) {
    const Entry& e = kv.second;
    return e.in_flight == 0 &&
           (per_second <= 0 ||
            absl::ToDoubleSeconds(now - e.refilled) * per_second + e.allowance >= per_second);
  });
}

}  // namespace tessera
