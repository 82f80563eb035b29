#include "storage/crc32c.h"

#include <catch2/catch.hpp>
#include <random>
#include <string>

namespace tessera::storage {
namespace {

TEST_CASE("crc32c matches the standard check values", "[crc32c]") {
  // RFC 3720 (iSCSI) test vectors and the catalogue check value of "123456789".
  CHECK(Crc32cExtend(0, "123456789", 9) == 0xe3069283u);
  const std::string zeros(32, '\0'), ones(32, '\xff');
  CHECK(Crc32cExtend(0, zeros.data(), 32) == 0x8a9136aau);
  CHECK(Crc32cExtend(0, ones.data(), 32) == 0x62a8ab43u);
}

TEST_CASE("the fast path and the fallback agree and extend", "[crc32c]") {
  std::mt19937 rng(1);
  std::string data(100003, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  for (size_t n : {0ul, 1ul, 7ul, 8ul, 9ul, 4096ul, data.size()}) {
    CHECK(Crc32cExtend(0, data.data(), n) == Crc32cExtendPortableForTesting(0, data.data(), n));
  }
  const uint32_t whole = Crc32cExtend(0, data.data(), data.size());
  CHECK(Crc32cExtend(Crc32cExtend(0, data.data(), 12345), data.data() + 12345,
                     data.size() - 12345) == whole);
}

}  // namespace
}  // namespace tessera::storage
