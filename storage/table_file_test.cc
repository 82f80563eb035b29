#include "storage/table_file.h"

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <map>

#include "absl/strings/str_cat.h"

namespace tessera::storage {
namespace {

std::string TempDir() {
  static int n = 0;
  const std::string dir = absl::StrCat(std::filesystem::temp_directory_path().string(),
                                       "/tessera-table-file-", getpid(), "-", n++);
  std::filesystem::create_directories(dir);
  return dir;
}

using Rows = std::map<std::pair<uint32_t, uint64_t>, std::string>;

Rows Collect(TableFileReader& r, uint32_t first, uint32_t last) {
  Rows rows;
  REQUIRE(r.Scan(first, last, [&](const Entry& e) {
             rows[{e.vshard, e.key}] = std::string(e.bytes);
             return absl::OkStatus();
           }).ok());
  return rows;
}

TEST_CASE("table files round-trip rows by vshard range", "[table_file]") {
  const std::string path = TempDir() + "/t.sst";
  auto w = TableFileWriter::Create(path);
  REQUIRE(w.ok());
  Rows want;
  for (uint32_t v = 0; v < 50; v += 3) {
    for (uint64_t k : {uint64_t{1}, uint64_t{1} << 40, ~uint64_t{0}}) {
      const std::string bytes(16 + v, static_cast<char>('a' + v % 26));
      REQUIRE((*w)->AddRow(v, k, bytes).ok());
      want[{v, k}] = bytes;
    }
  }
  absl::StatusOr<FileInfo> info = (*w)->Finish();
  REQUIRE(info.ok());
  CHECK(info->rows == want.size());
  CHECK(info->size_bytes == std::filesystem::file_size(path));
  auto r = TableFileReader::Open(path, info->size_bytes, info->crc32c);
  REQUIRE(r.ok());
  CHECK(Collect(**r, 0, 1000) == want);
  Rows part = Collect(**r, 10, 20);
  CHECK(part.size() == 3 * 3);  // vshards 12, 15 and 18, three keys each
  for (const auto& [k, v] : part) CHECK((k.first >= 10 && k.first <= 20));
}

TEST_CASE("a chain merges newest-wins with tombstones", "[table_file]") {
  const std::string dir = TempDir();
  auto write = [&](const std::string& name,
                   std::vector<std::tuple<uint32_t, uint64_t, std::string>> entries) {
    auto w = TableFileWriter::Create(dir + "/" + name);
    REQUIRE(w.ok());
    for (auto& [v, k, bytes] : entries) {
      if (bytes.empty()) {
        REQUIRE((*w)->AddTombstone(v, k).ok());
      } else {
        REQUIRE((*w)->AddRow(v, k, bytes).ok());
      }
    }
    absl::StatusOr<FileInfo> info = (*w)->Finish();
    REQUIRE(info.ok());
    auto r = TableFileReader::Open(dir + "/" + name, info->size_bytes, info->crc32c);
    REQUIRE(r.ok());
    return std::move(*r);
  };
  auto base = write("base", {{1, 1, "a1"}, {1, 2, "a2"}, {2, 5, "a5"}, {7, 9, "a9"}});
  auto inc1 = write("inc1", {{1, 2, ""}, {2, 5, "b5"}, {3, 3, "b3"}});
  auto inc2 = write("inc2", {{1, 2, "c2"}, {3, 3, ""}});
  auto empty = write("empty", {});
  Rows got;
  REQUIRE(MergeChain({base.get(), inc1.get(), empty.get(), inc2.get()}, 0, 5, [&](const Entry& e) {
            got[{e.vshard, e.key}] = std::string(e.bytes);
            return absl::OkStatus();
          }).ok());
  const Rows want = {{{1, 1}, "a1"}, {{1, 2}, "c2"}, {{2, 5}, "b5"}};
  CHECK(got == want);  // vshard 7 is out of range; key 3 was removed by its tombstone
}

TEST_CASE("a corrupted or truncated file is refused with its name", "[table_file]") {
  const std::string path = TempDir() + "/t.sst";
  auto w = TableFileWriter::Create(path);
  REQUIRE(w.ok());
  for (uint64_t k = 0; k < 1000; ++k) REQUIRE((*w)->AddRow(0, k, std::string(100, 'x')).ok());
  absl::StatusOr<FileInfo> info = (*w)->Finish();
  REQUIRE(info.ok());
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(5000);
    f.put('Y');
  }
  auto r = TableFileReader::Open(path, info->size_bytes, info->crc32c);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == absl::StatusCode::kDataLoss);
  CHECK(std::string(r.status().message()).find(path) != std::string::npos);
  std::filesystem::resize_file(path, 100);
  r = TableFileReader::Open(path, info->size_bytes, info->crc32c);
  CHECK(r.status().code() == absl::StatusCode::kDataLoss);
  std::filesystem::remove(path);
  r = TableFileReader::Open(path, info->size_bytes, info->crc32c);
  CHECK(r.status().code() == absl::StatusCode::kDataLoss);
  CHECK(std::string(r.status().message()).find(path) != std::string::npos);
}

}  // namespace
}  // namespace tessera::storage
