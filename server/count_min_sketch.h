// How often each key was seen, approximately, in fixed memory: a count-min sketch with
// conservative update, for the admission of new keys into a sparse table
// (docs/embedding_lifecycle.md). Never counts low: a key's estimate is at least the number of
// times it was added since the last aging (halving every counter halves that too, rounding
// down); it counts high only when every one of the key's counters is shared with keys seen
// more often.
//
// Replicated state: the counters depend only on the keys added, in order, and on the seed, so
// replicas that add the same keys in the same order (a vshard's pushes in LSN order) hold the
// same bytes. Conservative update depends on the order of the adds; a sketch must therefore
// belong to one vshard, whose entries every replica applies in the same order.
// Thread-compatible: the owner serializes access (the vshard's mutex).
#ifndef TESSERA_SERVER_COUNT_MIN_SKETCH_H_
#define TESSERA_SERVER_COUNT_MIN_SKETCH_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "server/admission_counter.h"

namespace tessera {

class CountMinSketch final : public AdmissionCounter {
 public:
  static constexpr uint32_t kMaxCount = 0xffff;  // counters saturate here
  static constexpr uint32_t kMaxDepth = 8;

  // width: counters per row, a power of two >= 2 (other values round up); depth: rows, 1 to
  // kMaxDepth (clamped); seed: the table's (the same on every replica); aging_adds: every this
  // many adds every counter is halved (0: never).
  CountMinSketch(uint32_t width, uint32_t depth, uint64_t seed, uint64_t aging_adds = 0);

  // Adds one sighting of `key` and returns its estimate after the add.
  uint32_t Add(uint64_t key) override;
  void Forget(uint64_t) override {}  // (a sketch cannot: the key keeps its count)
  // The estimate of `key`'s count, without adding.
  uint32_t Estimate(uint64_t key) const;
  // Halves every counter (rounding down). Add calls it every aging_adds adds.
  void Age();

  uint32_t width() const { return mask_ + 1; }
  uint32_t depth() const { return depth_; }
  uint64_t adds() const { return adds_; }
  // Bytes held (the counters; the object itself aside).
  size_t bytes() const override { return counters_.size() * sizeof(uint16_t); }
  // The counters, row by row (digests and snapshots).
  const std::vector<uint16_t>& counters() const { return counters_; }

  // The replicated state (the adds since the last aging, then the counters) as bytes, for
  // catch-up snapshots and digests; Load takes such bytes from a sketch of the same shape and
  // returns false (changing nothing) for any other.
  std::string Save() const override;
  bool Load(std::string_view state) override;

 private:
  // The counter of `key` in each row: double hashing of one 64-bit mix (Kirsch-Mitzenmacher).
  void Slots(uint64_t key, size_t* slots) const;

  uint32_t mask_;
  uint32_t depth_;
  uint64_t seed_;
  uint64_t aging_adds_;
  uint64_t adds_ = 0;  // since the last aging
  std::vector<uint16_t> counters_;
};

}  // namespace tessera

#endif  // TESSERA_SERVER_COUNT_MIN_SKETCH_H_
