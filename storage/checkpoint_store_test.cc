#include "storage/checkpoint_store.h"

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "proto/checkpoint.pb.h"

namespace tessera::storage {
namespace {

std::string TempDir() {
  static int n = 0;
  const std::string dir = absl::StrCat(std::filesystem::temp_directory_path().string(),
                                       "/tessera-store-", getpid(), "-", n++);
  std::filesystem::remove_all(dir);
  return dir;
}

v1::CheckpointManifest Manifest(uint64_t id, std::vector<uint64_t> chain) {
  v1::CheckpointManifest m;
  m.set_id(id);
  m.set_parent_id(chain.size() > 1 ? chain[chain.size() - 2] : 0);
  for (uint64_t c : chain) m.add_chain(c);
  m.set_num_shards(1);
  return m;
}

TEST_CASE("only checkpoints with a valid manifest exist", "[store]") {
  auto store = CheckpointStore::Open(TempDir());
  REQUIRE(store.ok());
  CheckpointStore& s = **store;
  REQUIRE(s.CreatePartDir(1, 0).ok());
  REQUIRE(s.Publish(Manifest(1, {1})).ok());
  REQUIRE(s.CreatePartDir(2, 0).ok());  // a round that never published
  std::vector<uint64_t> partial;
  absl::StatusOr<std::vector<uint64_t>> ids = s.List(&partial);
  REQUIRE(ids.ok());
  CHECK(*ids == std::vector<uint64_t>{1});
  CHECK(partial == std::vector<uint64_t>{2});
  CHECK(s.NewestOrZero() == 1);
  v1::CheckpointManifest m;
  CHECK(s.ReadManifest(2, &m).code() == absl::StatusCode::kNotFound);
  REQUIRE(s.ReadManifest(1, &m).ok());
  CHECK(m.chain_size() == 1);
  // A torn manifest write (the .tmp of an unfinished rename) is ignored too.
  std::ofstream(s.ManifestPath(2) + ".tmp") << "half";
  ids = s.List();
  CHECK(*ids == std::vector<uint64_t>{1});
}

TEST_CASE("a corrupted manifest is refused with the file named", "[store]") {
  auto store = CheckpointStore::Open(TempDir());
  REQUIRE(store.ok());
  REQUIRE((*store)->Publish(Manifest(3, {3})).ok());
  {
    std::fstream f((*store)->ManifestPath(3), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(13);
    f.put('\x7f');
  }
  v1::CheckpointManifest m;
  absl::Status st = (*store)->ReadManifest(3, &m);
  CHECK(st.code() == absl::StatusCode::kDataLoss);
  CHECK(std::string(st.message()).find((*store)->ManifestPath(3)) != std::string::npos);
  CHECK((*store)->List()->empty());
}

TEST_CASE("chains and retention", "[store]") {
  auto store = CheckpointStore::Open(TempDir());
  REQUIRE(store.ok());
  CheckpointStore& s = **store;
  REQUIRE(s.Publish(Manifest(1, {1})).ok());
  REQUIRE(s.Publish(Manifest(2, {1, 2})).ok());
  REQUIRE(s.Publish(Manifest(3, {1, 2, 3})).ok());
  REQUIRE(s.Publish(Manifest(4, {4})).ok());
  REQUIRE(s.Publish(Manifest(5, {4, 5})).ok());
  absl::StatusOr<std::vector<v1::CheckpointManifest>> chain = s.ReadChain(3);
  REQUIRE(chain.ok());
  REQUIRE(chain->size() == 3);
  CHECK((*chain)[0].id() == 1);
  CHECK((*chain)[2].id() == 3);
  // Keeping the newest two (4 and 5) frees 1..3; keeping three (3, 4, 5) frees nothing.
  CHECK(*s.RetentionVictims(2) == std::vector<uint64_t>{1, 2, 3});
  CHECK(s.RetentionVictims(3)->empty());
  CHECK(s.RetentionVictims(0)->empty());
  REQUIRE(s.Remove(2).ok());
  CHECK(s.ReadChain(3).status().code() == absl::StatusCode::kNotFound);
}

TEST_CASE("one driver at a time", "[store]") {
  auto store = CheckpointStore::Open(TempDir());
  REQUIRE(store.ok());
  auto first = (*store)->LockForDriver();
  REQUIRE(first.ok());
  auto second = (*store)->LockForDriver();
  CHECK(second.status().code() == absl::StatusCode::kUnavailable);
  first->reset();
  CHECK((*store)->LockForDriver().ok());
}

}  // namespace
}  // namespace tessera::storage
