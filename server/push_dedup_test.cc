#include "server/push_dedup.h"

#include <catch2/catch.hpp>

namespace tessera {
namespace {

TEST_CASE("a push is applied once and its retry is a duplicate", "[dedup]") {
  PushDeduplicator d;
  REQUIRE_FALSE(d.IsDuplicate(7, 1, 1));
  d.Record(7, 1, 1, 10);
  CHECK(d.IsDuplicate(7, 1, 1));
  CHECK_FALSE(d.IsDuplicate(8, 1, 1));  // another client's sequence 1 is unrelated
}

TEST_CASE("out-of-order arrival within the window", "[dedup]") {
  PushDeduplicator d;
  d.Record(1, 3, 1, 1);
  REQUIRE_FALSE(d.IsDuplicate(1, 1, 1));
  d.Record(1, 1, 1, 2);
  REQUIRE_FALSE(d.IsDuplicate(1, 2, 1));
  d.Record(1, 2, 1, 3);
  for (uint64_t s = 1; s <= 3; ++s) CHECK(d.IsDuplicate(1, s, 1));
}

TEST_CASE("a check that is not followed by a record changes nothing", "[dedup]") {
  PushDeduplicator d;
  d.Record(1, 1, 1, 1);
  // A push with a high floor that is then refused (say its step was applied already) must not
  // raise the floor: the client's later pushes below it are still new.
  REQUIRE_FALSE(d.IsDuplicate(1, 10, 10));
  CHECK_FALSE(d.IsDuplicate(1, 5, 1));
  CHECK(d.Snapshot()[0].floor == 1);
}

TEST_CASE("sequences below the floor count as settled", "[dedup]") {
  PushDeduplicator d;
  d.Record(1, 1, 1, 1);
  // The client has settled everything below 10 (say 2..9 failed validation elsewhere); a late
  // copy of 5 must not be applied.
  d.Record(1, 10, 10, 2);
  CHECK(d.IsDuplicate(1, 5, 10));
  CHECK(d.IsDuplicate(1, 5, 1));  // the recorded floor counts even if the copy says less
  CHECK(d.IsDuplicate(1, 1, 10));
}

TEST_CASE("idle clients are forgotten after the TTL of entry time, not of a clock", "[dedup]") {
  PushDeduplicator d(/*client_ttl_ms=*/1000);
  d.Record(1, 1, 1, 0);
  d.Record(2, 1, 1, 900);
  REQUIRE(d.NumClients() == 2);
  // Sweeps run every quarter TTL of entry time: at 1200 client 1 (idle 1200 ms) is forgotten,
  // client 2 (idle 300 ms) is not.
  d.Record(3, 1, 1, 1200);
  CHECK(d.NumClients() == 2);
  CHECK_FALSE(d.IsDuplicate(1, 1, 1));
  CHECK(d.IsDuplicate(2, 1, 1));
}

TEST_CASE("snapshot and restore keep every client, its floor and its time", "[dedup]") {
  PushDeduplicator a(1000);
  a.Record(5, 2, 1, 100);
  a.Record(4, 7, 3, 200);
  PushDeduplicator b(1000);
  b.Restore(a.Snapshot());
  const auto s = b.Snapshot();
  REQUIRE(s.size() == 2);
  CHECK(s[0].client_id == 4);
  CHECK(s[0].floor == 3);
  CHECK(s[0].last_seen_ms == 200);
  CHECK(s[1].applied == std::vector<uint64_t>{2});
  // The restored times drive forgetting exactly as on the original.
  a.Record(6, 1, 1, 1150);
  b.Record(6, 1, 1, 1150);
  CHECK(a.NumClients() == b.NumClients());
}

}  // namespace
}  // namespace tessera
