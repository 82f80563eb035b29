#include "worker/data/idx.h"

#include <unistd.h>
#include <zlib.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>

namespace tessera {
namespace {

std::string Header(uint8_t type, std::vector<uint32_t> dims) {
  std::string h = {0, 0, static_cast<char>(type), static_cast<char>(dims.size())};
  for (uint32_t d : dims) {
    for (int shift = 24; shift >= 0; shift -= 8) h.push_back(static_cast<char>(d >> shift));
  }
  return h;
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/tessera-idx-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string Write(const std::string& name, const std::string& bytes, bool gzip = false) {
    const std::string p = path_ + "/" + name;
    if (gzip) {
      gzFile f = gzopen(p.c_str(), "wb");
      gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
      gzclose(f);
    } else {
      FILE* f = std::fopen(p.c_str(), "wb");
      std::fwrite(bytes.data(), 1, bytes.size(), f);
      std::fclose(f);
    }
    return p;
  }

 private:
  std::string path_;
};

TEST_CASE("IDX images and labels read from plain and gzip files", "[idx]") {
  TempDir dir;
  std::string images = Header(0x08, {2, 2, 3});
  for (int i = 0; i < 12; ++i) images.push_back(static_cast<char>(i * 20));
  std::string labels = Header(0x08, {2}) + std::string{"\x03\x07", 2};
  for (bool gz : {false, true}) {
    absl::StatusOr<IdxDataset> d =
        ReadIdxDataset(dir.Write(gz ? "x.gz" : "x", images, gz), dir.Write("y", labels));
    INFO(d.status().ToString());
    REQUIRE(d.ok());
    CHECK(d->num_examples == 2);
    CHECK(d->num_features == 6);
    CHECK(d->num_classes == 8);
    CHECK(d->labels == std::vector<uint8_t>{3, 7});
    CHECK(d->features[6] == Approx(120 / 255.0));
  }
}

TEST_CASE("bad IDX files are refused with the file and the reason", "[idx]") {
  TempDir dir;
  auto code_of = [](const absl::StatusOr<IdxArray>& r) { return r.status().code(); };
  CHECK(code_of(ReadIdx("/nonexistent/file")) == absl::StatusCode::kNotFound);
  const std::string bad_magic = dir.Write("m", std::string("\x01\x02\x08\x01", 4));
  absl::StatusOr<IdxArray> r = ReadIdx(bad_magic);
  CHECK(r.status().code() == absl::StatusCode::kDataLoss);
  CHECK(std::string(r.status().message()).find(bad_magic) != std::string::npos);
  CHECK(code_of(ReadIdx(dir.Write("f", Header(0x0d, {1}) + "abcd")))  // float type
        == absl::StatusCode::kDataLoss);
  CHECK(code_of(ReadIdx(dir.Write("t", Header(0x08, {10}) + "abc")))  // truncated
        == absl::StatusCode::kDataLoss);
  CHECK(code_of(ReadIdx(dir.Write("e", Header(0x08, {2}) + "abc")))  // trailing bytes
        == absl::StatusCode::kDataLoss);
  const std::string x = dir.Write("x", Header(0x08, {2, 1, 1}) + "ab");
  const std::string y = dir.Write("y", Header(0x08, {3}) + "abc");
  CHECK(ReadIdxDataset(x, y).status().code() == absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tessera
