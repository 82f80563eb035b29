// The all-reduce group over Gloo (docs/dense_allreduce.md, "The group"): ranks in threads of
// this process over loopback TCP, an in-memory rendezvous store.
#include "worker/allreduce.h"

#include <cstring>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "catch2/catch.hpp"

namespace tessera {
namespace {

// Runs `body(rank, group)` on `size` ranks, each in its own thread, after connecting them.
template <typename Body>
void RunGroup(int size, const AllReduceOptions& options, Body body) {
  InMemoryRendezvousStore store;
  std::vector<std::thread> threads;
  std::vector<absl::Status> created(size);
  for (int rank = 0; rank < size; ++rank) {
    threads.emplace_back([&, rank] {
      absl::StatusOr<std::unique_ptr<AllReduceGroup>> g =
          AllReduceGroup::Create(rank, size, &store, options);
      created[rank] = g.status();
      if (g.ok()) body(rank, **g);
    });
  }
  for (std::thread& t : threads) t.join();
  for (const absl::Status& s : created) {
    INFO(s.ToString());
    CHECK(s.ok());
  }
}

TEST_CASE("a group sums in place and every rank holds the same bits") {
  for (int size : {1, 2, 3}) {
    // 10,007 floats in buckets of 1,024: several buckets, the last partial.
    const size_t n = 10007;
    AllReduceOptions options{.bucket_bytes = 4096, .prefix = absl::StrCat("sum", size, "/")};
    std::vector<std::vector<float>> exact(size), noisy(size);
    RunGroup(size, options, [&](int rank, AllReduceGroup& g) {
      CHECK(g.rank() == rank);
      CHECK(g.size() == size);
      // Small integers: their sum is exact in any order, so it must equal the reference.
      std::vector<float> v(n);
      for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>((i * 7 + rank * 13) % 101);
      CHECK(g.Sum(absl::MakeSpan(v)).ok());
      exact[rank] = v;
      // Arbitrary floats: the order of the sums may round, but every rank gets the same.
      std::mt19937 rng(rank);
      std::normal_distribution<float> d;
      std::vector<float> w(n);
      for (float& x : w) x = d(rng);
      CHECK(g.Sum(absl::MakeSpan(w)).ok());
      noisy[rank] = w;
    });
    for (size_t i = 0; i < n; ++i) {
      float want = 0;
      for (int r = 0; r < size; ++r) want += static_cast<float>((i * 7 + r * 13) % 101);
      REQUIRE(exact[0][i] == want);
    }
    for (int r = 1; r < size; ++r) {
      CHECK(std::memcmp(exact[r].data(), exact[0].data(), n * 4) == 0);
      CHECK(std::memcmp(noisy[r].data(), noisy[0].data(), n * 4) == 0);
    }
  }
}

TEST_CASE("a rank outside the group or a zero timeout is refused") {
  InMemoryRendezvousStore store;
  CHECK(AllReduceGroup::Create(2, 2, &store, {}).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(AllReduceGroup::Create(-1, 2, &store, {}).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(AllReduceGroup::Create(0, 1, &store, {.timeout = absl::ZeroDuration()}).status().code() ==
        absl::StatusCode::kInvalidArgument);
}

TEST_CASE("a peer that never comes fails the rendezvous within the timeout") {
  InMemoryRendezvousStore store;
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<AllReduceGroup>> g = AllReduceGroup::Create(
      0, 2, &store, {.timeout = absl::Milliseconds(300), .prefix = "alone/"});
  INFO(g.status().ToString());
  CHECK(g.status().code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(absl::Now() - start < absl::Seconds(5));
}

TEST_CASE("a peer gone fails the others within the timeout and the group refuses later calls") {
  InMemoryRendezvousStore store;
  const AllReduceOptions options{.timeout = absl::Seconds(2), .prefix = "gone/"};
  std::vector<std::unique_ptr<AllReduceGroup>> groups(3);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 3; ++rank) {
    threads.emplace_back([&, rank] {
      absl::StatusOr<std::unique_ptr<AllReduceGroup>> g =
          AllReduceGroup::Create(rank, 3, &store, options);
      if (g.ok()) groups[rank] = *std::move(g);
    });
  }
  for (std::thread& t : threads) t.join();
  threads.clear();
  for (const auto& g : groups) REQUIRE(g != nullptr);
  std::vector<absl::Status> first(3), second(3);
  for (int rank = 0; rank < 3; ++rank) {
    threads.emplace_back([&, rank] {
      std::vector<float> v(1000, 1.0f);
      first[rank] = groups[rank]->Sum(absl::MakeSpan(v));
    });
  }
  for (std::thread& t : threads) t.join();
  threads.clear();
  for (const absl::Status& s : first) CHECK(s.ok());
  groups[2].reset();  // rank 2 is gone: its sockets close
  const absl::Time start = absl::Now();
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      std::vector<float> v(100000, 1.0f);
      second[rank] = groups[rank]->Sum(absl::MakeSpan(v));
    });
  }
  for (std::thread& t : threads) t.join();
  CHECK(absl::Now() - start < absl::Seconds(10));
  for (int rank = 0; rank < 2; ++rank) {
    INFO(second[rank].ToString());
    CHECK((second[rank].code() == absl::StatusCode::kUnavailable ||
           second[rank].code() == absl::StatusCode::kDeadlineExceeded));
    std::vector<float> v(10, 1.0f);
    CHECK(groups[rank]->Sum(absl::MakeSpan(v)).code() == absl::StatusCode::kFailedPrecondition);
  }
}

TEST_CASE("all-reduce of the MLP's parameters between two ranks", "[.bench]") {
  // 784 x 256 + 256 + 256 x 10 + 10 floats: the MLP of bench/python_client_bench.py.
  const size_t n = 784 * 256 + 256 + 256 * 10 + 10;
  const int rounds = 300;
  std::vector<double> ms(2);
  RunGroup(2, {.prefix = "bench/"}, [&](int rank, AllReduceGroup& g) {
    std::vector<float> v(n, 1.0f);
    REQUIRE(g.Sum(absl::MakeSpan(v)).ok());  // (warm-up)
    const absl::Time start = absl::Now();
    for (int i = 0; i < rounds; ++i) REQUIRE(g.Sum(absl::MakeSpan(v)).ok());
    ms[rank] = absl::ToDoubleMilliseconds(absl::Now() - start) / rounds;
  });
  WARN("all-reduce of " << n << " floats, 2 ranks in one process over loopback: " << ms[0]
                        << " ms a sum");
}

}  // namespace
}  // namespace tessera
