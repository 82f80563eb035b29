#include "server/push_dedup.h"

#include <catch2/catch.hpp>

namespace tessera {
namespace {

using D = PushDeduplicator::Decision;

TEST_CASE("a push is applied once and its retry is a duplicate", "[dedup]") {
  PushDeduplicator d;
  REQUIRE(d.Begin(7, 1, 1) == D::kApply);
  CHECK(d.Begin(7, 1, 1) == D::kInProgress);  // concurrent retry while applying
  d.Finish(7, 1, true);
  CHECK(d.Begin(7, 1, 1) == D::kDuplicate);
  CHECK(d.Begin(8, 1, 1) == D::kApply);  // another client's sequence 1 is unrelated
}

TEST_CASE("out-of-order arrival within the window", "[dedup]") {
  PushDeduplicator d;
  REQUIRE(d.Begin(1, 3, 1) == D::kApply);
  d.Finish(1, 3, true);
  REQUIRE(d.Begin(1, 1, 1) == D::kApply);
  d.Finish(1, 1, true);
  CHECK(d.Begin(1, 2, 1) == D::kApply);
  d.Finish(1, 2, true);
  for (uint64_t s = 1; s <= 3; ++s) CHECK(d.Begin(1, s, 1) == D::kDuplicate);
}

TEST_CASE("a push that was not applied can be applied later", "[dedup]") {
  PushDeduplicator d;
  REQUIRE(d.Begin(1, 1, 1) == D::kApply);
  d.Finish(1, 1, false);
  CHECK(d.Begin(1, 1, 1) == D::kApply);
}

TEST_CASE("sequences below the floor count as settled", "[dedup]") {
  PushDeduplicator d;
  REQUIRE(d.Begin(1, 1, 1) == D::kApply);
  d.Finish(1, 1, true);
  // The client has settled everything below 10 (say 2..9 failed validation elsewhere); a late
  // copy of 5 must not be applied.
  REQUIRE(d.Begin(1, 10, 10) == D::kApply);
  d.Finish(1, 10, true);
  CHECK(d.Begin(1, 5, 10) == D::kDuplicate);
  CHECK(d.Begin(1, 1, 10) == D::kDuplicate);
}

TEST_CASE("idle clients are forgotten after the TTL", "[dedup]") {
  PushDeduplicator d(absl::ZeroDuration());
  REQUIRE(d.Begin(1, 1, 1) == D::kApply);
  d.Finish(1, 1, true);
  REQUIRE(d.NumClientsForTesting() == 1);
  REQUIRE(d.Begin(17, 1, 1) == D::kApply);  // same stripe (17 % 16 == 1): sweeps client 1
  d.Finish(17, 1, true);
  CHECK(d.NumClientsForTesting() == 1);
}

}  // namespace
}  // namespace tessera
