#ifndef TESSERA_SERVER_GENERATION_H_
#define TESSERA_SERVER_GENERATION_H_

#include <cstdint>

namespace tessera {

// Generations (docs/checkpoints.md): every change to a row or dense block is stamped with the
// server's current generation, which starts at kFirstGeneration and advances at each
// checkpoint's cut. Rows loaded from a checkpoint, and dense blocks as created, carry
// kBaseGeneration: older than any change. A full checkpoint takes every row (parent 0).
inline constexpr uint64_t kBaseGeneration = 1;
inline constexpr uint64_t kFirstGeneration = 2;

}  // namespace tessera

#endif  // TESSERA_SERVER_GENERATION_H_
