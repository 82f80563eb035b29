#include "common/call_limiter.h"

#include <catch2/catch.hpp>
#include <vector>

namespace tessera {
namespace {

TEST_CASE("calls in flight are limited per token and per connection", "[call_limiter]") {
  CallLimiter limiter({.max_in_flight_per_token = 2, .max_in_flight_per_connection = 3});
  int64_t retry = 0;
  auto a1 = limiter.Admit("tok-a", "conn-1", &retry);
  auto a2 = limiter.Admit("tok-a", "conn-2", &retry);
  REQUIRE(a1.ok());
  REQUIRE(a2.ok());
  absl::StatusOr<std::unique_ptr<CallLimiter::Ticket>> a3 =
      limiter.Admit("tok-a", "conn-3", &retry);
  REQUIRE_FALSE(a3.ok());
  CHECK(a3.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(std::string(a3.status().message()).find("2 calls in flight per token") !=
        std::string::npos);
  CHECK(std::string(a3.status().message()).find("tok-a") == std::string::npos);  // (never echoed)
  CHECK(retry >= 1);
  // Another token on a connection with room: in; a fourth call on conn-1 (3 there): out.
  auto b1 = limiter.Admit("tok-b", "conn-1", &retry);
  auto b2 = limiter.Admit("tok-b", "conn-1", &retry);
  REQUIRE(b1.ok());
  REQUIRE(b2.ok());
  CHECK(limiter.Admit("tok-c", "conn-1", &retry).status().message().find("per connection") !=
        absl::string_view::npos);
  // A refused call took no place: releasing one lets one more in.
  a1->reset();
  CHECK(limiter.Admit("tok-a", "conn-4", &retry).ok());
  // Calls without a token are limited per connection only.
  CHECK(limiter.Admit("", "conn-5", &retry).ok());
}

TEST_CASE("call rates are limited with bursts of one second's worth", "[call_limiter]") {
  absl::Time now = absl::FromUnixSeconds(1000);
  CallLimiter limiter({.max_in_flight_per_token = 0,
                       .max_per_second_per_token = 10,
                       .max_in_flight_per_connection = 0},
                      [&] { return now; });
  int64_t retry = 0;
  std::vector<std::unique_ptr<CallLimiter::Ticket>> held;
  for (int i = 0; i < 10; ++i) {
    auto t = limiter.Admit("tok", "conn", &retry);
    REQUIRE(t.ok());
    held.push_back(*std::move(t));
  }
  auto refused = limiter.Admit("tok", "conn", &retry);
  REQUIRE_FALSE(refused.ok());
  CHECK(retry == 100);  // one call's worth at 10 per second
  now += absl::Milliseconds(100);
  CHECK(limiter.Admit("tok", "conn", &retry).ok());
  CHECK_FALSE(limiter.Admit("tok", "conn", &retry).ok());
  now += absl::Seconds(5);  // refills to the burst, not beyond
  for (int i = 0; i < 10; ++i) CHECK(limiter.Admit("tok", "conn", &retry).ok());
  CHECK_FALSE(limiter.Admit("tok", "conn", &retry).ok());
}

}  // namespace
}  // namespace tessera
