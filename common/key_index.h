// The key -> row id index of one vshard of a sparse table (and of a serving replica's table
// part, docs/online_serving.md): open addressing with linear probing
// over 16-byte slots (key, id), a power-of-two capacity, at most 3/4 full (more than 3/8
// full after growing: under 43 bytes per entry).
//
// Why not absl::flat_hash_map: a request looks up thousands of random keys, and every lookup
// misses the cache on its slot. Here the slot of a key is known from its hash alone, so a
// batch of lookups can prefetch their slots first (Prefetch) and then find them in cache; absl
// only reveals the first slot of the probed group, 16 slots (4 cache lines) before the one
// that holds the key. Measured on the 100k-key pull of `tessera bench` (docs/benchmarks.md).
//
// The slot of a key comes from a seeded mix of it (a seed per index, drawn at random), so a
// client that knows the key -> vshard hash still cannot choose keys that share a probe chain.
// Thread-compatible: the owner serializes access (the vshard's mutex).
#ifndef TESSERA_COMMON_KEY_INDEX_H_
#define TESSERA_COMMON_KEY_INDEX_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>

#include "common/hash.h"

namespace tessera {

class KeyIndex {
 public:
  static constexpr uint32_t kNone = ~uint32_t{0};  // not a row id: an empty slot, or not found

  explicit KeyIndex(uint64_t seed) : seed_(seed) {}
  KeyIndex(const KeyIndex&) = delete;
  KeyIndex& operator=(const KeyIndex&) = delete;

  size_t size() const { return size_; }
  size_t capacity() const { return capacity_; }
  // Bytes held for slots (all of them are written when allocated: resident).
  size_t bytes() const { return capacity_ * sizeof(Slot); }

  // Brings the cache line of the slot where the search for `key` starts. (Unconditional, on
  // an address computed as an integer: GCC 12 drops a __builtin_prefetch under an `if` here,
  // so a guarded form was compiled to nothing; with no slots it touches a harmless address, a
  // prefetch never faults.)
  void Prefetch(uint64_t key) const {
    __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(slots_.get()) +
                                                     Home(key) * sizeof(Slot)),
                       0, 3);
  }

  // The row id of `key`, or kNone.
  uint32_t Find(uint64_t key) const {
    if (capacity_ == 0) return kNone;
    for (size_t i = Home(key);; i = (i + 1) & (capacity_ - 1)) {
      const Slot& s = slots_[i];
      if (s.id == kNone) return kNone;
      if (s.key == key) return s.id;
    }
  }

  // Slots a Find(key) examines (tests: probe chains stay short).
  size_t Probes(uint64_t key) const {
    size_t n = 1;
    for (size_t i = Home(key); slots_[i].id != kNone && slots_[i].key != key;
         i = (i + 1) & (capacity_ - 1)) {
      ++n;
    }
    return n;
  }

  // Adds key -> id. REQUIRES: key is absent, id != kNone. Throws std::bad_alloc (and changes
  // nothing) when growing needs memory that cannot be had.
  void Insert(uint64_t key, uint32_t id) {
    if ((size_ + 1) * 4 > capacity_ * 3) Grow();
    Place(key, id);
    ++size_;
  }

  // Removes `key` and returns its row id, or kNone when it is absent. Backward-shift deletion
  // (linear probing needs no tombstones): each later entry of the probe run moves into the hole
  // unless its home lies cyclically after the hole, so every remaining key stays reachable from
  // its home and probe chains stay as short as if the key had never been inserted. Never
  // allocates; the capacity stays (memory follows the most rows a vshard held).
  uint32_t Erase(uint64_t key) {
    if (capacity_ == 0) return kNone;
    const size_t mask = capacity_ - 1;
    size_t hole = Home(key);
    while (slots_[hole].id != kNone && slots_[hole].key != key) hole = (hole + 1) & mask;
    const uint32_t id = slots_[hole].id;
    if (id == kNone) return kNone;
    for (size_t j = (hole + 1) & mask; slots_[j].id != kNone; j = (j + 1) & mask) {
      // The entry at j may fill the hole when its home is not in (hole, j], cyclically: its
      // distance from home to j is at least the hole's distance to j.
      if (((j - Home(slots_[j].key)) & mask) >= ((j - hole) & mask)) {
        slots_[hole] = slots_[j];
        hole = j;
      }
    }
    slots_[hole] = {0, kNone};
    --size_;
    return id;
  }

  // Calls fn(key, id) for every entry, in slot order (not a stable order: sort when it matters).
  template <typename Fn>
  void ForEach(Fn&& fn) const {
    for (size_t i = 0; i < capacity_; ++i) {
      if (slots_[i].id != kNone) fn(slots_[i].key, slots_[i].id);
    }
  }
  // The same while fn returns true: stops at the first false.
  template <typename Fn>
  void ForEachWhile(Fn&& fn) const {
    for (size_t i = 0; i < capacity_; ++i) {
      if (slots_[i].id != kNone && !fn(slots_[i].key, slots_[i].id)) return;
    }
  }

 private:
  struct Slot {
    uint64_t key;
    uint32_t id;
  };
  static_assert(sizeof(Slot) == 16);

  size_t Home(uint64_t key) const { return Mix64(key ^ seed_) >> shift_; }

  void Place(uint64_t key, uint32_t id) {
    size_t i = Home(key);
    while (slots_[i].id != kNone) i = (i + 1) & (capacity_ - 1);
    slots_[i] = {key, id};
  }

  void Grow() {
    const size_t capacity = capacity_ == 0 ? 2 : capacity_ * 2;
    std::unique_ptr<Slot[]> fresh(new Slot[capacity]);  // may throw: nothing changed yet
    for (size_t i = 0; i < capacity; ++i) fresh[i] = {0, kNone};
    std::unique_ptr<Slot[]> old = std::move(slots_);
    const size_t old_capacity = capacity_;
    slots_ = std::move(fresh);
    capacity_ = capacity;
    shift_ = 64 - static_cast<int>(__builtin_ctzll(capacity));
    for (size_t i = 0; i < old_capacity; ++i) {
      if (old[i].id != kNone) Place(old[i].key, old[i].id);
    }
  }

  const uint64_t seed_;
  std::unique_ptr<Slot[]> slots_;
  size_t capacity_ = 0;  // 0 or a power of two >= 2
  int shift_ = 63;       // 64 - log2(capacity) (63 while empty: Home stays a defined shift)
  size_t size_ = 0;
};

}  // namespace tessera

#endif  // TESSERA_COMMON_KEY_INDEX_H_
