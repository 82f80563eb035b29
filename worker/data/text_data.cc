#include "worker/data/text_data.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/hash.h"

namespace tessera {
namespace {

absl::Status Bad(absl::string_view name, size_t line, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrFormat("%s:%u: %s", name, line, what));
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrFormat("cannot open %s", path));
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

absl::StatusOr<SparseDataset> ParseLibsvm(absl::string_view text, absl::string_view name) {
  SparseDataset d;
  size_t line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (const size_t hash = line.find('#'); hash != absl::string_view::npos) {
      line = line.substr(0, hash);
    }
    std::vector<absl::string_view> tokens = absl::StrSplit(line, ' ', absl::SkipWhitespace());
    if (tokens.empty()) continue;
    float label;
    if (!absl::SimpleAtof(tokens[0], &label) || !std::isfinite(label)) {
      return Bad(name, line_no, absl::StrFormat("bad label '%s'", tokens[0]));
    }
    for (size_t t = 1; t < tokens.size(); ++t) {
      const size_t colon = tokens[t].find(':');
      uint64_t key;
      float value;
      if (colon == absl::string_view::npos || !absl::SimpleAtoi(tokens[t].substr(0, colon), &key) ||
          !absl::SimpleAtof(tokens[t].substr(colon + 1), &value) || !std::isfinite(value)) {
        return Bad(name, line_no, absl::StrFormat("bad feature '%s' (want key:value)", tokens[t]));
      }
      d.keys.push_back(key);
      d.values.push_back(value);
    }
    d.labels.push_back(label);
    d.offsets.push_back(d.keys.size());
  }
  return d;
}

uint64_t CriteoKey(uint32_t column, absl::string_view value) {
  return Mix64(Fnv1a64(value) ^ (uint64_t{column + 1} * 0x9e3779b97f4a7c15ull));
}

namespace {

constexpr int kCriteoDense = 13, kCriteoCategorical = 26;

// One Criteo line (without its '\n'; a trailing '\r' is dropped): false when it is empty.
absl::StatusOr<bool> ParseCriteoLine(absl::string_view line, size_t line_no, absl::string_view name,
                                     float* label, float* dense, uint64_t* keys) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  if (line.empty()) return false;
  std::vector<absl::string_view> cols = absl::StrSplit(line, '\t');
  if (cols.size() != 1 + kCriteoDense + kCriteoCategorical) {
    return Bad(name, line_no,
               absl::StrFormat("%u columns; a Criteo line has 40 (label, 13 integer, 26 "
                               "categorical)",
                               cols.size()));
  }
  if (cols[0] != "0" && cols[0] != "1") {
    return Bad(name, line_no, absl::StrFormat("label '%s' is not 0 or 1", cols[0]));
  }
  *label = cols[0] == "1" ? 1.0f : 0.0f;
  for (int i = 0; i < kCriteoDense; ++i) {
    int64_t v = 0;
    if (!cols[1 + i].empty() && !absl::SimpleAtoi(cols[1 + i], &v)) {
      return Bad(name, line_no,
                 absl::StrFormat("integer column %d holds '%s'", i + 1, cols[1 + i]));
    }
    dense[i] = std::log1p(static_cast<float>(std::max<int64_t>(v, 0)));
  }
  for (int c = 0; c < kCriteoCategorical; ++c) {
    keys[c] = CriteoKey(c, cols[1 + kCriteoDense + c]);  // (missing: the column's own "" key)
  }
  return true;
}

}  // namespace

absl::StatusOr<SparseDataset> ParseCriteo(absl::string_view text, absl::string_view name) {
  SparseDataset d;
  d.num_dense = kCriteoDense;
  size_t line_no = 0;
  float label, dense[kCriteoDense];
  uint64_t keys[kCriteoCategorical];
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    absl::StatusOr<bool> parsed = ParseCriteoLine(line, ++line_no, name, &label, dense, keys);
    if (!parsed.ok()) return parsed.status();
    if (!*parsed) continue;
    d.labels.push_back(label);
    d.dense.insert(d.dense.end(), dense, dense + kCriteoDense);
    d.keys.insert(d.keys.end(), keys, keys + kCriteoCategorical);
    d.values.insert(d.values.end(), kCriteoCategorical, 1.0f);
    d.offsets.push_back(d.keys.size());
  }
  return d;
}

absl::StatusOr<std::unique_ptr<CriteoStream>> CriteoStream::Open(
    const std::string& path, std::function<bool(size_t example)> wanted) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return text.status();
  auto stream = std::unique_ptr<CriteoStream>(new CriteoStream());
  stream->path_ = path;
  stream->wanted_ = std::move(wanted);
  stream->text_ = *std::move(text);
  // Example lines: the non-empty ones (a lone "\r" is empty too).
  size_t examples = 0;
  for (absl::string_view line : absl::StrSplit(stream->text_, '\n')) {
    examples += !line.empty() && line != "\r";
  }
  SparseDataset& d = stream->data_;
  d.num_dense = kCriteoDense;
  d.labels.assign(examples, 0.0f);
  d.dense.assign(examples * kCriteoDense, 0.0f);
  d.keys.assign(examples * kCriteoCategorical, 0);
  d.values.assign(examples * kCriteoCategorical, 1.0f);
  d.offsets.resize(examples + 1);
  for (size_t i = 0; i <= examples; ++i) d.offsets[i] = i * kCriteoCategorical;
  CriteoStream* raw = stream.get();
  stream->parser_ = std::thread([raw] { raw->Parse(); });
  return stream;
}

CriteoStream::~CriteoStream() {
  stop_.store(true);
  parser_.join();
}

void CriteoStream::Parse() {
  SparseDataset& d = data_;
  const size_t examples = d.labels.size();
  size_t line_no = 0, i = 0;
  float label, dense[kCriteoDense];
  uint64_t keys[kCriteoCategorical];
  absl::Status error;
  for (absl::string_view line : absl::StrSplit(text_, '\n')) {
    if (stop_.load(std::memory_order_relaxed)) break;
    ++line_no;
    if (wanted_ && i < examples && !wanted_(i)) {  // another worker's: counted, not parsed
      if (!line.empty() && line != "\r") ++i;
      if (i % 1024 == 0 && i > 0) {
        absl::MutexLock lock(&mu_);
        parsed_ = i;
      }
      continue;
    }
    absl::StatusOr<bool> parsed = ParseCriteoLine(line, line_no, path_, &label, dense, keys);
    if (!parsed.ok()) {
      error = parsed.status();
      break;
    }
    if (!*parsed) continue;
    if (i == examples) {  // (Open counted the same lines: cannot happen)
      error = absl::InternalError(absl::StrFormat("%s changed while it was read", path_));
      break;
    }
    d.labels[i] = label;
    std::copy(dense, dense + kCriteoDense, d.dense.begin() + i * kCriteoDense);
    std::copy(keys, keys + kCriteoCategorical, d.keys.begin() + i * kCriteoCategorical);
    if (++i % 1024 == 0) {
      absl::MutexLock lock(&mu_);  // (publishes the elements written so far)
      parsed_ = i;
    }
  }
  absl::MutexLock lock(&mu_);
  parsed_ = i;
  error_ = error;
  done_ = true;
}

absl::Status CriteoStream::WaitFor(size_t n) {
  absl::MutexLock lock(&mu_);
  auto ready = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return parsed_ >= n || done_; };
  mu_.Await(absl::Condition(&ready));
  if (parsed_ >= n) return absl::OkStatus();
  if (!error_.ok()) return error_;
  return absl::OutOfRangeError(
      absl::StrFormat("%s has %u examples; %u were asked for", path_, parsed_, n));
}

absl::StatusOr<SparseDataset> ReadLibsvm(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return text.status();
  return ParseLibsvm(*text, path);
}

absl::StatusOr<SparseDataset> ReadCriteo(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return text.status();
  return ParseCriteo(*text, path);
}

SparseDataset ShardOf(const SparseDataset& data, uint32_t worker, uint32_t num_workers) {
  SparseDataset out;
  out.num_dense = data.num_dense;
  for (size_t i = worker; i < data.num_examples(); i += num_workers) {
    out.labels.push_back(data.labels[i]);
    for (uint64_t k = data.offsets[i]; k < data.offsets[i + 1]; ++k) {
      out.keys.push_back(data.keys[k]);
      out.values.push_back(data.values[k]);
    }
    out.offsets.push_back(out.keys.size());
    out.dense.insert(out.dense.end(), data.dense.begin() + i * data.num_dense,
                     data.dense.begin() + (i + 1) * data.num_dense);
  }
  return out;
}

}  // namespace tessera
