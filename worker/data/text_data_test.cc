#include "worker/data/text_data.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tessera {
namespace {

TEST_CASE("libsvm lines become labelled sparse examples", "[data]") {
  absl::StatusOr<SparseDataset> d =
      ParseLibsvm("1 3:0.5 17:1\n# a comment line\n\n-1 2:2.5  # trailing comment\n0\n", "t");
  REQUIRE(d.ok());
  REQUIRE(d->num_examples() == 3);
  CHECK(d->labels == std::vector<float>{1, -1, 0});
  CHECK(d->offsets == std::vector<uint64_t>{0, 2, 3, 3});
  CHECK(d->keys == std::vector<uint64_t>{3, 17, 2});
  CHECK(d->values == std::vector<float>{0.5f, 1, 2.5f});
}

TEST_CASE("bad libsvm input names the line and the token", "[data]") {
  for (const char* bad : {"x 1:2", "1 3-2", "1 3:abc", "1 :1", "1 3:nan"}) {
    absl::StatusOr<SparseDataset> d = ParseLibsvm(absl::StrCat("1 1:1\n", bad), "f.svm");
    INFO(bad << " -> " << d.status().ToString());
    CHECK(d.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(std::string(d.status().message()).find("f.svm:2:") == 0);
  }
}

std::string CriteoLine(const std::string& label, int missing_every = 0) {
  std::vector<std::string> cols = {label};
  for (int i = 0; i < 13; ++i) cols.push_back(missing_every && i % missing_every == 0 ? "" : "3");
  for (int c = 0; c < 26; ++c)
    cols.push_back(missing_every && c % missing_every == 0 ? "" : "a1b2");
  return absl::StrJoin(cols, "\t");
}

TEST_CASE("Criteo TSV: dense log features and per-column hashed categorical keys", "[data]") {
  absl::StatusOr<SparseDataset> d =
      ParseCriteo(CriteoLine("1") + "\n" + CriteoLine("0", 2) + "\r\n", "c.tsv");
  INFO(d.status().ToString());
  REQUIRE(d.ok());
  REQUIRE(d->num_examples() == 2);
  CHECK(d->labels == std::vector<float>{1, 0});
  CHECK(d->num_dense == 13);
  CHECK(d->dense[0] == Approx(std::log1p(3.0f)));
  CHECK(d->dense[13] == 0);                               // missing
  CHECK(d->offsets == std::vector<uint64_t>{0, 26, 52});  // a missing value has its own key
  CHECK(d->keys[26] == CriteoKey(0, ""));
  CHECK(d->keys[27] == CriteoKey(1, "a1b2"));
  // The same value in two columns gives two keys.
  CHECK(d->keys[0] == CriteoKey(0, "a1b2"));
  CHECK(d->keys[0] != d->keys[1]);
  const SparseDataset half = ShardOf(*d, 1, 2);
  CHECK(half.num_examples() == 1);
  CHECK(half.keys.size() == 26);
  CHECK(half.dense.size() == 13);
}

TEST_CASE("bad Criteo input names the line and the column", "[data]") {
  CHECK(ParseCriteo("1\t2\t3\n", "c").status().code() == absl::StatusCode::kInvalidArgument);
  absl::StatusOr<SparseDataset> d = ParseCriteo(CriteoLine("2"), "c");
  CHECK(std::string(d.status().message()).find("c:1: label '2'") == 0);
  std::string line = CriteoLine("1");
  line.replace(line.find("\t3"), 2, "\tzz");
  d = ParseCriteo(line, "c");
  CHECK(std::string(d.status().message()).find("integer column 1 holds 'zz'") != std::string::npos);
  CHECK(ReadLibsvm("/nonexistent").status().code() == absl::StatusCode::kNotFound);
}

// Writes `lines` Criteo lines (with a blank line every 100th) to a temporary file, line
// `bad_line` (1-based, 0: none) broken; returns its path.
std::string WriteCriteoFile(int lines, int bad_line = 0) {
  char path[] = "/tmp/tessera-criteo-XXXXXX";
  const int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  std::string text;
  for (int i = 1; i <= lines; ++i) {
    if (i == bad_line) {
      text += "1\tnot a criteo line\n";
    } else if (i % 100 == 0) {
      text += "\n";
    } else {
      text += CriteoLine(i % 3 == 0 ? "1" : "0", i % 7) + "\n";
    }
  }
  REQUIRE(write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
  close(fd);
  return path;
}

TEST_CASE("a Criteo stream yields what the whole-file reader does, readable while it parses",
          "[data]") {
  const std::string path = WriteCriteoFile(5000);
  absl::StatusOr<std::unique_ptr<CriteoStream>> stream = CriteoStream::Open(path);
  REQUIRE(stream.ok());
  const SparseDataset& d = (*stream)->data();
  REQUIRE(d.num_examples() == 4950);  // sized at once (blank lines are not examples)
  CHECK((*stream)->WaitFor(1000).ok());
  CHECK((*stream)->WaitFor(4950).ok());
  CHECK((*stream)->WaitFor(4951).code() == absl::StatusCode::kOutOfRange);
  absl::StatusOr<SparseDataset> whole = ReadCriteo(path);
  REQUIRE(whole.ok());
  CHECK(d.labels == whole->labels);
  CHECK(d.offsets == whole->offsets);
  CHECK(d.keys == whole->keys);
  CHECK(d.values == whole->values);
  CHECK(d.dense == whole->dense);
  std::remove(path.c_str());
}

TEST_CASE("a Criteo stream parses only the examples a worker wants", "[data]") {
  // Worker 1 of 2 with batches of 100 examples: examples 100-199, 300-399, ...; the bad line
  // (line 51: example 50) is worker 0's, so this worker never parses it.
  const std::string path = WriteCriteoFile(5000, 51);
  absl::StatusOr<std::unique_ptr<CriteoStream>> stream =
      CriteoStream::Open(path, [](size_t i) { return i / 100 % 2 == 1; });
  REQUIRE(stream.ok());
  CHECK((*stream)->WaitFor(4950).ok());
  const std::string fixed = WriteCriteoFile(5000);
  absl::StatusOr<SparseDataset> whole = ReadCriteo(fixed);
  REQUIRE(whole.ok());
  const SparseDataset& d = (*stream)->data();
  REQUIRE(d.num_examples() == whole->num_examples());
  size_t same = 0, zero = 0;
  for (size_t i = 0; i < d.num_examples(); ++i) {
    const bool mine = i / 100 % 2 == 1;
    const bool equal = d.labels[i] == whole->labels[i] && d.keys[26 * i] == whole->keys[26 * i] &&
                       d.dense[13 * i] == whole->dense[13 * i];
    same += mine && equal;
    zero += !mine && d.keys[26 * i] == 0;
  }
  CHECK(same == 2450);  // examples 100-199, 300-399, ..., 4900-4949
  CHECK(zero == 2500);
  std::remove(path.c_str());
  std::remove(fixed.c_str());
}

TEST_CASE("a Criteo stream reports a bad line to whoever waits past it", "[data]") {
  const std::string path = WriteCriteoFile(5000, 3001);
  absl::StatusOr<std::unique_ptr<CriteoStream>> stream = CriteoStream::Open(path);
  REQUIRE(stream.ok());
  CHECK((*stream)->WaitFor(2000).ok());  // (lines before the bad one are fine)
  const absl::Status s = (*stream)->WaitFor(4000);
  INFO(s.ToString());
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(s.message()).find(path + ":3001: 2 columns") == 0);
  std::remove(path.c_str());
  CHECK(CriteoStream::Open("/nonexistent").status().code() == absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace tessera
