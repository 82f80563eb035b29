#ifndef TESSERA_SERVER_ROW_ARENA_H_
#define TESSERA_SERVER_ROW_ARENA_H_

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

namespace tessera {

// Fixed-stride rows of floats in blocks that never move (pointers stay valid; growing never
// copies the table). Blocks grow geometrically, 4, 8, ..., 256 rows, then 256 each: a vshard
// with a few rows holds memory for a few rows, not for 256. Thread-compatible: the owner
// serializes access (a vshard's mutex).
class RowArena {
 public:
  static constexpr uint32_t kRowsPerBlock = 256;  // the largest block
  static constexpr uint32_t kFirstBlockRows = 4;

  // Tests: the next N appends throw std::bad_alloc, as when the kernel refuses memory.
  static inline std::atomic<int> fail_appends_for_testing{0};

  // stride_floats: floats per row, > 0.
  explicit RowArena(size_t stride_floats) : stride_(stride_floats) {}

  // Adds an uninitialized row and returns its id: the most recently released one if any (its
  // memory reused), else the next new id (0, 1, 2, ...). Throws std::bad_alloc (and changes
  // nothing) when memory cannot be had.
  uint32_t Append() {
    if (fail_appends_for_testing.load(std::memory_order_relaxed) > 0 &&
        fail_appends_for_testing.fetch_sub(1) > 0) {
      throw std::bad_alloc();
    }
    if (free_head_ != kNoRow) {
      const uint32_t id = free_head_;
      std::memcpy(&free_head_, Row(id), sizeof(free_head_));
      --free_;
      return id;
    }
    if (size_ == capacity_) {
      const uint32_t rows = BlockRows(static_cast<uint32_t>(blocks_.size()));
      blocks_.reserve(blocks_.size() + 1);  // (so that the push_back below cannot throw)
      blocks_.push_back(Allocate(size_t{rows} * stride_ * sizeof(float)));
      capacity_ += rows;
    }
    return size_++;
  }

  float* Row(uint32_t id) {
    uint32_t block, offset;
    Locate(id, &block, &offset);
    return blocks_[block].get() + size_t{offset} * stride_;
  }

  // Makes row `id` free for a later Append (a LIFO list linked through the free rows' first
  // four bytes: no memory of its own). REQUIRES: id was appended and is not free; stride_ >= 1.
  void Release(uint32_t id) {
    std::memcpy(Row(id), &free_head_, sizeof(free_head_));
    free_head_ = id;
    ++free_;
  }

  // Whether the next Append reuses a released row (no new memory).
  bool HasFree() const { return free_head_ != kNoRow; }
  // Ids handed out so far (rows in use and free ones).
  uint32_t size() const { return size_; }
  // Rows in use.
  uint32_t live() const { return size_ - free_; }
  size_t stride() const { return stride_; }
  // Bytes allocated for rows.
  size_t bytes() const { return size_t{capacity_} * stride_ * sizeof(float); }
  // Bytes of the rows in use (rows are written when appended).
  size_t used_bytes() const { return size_t{live()} * stride_ * sizeof(float); }
  // What the rows make resident: blocks of a page or more are page-aligned and written from
  // their start, so they count the pages their used rows touch (and glibc's header page);
  // smaller ones their used bytes.
  size_t resident_bytes() const {
    size_t total = 0;
    uint32_t left = size_;
    for (size_t b = 0; b < blocks_.size() && left > 0; ++b) {
      const uint32_t rows = BlockRows(static_cast<uint32_t>(b));
      const uint32_t used = left < rows ? left : rows;
      left -= used;
      const size_t block = size_t{rows} * stride_ * sizeof(float);
      const size_t bytes = size_t{used} * stride_ * sizeof(float);
      // (An aligned block's allocator header sits in the page before it: one more page.)
      total += block < kPage ? bytes : (bytes + kPage - 1) / kPage * kPage + kPage;
    }
    return total;
  }

 private:
  // Rows of block b: 4 << b up to kRowsPerBlock.
  static uint32_t BlockRows(uint32_t b) {
    return b < kGrowthBlocks ? kFirstBlockRows << b : kRowsPerBlock;
  }
  static constexpr uint32_t kGrowthBlocks = 6;  // 4 .. 128
  static constexpr uint32_t kGrowthRows = 252;  // 4 + 8 + ... + 128
  static void Locate(uint32_t id, uint32_t* block, uint32_t* offset) {
    if (id < kGrowthRows) {
      // Block b starts at 4 (2^b - 1).
      const uint32_t b = static_cast<uint32_t>(std::bit_width(id / kFirstBlockRows + 1)) - 1;
      *block = b;
      *offset = id - kFirstBlockRows * ((1u << b) - 1);
      return;
    }
    *block = kGrowthBlocks + (id - kGrowthRows) / kRowsPerBlock;
    *offset = (id - kGrowthRows) % kRowsPerBlock;
  }

  static constexpr size_t kPage = 4096;
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  using Block = std::unique_ptr<float[], Free>;
  static Block Allocate(size_t bytes) {
    void* p = bytes < kPage ? std::malloc(bytes)
                            : std::aligned_alloc(kPage, (bytes + kPage - 1) / kPage * kPage);
    if (p == nullptr) throw std::bad_alloc();
    return Block(static_cast<float*>(p));
  }

  static constexpr uint32_t kNoRow = ~uint32_t{0};

  size_t stride_;
  uint32_t size_ = 0;
  uint32_t free_ = 0;            // rows released and not appended again
  uint32_t free_head_ = kNoRow;  // the most recently released row
  uint32_t capacity_ = 0;
  std::vector<Block> blocks_;
};

}  // namespace tessera

#endif  // TESSERA_SERVER_ROW_ARENA_H_
