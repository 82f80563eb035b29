// Stable hash functions that are part of the wire contract: clients and servers must agree on
// them bit for bit, on every platform and in every release of protocol v1.
#ifndef TESSERA_COMMON_HASH_H_
#define TESSERA_COMMON_HASH_H_

#include <cstdint>

#include "absl/strings/string_view.h"

namespace tessera {

// The splitmix64 finalizer: a bijective 64-bit mix with good avalanche.
inline constexpr uint64_t Mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

// 64-bit FNV-1a of a byte string (table names).
inline uint64_t Fnv1a64(absl::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

}  // namespace tessera

#endif  // TESSERA_COMMON_HASH_H_
