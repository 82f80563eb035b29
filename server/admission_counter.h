// How often a key without a row was pushed, for the admission of new keys into a sparse table
// (docs/embedding_lifecycle.md): a count-min sketch (server/count_min_sketch.h, fixed memory,
// counts high now and then) or an exact count of the pending keys (ExactCounter, below).
//
// Replicated state: both depend only on the keys added and forgotten, in order, and on their
// construction, so replicas that apply a vshard's pushes in LSN order hold the same bytes.
// Thread-compatible: the owner serializes access (the vshard's mutex).
#ifndef TESSERA_SERVER_ADMISSION_COUNTER_H_
#define TESSERA_SERVER_ADMISSION_COUNTER_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace tessera {

class AdmissionCounter {
 public:
  virtual ~AdmissionCounter() = default;
  // Adds one sighting of `key` and returns its count after the add.
  virtual uint32_t Add(uint64_t key) = 0;
  // `key` was admitted: its count is no longer needed (a sketch cannot forget: it keeps it).
  virtual void Forget(uint64_t key) = 0;
  // Bytes held.
  virtual size_t bytes() const = 0;
  // The replicated state as bytes (snapshots, digests); Load takes such bytes from a counter of
  // the same shape and returns false, changing nothing, for any other.
  virtual std::string Save() const = 0;
  virtual bool Load(std::string_view state) = 0;
};

// The exact count of up to `capacity` pending keys: open addressing with linear probing over a
// power-of-two table at most half full, keys and 16-bit counts (saturating), a seeded hash (the
// table's seed: the same on every replica). An admitted key is forgotten (backward-shift
// deletion), so the memory holds only keys still below the admission count. A new key that
// finds the counter full first halves every count (dropping those that reach 0, as a sketch's
// aging does); if none drops, the sighting is not counted.
class ExactCounter final : public AdmissionCounter {
 public:
  static constexpr uint32_t kMaxCount = 0xffff;

  ExactCounter(uint64_t capacity, uint64_t seed);

  uint32_t Add(uint64_t key) override;
  void Forget(uint64_t key) override;
  size_t bytes() const override { return slots_ * (sizeof(uint64_t) + sizeof(uint16_t)); }
  std::string Save() const override;
  bool Load(std::string_view state) override;

  // The count of `key` (0: not pending), and the keys pending.
  uint32_t Count(uint64_t key) const;
  uint64_t size() const { return size_; }
  uint64_t capacity() const { return capacity_; }
  // Sightings not counted because the counter was full even after halving.
  uint64_t dropped() const { return dropped_; }
  // For the memory charge of a table before it holds anything.
  static size_t BytesFor(uint64_t capacity);

 private:
  size_t Home(uint64_t key) const;
  // Halves every count, drops the zeros and re-inserts the rest (in slot order).
  void Age();
  void Insert(uint64_t key, uint16_t count);

  const uint64_t capacity_;
  const uint64_t seed_;
  const size_t slots_;  // a power of two, at least 2 x capacity
  uint64_t size_ = 0;
  uint64_t dropped_ = 0;
  std::unique_ptr<uint64_t[]> keys_;
  std::unique_ptr<uint16_t[]> counts_;  // 0: an empty slot
};

}  // namespace tessera

#endif  // TESSERA_SERVER_ADMISSION_COUNTER_H_
