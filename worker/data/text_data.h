// Text training data: libsvm ("label idx:val idx:val ...") and Criteo-style TSV (label, 13
// integer features, 26 hashed categorical features). Both become a SparseDataset: per example
// a label, sparse keys with values, and (Criteo) dense features. Parsing errors name the file,
// the line and the field; nothing is guessed.
#ifndef TESSERA_WORKER_TEXT_DATA_H_
#define TESSERA_WORKER_TEXT_DATA_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace tessera {

struct SparseDataset {
  std::vector<float> labels;            // per example (libsvm: as written; Criteo: 0 or 1)
  std::vector<uint64_t> offsets = {0};  // example i's keys are [offsets[i], offsets[i + 1])
  std::vector<uint64_t> keys;
  std::vector<float> values;  // one per key (1 for categorical features)
  uint32_t num_dense = 0;     // dense features per example (Criteo: 13)
  std::vector<float> dense;   // num_examples x num_dense

  size_t num_examples() const { return labels.size(); }
};

// libsvm: one example per line, "label key:value key:value ..." (keys are uint64, any order;
// '#' starts a comment). Errors: INVALID_ARGUMENT naming file:line and the bad token.
absl::StatusOr<SparseDataset> ParseLibsvm(absl::string_view text, absl::string_view name);
absl::StatusOr<SparseDataset> ReadLibsvm(const std::string& path);

// Criteo TSV: label, 13 integer columns (empty = missing), 26 categorical columns (hex
// strings, empty = missing), tab-separated. Integers become dense features log(1 + max(x, 0))
// (0 when missing); a categorical value v of column c becomes key CriteoKey(c, v), a missing
// one CriteoKey(c, "") (one "missing" id per column), so every example has 26 keys in column
// order, as the embedding model expects.
absl::StatusOr<SparseDataset> ParseCriteo(absl::string_view text, absl::string_view name);
absl::StatusOr<SparseDataset> ReadCriteo(const std::string& path);

// A Criteo file parsed on a background thread while training reads the examples parsed so far
// (docs/worker.md, "Pipeline"). The file is read into memory and its example lines counted
// first, so every array of data() has its final size from the start and never moves; examples
// not parsed yet read as zeros.
class CriteoStream {
 public:
  // NOT_FOUND when the file cannot be read; parse errors come from WaitFor. With `wanted`,
  // only the examples it accepts are parsed (a worker's own batches); the others stay zeros.
  static absl::StatusOr<std::unique_ptr<CriteoStream>> Open(
      const std::string& path, std::function<bool(size_t example)> wanted = nullptr);
  ~CriteoStream();  // stops the parser

  const SparseDataset& data() const { return data_; }
  // Blocks until the first n examples are parsed. The parse error (file:line) when parsing
  // stopped before them; OUT_OF_RANGE beyond the file's examples.
  absl::Status WaitFor(size_t n);

 private:
  CriteoStream() = default;
  void Parse();

  std::string path_;
  std::function<bool(size_t)> wanted_;
  std::string text_;
  SparseDataset data_;  // sized by Open; elements written by the parser before it publishes
  std::atomic<bool> stop_{false};
  absl::Mutex mu_;
  size_t parsed_ ABSL_GUARDED_BY(mu_) = 0;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  std::thread parser_;
};

// The key of categorical column `column` (0..25) holding `value`: distinct columns never share
// keys for the same value (the column is hashed in).
uint64_t CriteoKey(uint32_t column, absl::string_view value);

// This worker's part of a dataset: examples i with i % num_workers == worker.
SparseDataset ShardOf(const SparseDataset& data, uint32_t worker, uint32_t num_workers);

}  // namespace tessera

#endif  // TESSERA_WORKER_TEXT_DATA_H_
