#include "common/bulk_codec.h"

#include <google/protobuf/message_lite.h>

#include <cstring>

#include "absl/strings/str_format.h"
#include "common/slice_reader.h"

namespace tessera {
namespace {

absl::Status Malformed(const google::protobuf::MessageLite& m, size_t size, const char* what) {
  return absl::InvalidArgumentError(
      absl::StrFormat("malformed %s (%u bytes): %s", m.GetTypeName(), size, what));
}

}  // namespace

BulkField OwnedBulk(int field_number, std::string bytes) {
  auto* owned = new std::string(std::move(bytes));
  return BulkField{field_number, owned->data(), owned->size(),
                   [](void* p) { delete static_cast<std::string*>(p); }, owned};
}

BulkField OwnedBulk(int field_number, BulkBuffer bytes) {
  char* data = bytes.data.release();
  return BulkField{field_number, data, bytes.size, [](void* p) { delete[] static_cast<char*>(p); },
                   data};
}

grpc::ByteBuffer EncodeWithBulk(const google::protobuf::MessageLite& header,
                                const std::vector<BulkField>& bulk) {
  std::string small;
  header.AppendToString(&small);
  std::vector<grpc::Slice> slices;
  for (const BulkField& f : bulk) {
    AppendVarint((static_cast<uint64_t>(f.field_number) << 3) | 2, &small);
    AppendVarint(f.size, &small);
    if (f.size == 0) {
      if (f.release != nullptr) f.release(f.release_arg);
      continue;
    }
    slices.emplace_back(small);  // copies the (small) bytes so far
    small.clear();
    if (f.release != nullptr) {
      slices.emplace_back(const_cast<void*>(f.data), f.size, f.release, f.release_arg);
    } else {
      slices.emplace_back(f.data, f.size, grpc::Slice::STATIC_SLICE);
    }
  }
  if (!small.empty()) slices.emplace_back(small);
  return grpc::ByteBuffer(slices.data(), slices.size());
}

absl::Status DecodeWithBulk(const grpc::ByteBuffer& bytes, google::protobuf::MessageLite* header,
                            int bulk_field_number, const BulkSink& sink) {
  std::vector<grpc::Slice> slices;
  const size_t total = bytes.Length();
  if (total > 0 && !bytes.Dump(&slices).ok()) return Malformed(*header, total, "unreadable");
  SliceReader r(std::move(slices));
  std::string small;
  bool saw_bulk = false;
  while (!r.done()) {
    uint64_t tag;
    if (!r.ReadVarint(&tag) || tag >> 3 == 0) return Malformed(*header, total, "bad field tag");
    const int field = static_cast<int>(tag >> 3);
    const int wire_type = static_cast<int>(tag & 7);
    if (field == bulk_field_number) {
      uint64_t len;
      if (wire_type != 2 || !r.ReadVarint(&len) || len > total) {
        return Malformed(*header, total, "bad bulk field");
      }
      if (saw_bulk) return Malformed(*header, total, "bulk field repeated");
      saw_bulk = true;
      BulkDest dest;
      if (absl::Status s = sink(static_cast<size_t>(len), &dest); !s.ok()) return s;
      const bool read = dest.record_bytes == 0
                            ? r.Read(static_cast<size_t>(len), dest.data)
                            : r.ReadScattered(static_cast<size_t>(len), dest.data,
                                              dest.record_bytes, dest.places);
      if (!read) return Malformed(*header, total, "truncated");
      continue;
    }
    AppendVarint(tag, &small);
    uint64_t v;
    switch (wire_type) {
      case 0:
        if (!r.ReadVarint(&v)) return Malformed(*header, total, "truncated varint");
        AppendVarint(v, &small);
        break;
      case 1:
      case 5: {
        const size_t n = wire_type == 1 ? 8 : 4;
        const size_t at = small.size();
        small.resize(at + n);
        if (!r.Read(n, small.data() + at)) return Malformed(*header, total, "truncated");
        break;
      }
      case 2: {
        if (!r.ReadVarint(&v) || v > total) return Malformed(*header, total, "bad length");
        AppendVarint(v, &small);
        const size_t at = small.size();
        small.resize(at + v);
        if (!r.Read(static_cast<size_t>(v), small.data() + at)) {
          return Malformed(*header, total, "truncated");
        }
        break;
      }
      default:
        return Malformed(*header, total, "unsupported wire type");
    }
  }
  if (!header->ParseFromString(small)) return Malformed(*header, total, "bad small fields");
  if (!saw_bulk) {
    BulkDest dest;
    return sink(0, &dest);
  }
  return absl::OkStatus();
}

}  // namespace tessera
