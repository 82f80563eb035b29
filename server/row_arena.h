#ifndef TESSERA_SERVER_ROW_ARENA_H_
#define TESSERA_SERVER_ROW_ARENA_H_

#include <atomic>
#include <cstddef>
#include <new>
#include <cstdint>
#include <memory>
#include <vector>

namespace tessera {

// Fixed-stride rows of floats in blocks of kRowsPerBlock, so that growing never moves existing
// rows (pointers stay valid) and never copies the whole table. Thread-compatible: the owner
// serializes access (a vshard's mutex).
class RowArena {
 public:
  static constexpr uint32_t kRowsPerBlock = 256;

  // stride_floats: floats per row, > 0.
  explicit RowArena(size_t stride_floats) : stride_(stride_floats) {}

  // Tests: the next N appends throw std::bad_alloc, as when the kernel refuses memory.
  static inline std::atomic<int> fail_appends_for_testing{0};

  // Adds an uninitialized row and returns its id (0, 1, 2, ...). Throws std::bad_alloc (and
  // changes nothing) when memory cannot be had.
  uint32_t Append() {
    if (fail_appends_for_testing.load(std::memory_order_relaxed) > 0 &&
        fail_appends_for_testing.fetch_sub(1) > 0) {
      throw std::bad_alloc();
    }
    if (size_ % kRowsPerBlock == 0) {
      blocks_.push_back(std::make_unique_for_overwrite<float[]>(kRowsPerBlock * stride_));
    }
    return size_++;
  }

  float* Row(uint32_t id) {
    return blocks_[id / kRowsPerBlock].get() + (id % kRowsPerBlock) * stride_;
  }

  uint32_t size() const { return size_; }
  size_t stride() const { return stride_; }
  size_t bytes() const { return blocks_.size() * kRowsPerBlock * stride_ * sizeof(float); }

 private:
  size_t stride_;
  uint32_t size_ = 0;
  std::vector<std::unique_ptr<float[]>> blocks_;
};

}  // namespace tessera

#endif  // TESSERA_SERVER_ROW_ARENA_H_
