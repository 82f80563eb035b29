// A sequential reader over the slices of a grpc::ByteBuffer: varints, copies, and sub-slices
// that share the buffer's memory. Used to walk protobuf wire format without a protobuf copy.
#ifndef TESSERA_COMMON_SLICE_READER_H_
#define TESSERA_COMMON_SLICE_READER_H_

#include <grpcpp/support/slice.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace tessera {

// Protobuf's base-128 varint.
inline void AppendVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

inline size_t VarintSize(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

// Sequential reader over the slices of a ByteBuffer.
class SliceReader {
 public:
  explicit SliceReader(std::vector<grpc::Slice> slices) : slices_(std::move(slices)) { Skip0(); }

  bool done() const { return index_ >= slices_.size(); }

  bool ReadByte(uint8_t* b) {
    if (done()) return false;
    *b = slices_[index_].begin()[offset_];
    Advance(1);
    return true;
  }

  bool ReadVarint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b;
      if (!ReadByte(&b)) return false;
      *v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;
  }

  // Appends the next n bytes to `out` as slices that share the buffer's memory (no copy).
  bool ReadSlices(size_t n, std::vector<grpc::Slice>* out) {
    while (n > 0) {
      if (done()) return false;
      const size_t avail = slices_[index_].size() - offset_;
      const size_t take = n < avail ? n : avail;
      out->push_back(slices_[index_].sub(offset_, offset_ + take));
      Advance(take);
      n -= take;
    }
    return true;
  }

  // Copies n bytes (a whole number of records of record_bytes) to dest, record j at
  // dest + places[j] * record_bytes. A record may straddle slices.
  bool ReadScattered(size_t n, char* dest, size_t record_bytes, const uint32_t* places) {
    switch (record_bytes) {  // (common row sizes: each record copied by a few vector moves)
      case 32:
        return Scatter<32>(n, dest, record_bytes, places);
      case 64:
        return Scatter<64>(n, dest, record_bytes, places);
      case 128:
        return Scatter<128>(n, dest, record_bytes, places);
      case 256:
        return Scatter<256>(n, dest, record_bytes, places);
      default:
        return Scatter<0>(n, dest, record_bytes, places);
    }
  }

  // When the next n bytes lie within one slice: points *view at them (no copy; valid while the
  // slices live) and moves past them. Otherwise false, nothing consumed.
  bool ReadInPlace(size_t n, const char** view) {
    if (n == 0) {
      *view = "";
      return true;
    }
    if (done() || slices_[index_].size() - offset_ < n) return false;
    *view = reinterpret_cast<const char*>(slices_[index_].begin()) + offset_;
    Advance(n);
    return true;
  }

  // Copies n bytes to dest (or skips them when dest is null).
  bool Read(size_t n, char* dest) {
    while (n > 0) {
      if (done()) return false;
      const size_t avail = slices_[index_].size() - offset_;
      const size_t take = n < avail ? n : avail;
      if (dest != nullptr) {
        std::memcpy(dest, slices_[index_].begin() + offset_, take);
        dest += take;
      }
      Advance(take);
      n -= take;
    }
    return true;
  }

 private:
  // ReadScattered for records of kBytes (0: any size, record_bytes). Whole records inside a
  // slice are copied with a size known at compile time, their destinations prefetched ahead.
  template <size_t kBytes>
  bool Scatter(size_t n, char* dest, size_t record_bytes, const uint32_t* places) {
    constexpr size_t kAhead = 8;
    const size_t records = record_bytes == 0 ? 0 : n / record_bytes;
    size_t record = 0, in_record = 0;
    while (n > 0) {
      if (done()) return false;
      const char* src = reinterpret_cast<const char*>(slices_[index_].begin()) + offset_;
      size_t avail = slices_[index_].size() - offset_;
      if (avail > n) avail = n;
      Advance(avail);
      n -= avail;
      while (avail > 0) {
        if (in_record == 0 && avail >= record_bytes) {
          if (record + kAhead < records) {
            __builtin_prefetch(dest + places[record + kAhead] * record_bytes, 1);
          }
          char* to = dest + places[record] * record_bytes;
          if constexpr (kBytes > 0) {
            std::memcpy(to, src, kBytes);
          } else {
            std::memcpy(to, src, record_bytes);
          }
          src += record_bytes;
          avail -= record_bytes;
          ++record;
          continue;
        }
        const size_t take = avail < record_bytes - in_record ? avail : record_bytes - in_record;
        std::memcpy(dest + places[record] * record_bytes + in_record, src, take);
        src += take;
        avail -= take;
        in_record += take;
        if (in_record == record_bytes) {
          ++record;
          in_record = 0;
        }
      }
    }
    return true;
  }

  void Advance(size_t n) {
    offset_ += n;
    Skip0();
  }
  // Moves past exhausted (or empty) slices.
  void Skip0() {
    while (index_ < slices_.size() && offset_ >= slices_[index_].size()) {
      ++index_;
      offset_ = 0;
    }
  }

  std::vector<grpc::Slice> slices_;
  size_t index_ = 0;
  size_t offset_ = 0;
};

}  // namespace tessera

#endif  // TESSERA_COMMON_SLICE_READER_H_
