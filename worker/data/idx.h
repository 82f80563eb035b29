// IDX files (the MNIST format): a big-endian header (magic 0x0000TTDD: type TT, DD dimensions,
// then DD uint32 sizes) followed by the data. Plain or gzip-compressed (Debian's
// dataset-fashion-mnist ships .gz files).
#ifndef TESSERA_WORKER_IDX_H_
#define TESSERA_WORKER_IDX_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tessera {

// An IDX array of unsigned bytes (type 0x08), the type of every MNIST-format file.
struct IdxArray {
  std::vector<uint32_t> dims;
  std::vector<uint8_t> data;  // row-major, prod(dims) bytes
};

// Reads `path` (gzip or plain). Errors: NOT_FOUND (no such file), DATA_LOSS (bad magic, a type
// other than unsigned byte, truncated data or trailing bytes), each naming the file.
absl::StatusOr<IdxArray> ReadIdx(const std::string& path);

// A labelled image set: features scaled to [0, 1], one row per example.
struct IdxDataset {
  uint32_t num_examples = 0;
  uint32_t num_features = 0;  // rows x cols of one image
  std::vector<float> features;
  std::vector<uint8_t> labels;
  uint32_t num_classes = 0;  // 1 + the largest label
};

// Reads an images file (n x rows x cols) and its labels file (n). Errors as ReadIdx, plus
// INVALID_ARGUMENT when the two files disagree on n.
absl::StatusOr<IdxDataset> ReadIdxDataset(const std::string& images, const std::string& labels);

// Where Debian's dataset-fashion-mnist installs its files.
inline constexpr char kFashionMnistDir[] = "/usr/share/datasets/fashion-mnist";

}  // namespace tessera

#endif  // TESSERA_WORKER_IDX_H_
