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

// Copies the field whose tag was just read (not a bulk one) from r to *small, for protobuf.
absl::Status AppendSmallField(SliceReader& r, uint64_t tag, size_t total,
                              const google::protobuf::MessageLite& m, std::string* small) {
  AppendVarint(tag, small);
  uint64_t v;
  switch (static_cast<int>(tag & 7)) {
    case 0:
      if (!r.ReadVarint(&v)) return Malformed(m, total, "truncated varint");
      AppendVarint(v, small);
      return absl::OkStatus();
    case 1:
    case 5: {
      const size_t n = (tag & 7) == 1 ? 8 : 4;
      const size_t at = small->size();
      small->resize(at + n);
      if (!r.Read(n, small->data() + at)) return Malformed(m, total, "truncated");
      return absl::OkStatus();
    }
    case 2: {
      if (!r.ReadVarint(&v) || v > total) return Malformed(m, total, "bad length");
      AppendVarint(v, small);
      const size_t at = small->size();
      small->resize(at + v);
      if (!r.Read(static_cast<size_t>(v), small->data() + at))
        return Malformed(m, total, "truncated");
      return absl::OkStatus();
    }
    default:
      return Malformed(m, total, "unsupported wire type");
  }
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
                                const std::vector<BulkField>& bulk, int padding_field_number) {
  std::string small;
  header.AppendToString(&small);
  std::vector<grpc::Slice> slices;
  size_t sent = 0;  // bytes in `slices`
  for (const BulkField& f : bulk) {
    const uint64_t tag = (static_cast<uint64_t>(f.field_number) << 3) | 2;
    if (padding_field_number > 0) {
      // Where the field's bytes would start, and a padding field (tag, length, zeros) that
      // moves them to a multiple of 8. (Its length stays below 128: a one-byte varint.)
      const uint64_t pad_tag = (static_cast<uint64_t>(padding_field_number) << 3) | 2;
      const size_t start = sent + small.size() + VarintSize(tag) + VarintSize(f.size);
      size_t shift = (8 - start % 8) % 8;
      if (shift > 0) {
        const size_t overhead = VarintSize(pad_tag) + 1;
        while (shift < overhead) shift += 8;
        AppendVarint(pad_tag, &small);
        AppendVarint(shift - overhead, &small);
        small.append(shift - overhead, '\0');
      }
    }
    AppendVarint(tag, &small);
    AppendVarint(f.size, &small);
    if (f.size == 0) {
      if (f.release != nullptr) f.release(f.release_arg);
      continue;
    }
    slices.emplace_back(small);  // copies the (small) bytes so far
    sent += small.size() + f.size;
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
    if (absl::Status st = AppendSmallField(r, tag, total, *header, &small); !st.ok()) return st;
  }
  if (!header->ParseFromString(small)) return Malformed(*header, total, "bad small fields");
  if (!saw_bulk) {
    BulkDest dest;
    return sink(0, &dest);
  }
  return absl::OkStatus();
}

absl::Status DecodeWithBulkViews(const grpc::ByteBuffer& bytes,
                                 google::protobuf::MessageLite* header, BulkView* views,
                                 size_t num_views) {
  std::vector<grpc::Slice> slices;
  const size_t total = bytes.Length();
  if (total > 0 && !bytes.Dump(&slices).ok()) return Malformed(*header, total, "unreadable");
  SliceReader r(std::move(slices));
  std::string small;
  while (!r.done()) {
    uint64_t tag;
    if (!r.ReadVarint(&tag) || tag >> 3 == 0) return Malformed(*header, total, "bad field tag");
    const int field = static_cast<int>(tag >> 3);
    const int wire_type = static_cast<int>(tag & 7);
    BulkView* view = nullptr;
    for (size_t i = 0; i < num_views; ++i) {
      if (views[i].field_number == field) view = &views[i];
    }
    if (view != nullptr) {
      uint64_t len;
      if (wire_type != 2 || !r.ReadVarint(&len) || len > total) {
        return Malformed(*header, total, "bad bulk field");
      }
      if (view->present) return Malformed(*header, total, "bulk field repeated");
      view->present = true;
      view->size = static_cast<size_t>(len);
      if (!r.ReadInPlace(view->size, &view->data)) {
        view->spill.resize(view->size);
        if (!r.Read(view->size, view->spill.data())) return Malformed(*header, total, "truncated");
        view->data = view->spill.data();
      }
      continue;
    }
    if (absl::Status st = AppendSmallField(r, tag, total, *header, &small); !st.ok()) return st;
  }
  if (!header->ParseFromString(small)) return Malformed(*header, total, "bad small fields");
  return absl::OkStatus();
}

}  // namespace tessera
