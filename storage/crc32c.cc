#include "storage/crc32c.h"

#include <rocksdb/file_checksum.h>

#include <array>
#include <cstring>
#include <string>

namespace tessera::storage {
namespace {

constexpr uint32_t kPoly = 0x82f63b78;  // reflected Castagnoli polynomial

constexpr std::array<uint32_t, 256> MakeTable() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
    t[i] = c;
  }
  return t;
}
constexpr std::array<uint32_t, 256> kTable = MakeTable();

uint32_t Portable(uint32_t crc, const char* data, size_t n) {
  crc = ~crc;
  const auto* p = reinterpret_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) crc = kTable[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t Hardware(uint32_t crc, const char* data, size_t n) {
  uint64_t c = ~crc & 0xffffffffu;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, data, 8);
    c = __builtin_ia32_crc32di(c, v);
    data += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n-- > 0) c32 = __builtin_ia32_crc32qi(c32, static_cast<unsigned char>(*data++));
  return ~c32;
}
const bool kHaveHardware = __builtin_cpu_supports("sse4.2");
#else
const bool kHaveHardware = false;
uint32_t Hardware(uint32_t crc, const char* data, size_t n) { return Portable(crc, data, n); }
#endif

class Generator final : public rocksdb::FileChecksumGenerator {
 public:
  void Update(const char* data, size_t n) override { crc_ = Crc32cExtend(crc_, data, n); }
  void Finalize() override {
    for (int i = 0; i < 4; ++i) out_.push_back(static_cast<char>(crc_ >> (24 - 8 * i)));
  }
  std::string GetChecksum() const override { return out_; }
  const char* Name() const override { return "TesseraCrc32c"; }

 private:
  uint32_t crc_ = 0;
  std::string out_;
};

class Factory final : public rocksdb::FileChecksumGenFactory {
 public:
  std::unique_ptr<rocksdb::FileChecksumGenerator> CreateFileChecksumGenerator(
      const rocksdb::FileChecksumGenContext&) override {
    return std::make_unique<Generator>();
  }
  static const char* kClassName() { return "TesseraCrc32cFactory"; }
  const char* Name() const override { return kClassName(); }
};

}  // namespace

uint32_t Crc32cExtend(uint32_t crc, const char* data, size_t n) {
  return kHaveHardware ? Hardware(crc, data, n) : Portable(crc, data, n);
}

uint32_t Crc32cExtendPortableForTesting(uint32_t crc, const char* data, size_t n) {
  return Portable(crc, data, n);
}

std::shared_ptr<rocksdb::FileChecksumGenFactory> Crc32cChecksumFactory() {
  static const auto factory = std::make_shared<Factory>();
  return factory;
}

}  // namespace tessera::storage
