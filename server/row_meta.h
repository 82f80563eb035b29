// The lifecycle metadata of a sparse row (docs/embedding_lifecycle.md, "Per-row metadata"):
// how its clock and its LFU count are computed, shared by the table's updates
// (server/sparse_table.cc) and its policy's choices (server/sparse_table_plans.cc).
#ifndef TESSERA_SERVER_ROW_META_H_
#define TESSERA_SERVER_ROW_META_H_

#include <algorithm>
#include <cstdint>

namespace tessera::row_meta {

// A second of entry time as the metadata keeps it (until 2106; earlier times are 0).
inline uint32_t MetaSecond(int64_t time_ms) {
  return static_cast<uint32_t>(std::clamp<int64_t>(time_ms / 1000, 0, UINT32_MAX));
}

// An LFU count last updated at `last`, as of `now`: halved per half-life since.
inline uint32_t DecayedCount(uint32_t count, uint32_t last, uint32_t now, uint32_t half_life) {
  const uint32_t halvings = now > last ? (now - last) / half_life : 0;
  return halvings >= 32 ? 0 : count >> halvings;
}

}  // namespace tessera::row_meta

#endif  // TESSERA_SERVER_ROW_META_H_
