#include "worker/data/idx.h"

#include <zlib.h>

#include <algorithm>
#include <memory>

#include "absl/strings/str_format.h"

namespace tessera {
namespace {

struct GzCloser {
  void operator()(gzFile f) const { gzclose(f); }
};
using GzFile = std::unique_ptr<gzFile_s, GzCloser>;

// Reads exactly n bytes; false on a short read.
bool ReadFully(gzFile f, void* out, size_t n) {
  char* p = static_cast<char*>(out);
  while (n > 0) {
    const unsigned chunk = static_cast<unsigned>(std::min<size_t>(n, 1 << 30));
    const int got = gzread(f, p, chunk);
    if (got <= 0) return false;
    p += got;
    n -= static_cast<size_t>(got);
  }
  return true;
}

uint32_t BigEndian32(const uint8_t b[4]) {
  return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | b[3];
}

}  // namespace

absl::StatusOr<IdxArray> ReadIdx(const std::string& path) {
  GzFile f(gzopen(path.c_str(), "rb"));  // reads plain files as they are
  if (f == nullptr) return absl::NotFoundError(absl::StrFormat("cannot open IDX file %s", path));
  uint8_t magic[4];
  if (!ReadFully(f.get(), magic, 4)) {
    return absl::DataLossError(absl::StrFormat("%s: shorter than an IDX header", path));
  }
  if (magic[0] != 0 || magic[1] != 0 || magic[3] == 0 || magic[3] > 4) {
    return absl::DataLossError(absl::StrFormat("%s: not an IDX file (magic %02x%02x%02x%02x)", path,
                                               magic[0], magic[1], magic[2], magic[3]));
  }
  if (magic[2] != 0x08) {
    return absl::DataLossError(absl::StrFormat(
        "%s: IDX element type 0x%02x is not supported (only unsigned byte, 0x08)", path, magic[2]));
  }
  IdxArray out;
  uint64_t total = 1;
  for (int d = 0; d < magic[3]; ++d) {
    uint8_t b[4];
    if (!ReadFully(f.get(), b, 4)) {
      return absl::DataLossError(absl::StrFormat("%s: truncated IDX header", path));
    }
    out.dims.push_back(BigEndian32(b));
    total *= out.dims.back();
    if (total > (uint64_t{1} << 34)) {
      return absl::DataLossError(absl::StrFormat("%s: IDX sizes are implausibly large", path));
    }
  }
  out.data.resize(total);
  if (!ReadFully(f.get(), out.data.data(), total)) {
    return absl::DataLossError(
        absl::StrFormat("%s: truncated: the header promises %u bytes of data", path, total));
  }
  uint8_t extra;
  if (gzread(f.get(), &extra, 1) > 0) {
    return absl::DataLossError(absl::StrFormat("%s: trailing bytes after the IDX data", path));
  }
  return out;
}

absl::StatusOr<IdxDataset> ReadIdxDataset(const std::string& images, const std::string& labels) {
  absl::StatusOr<IdxArray> x = ReadIdx(images);
  if (!x.ok()) return x.status();
  absl::StatusOr<IdxArray> y = ReadIdx(labels);
  if (!y.ok()) return y.status();
  if (x->dims.size() != 3 || y->dims.size() != 1 || x->dims[0] != y->dims[0]) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s and %s do not form a labelled image set (want n x rows x cols images and n labels)",
        images, labels));
  }
  IdxDataset d;
  d.num_examples = x->dims[0];
  d.num_features = x->dims[1] * x->dims[2];
  d.features.resize(x->data.size());
  for (size_t i = 0; i < x->data.size(); ++i) d.features[i] = x->data[i] / 255.0f;
  d.labels = std::move(y->data);
  for (uint8_t l : d.labels) d.num_classes = std::max<uint32_t>(d.num_classes, l + 1u);
  return d;
}

}  // namespace tessera
