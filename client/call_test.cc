// Call and Result (client/call.h) without a network: completion, waits, continuations and
// composition, from several threads.
#include "client/call.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <thread>
#include <vector>

namespace tessera {
namespace {

// n pending calls and their completers.
std::pair<std::vector<Call>, std::vector<StatusCallback>> PendingCalls(int n) {
  std::pair<std::vector<Call>, std::vector<StatusCallback>> out;
  for (int i = 0; i < n; ++i) {
    auto [c, done] = Call::Pending();
    out.first.push_back(c);
    out.second.push_back(done);
  }
  return out;
}

TEST_CASE("a pending call completes once, with the first status", "[call]") {
  auto [call, complete] = Call::Pending();
  CHECK_FALSE(call.done());
  CHECK(call.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK_FALSE(call.WaitFor(absl::Milliseconds(1)));
  complete(absl::NotFoundError("first"));
  complete(absl::OkStatus());  // ignored
  CHECK(call.done());
  CHECK(call.Wait().code() == absl::StatusCode::kNotFound);
  CHECK(call.status().message() == "first");
  Call copy = std::move(call);
  CHECK(call.done());  // a moved-from Call is still a handle of the same call
  CHECK(copy.Wait().message() == "first");
  CHECK(Call().Wait().ok());
  CHECK(Call::Done(absl::AbortedError("x")).Wait().code() == absl::StatusCode::kAborted);
}

TEST_CASE("continuations run once: at once when done, else on the completing thread", "[call]") {
  auto [call, complete] = Call::Pending();
  std::atomic<int> runs{0};
  std::thread::id ran_on;
  call.OnDone([&](absl::Status s) {
    CHECK(s.ok());
    ran_on = std::this_thread::get_id();
    ++runs;
  });
  CHECK(runs == 0);
  std::thread t([complete = complete] { complete(absl::OkStatus()); });
  const std::thread::id completer = t.get_id();
  t.join();
  CHECK(runs == 1);
  CHECK(ran_on == completer);
  call.OnDone([&](absl::Status) { ++runs; });  // already done: runs here
  CHECK(runs == 2);
}

TEST_CASE("All waits for every call and reports the first error in order", "[call]") {
  CHECK(Call::All({}).done());
  auto [calls, completers] = PendingCalls(4);
  Call all = Call::All(calls);
  completers[3](absl::InternalError("late in order"));
  completers[0](absl::OkStatus());
  completers[2](absl::UnavailableError("earlier in order"));
  CHECK_FALSE(all.done());  // calls[1] is still pending
  completers[1](absl::OkStatus());
  REQUIRE(all.done());
  CHECK(all.Wait().code() == absl::StatusCode::kUnavailable);
  // Nested, and all OK.
  CHECK(Call::All({Call::All({Call(), Call()}), Call()}).Wait().ok());
}

TEST_CASE("All completes exactly once under concurrent completions", "[call]") {
  for (int round = 0; round < 50; ++round) {
    auto pending = PendingCalls(16);  // (not a structured binding: the lambdas below use it)
    std::vector<Call>& calls = pending.first;
    std::vector<StatusCallback>& completers = pending.second;
    std::atomic<int> runs{0};
    Call all = Call::All(calls);
    all.OnDone([&](absl::Status) { ++runs; });
    std::vector<std::thread> threads;
    for (int i = 0; i < 16; ++i) {
      threads.emplace_back(
          [&, i] { completers[i](i == 7 ? absl::DataLossError("7") : absl::OkStatus()); });
    }
    for (std::thread& t : threads) t.join();
    CHECK(all.Wait().message() == "7");
    CHECK(runs == 1);
  }
}

TEST_CASE("a Result hands out its value once, after success", "[call]") {
  auto [call, complete] = Call::Pending();
  auto value = std::make_shared<std::vector<float>>(std::vector<float>{1, 2});
  Result<std::vector<float>> r(call, value);
  value.reset();  // the Result keeps it
  CHECK_FALSE(r.done());
  complete(absl::OkStatus());
  absl::StatusOr<std::vector<float>> got = r.Take();
  REQUIRE(got.ok());
  CHECK(*got == std::vector<float>{1, 2});
  CHECK(r.Take().status().code() == absl::StatusCode::kFailedPrecondition);
  Result<int> failed(Call::Done(absl::NotFoundError("no")), std::make_shared<int>(3));
  CHECK(failed.Take().status().code() == absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace tessera
