#include "server/admission_counter.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <vector>

#include "common/hash.h"

namespace tessera {

size_t ExactCounter::BytesFor(uint64_t capacity) {
  return std::bit_ceil(std::max<uint64_t>(2 * capacity, 16)) *
         (sizeof(uint64_t) + sizeof(uint16_t));
}

ExactCounter::ExactCounter(uint64_t capacity, uint64_t seed)
    : capacity_(std::max<uint64_t>(capacity, 1)),
      seed_(Mix64(seed)),
      slots_(std::bit_ceil(std::max<uint64_t>(2 * capacity_, 16))),
      keys_(new uint64_t[slots_]()),
      counts_(new uint16_t[slots_]()) {}

size_t ExactCounter::Home(uint64_t key) const { return Mix64(key ^ seed_) & (slots_ - 1); }

uint32_t ExactCounter::Count(uint64_t key) const {
  for (size_t i = Home(key);; i = (i + 1) & (slots_ - 1)) {
    if (counts_[i] == 0) return 0;
    if (keys_[i] == key) return counts_[i];
  }
}

void ExactCounter::Insert(uint64_t key, uint16_t count) {
  size_t i = Home(key);
  while (counts_[i] != 0) i = (i + 1) & (slots_ - 1);
  keys_[i] = key;
  counts_[i] = count;
  ++size_;
}

uint32_t ExactCounter::Add(uint64_t key) {
  for (size_t i = Home(key);; i = (i + 1) & (slots_ - 1)) {
    if (counts_[i] == 0) break;
    if (keys_[i] == key) {
      if (counts_[i] < kMaxCount) ++counts_[i];
      return counts_[i];
    }
  }
  if (size_ >= capacity_) Age();
  if (size_ >= capacity_) {
    ++dropped_;  // (every pending key was seen at least twice since the last halving)
    return 0;
  }
  Insert(key, 1);
  return 1;
}

void ExactCounter::Forget(uint64_t key) {
  size_t i = Home(key);
  for (;; i = (i + 1) & (slots_ - 1)) {
    if (counts_[i] == 0) return;
    if (keys_[i] == key) break;
  }
  // Backward shift: later entries of the probe chain move into the hole when their home
  // allows it, so lookups never need tombstones.
  for (size_t j = (i + 1) & (slots_ - 1); counts_[j] != 0; j = (j + 1) & (slots_ - 1)) {
    const size_t home = Home(keys_[j]);
    // Entry j may fill the hole at i when i lies cyclically within [home, j).
    if (((j - home) & (slots_ - 1)) >= ((j - i) & (slots_ - 1))) {
      keys_[i] = keys_[j];
      counts_[i] = counts_[j];
      i = j;
    }
  }
  counts_[i] = 0;
  keys_[i] = 0;
  --size_;
}

void ExactCounter::Age() {
  std::vector<std::pair<uint64_t, uint16_t>> kept;
  kept.reserve(size_);
  for (size_t i = 0; i < slots_; ++i) {
    if (counts_[i] >= 2) kept.emplace_back(keys_[i], static_cast<uint16_t>(counts_[i] >> 1));
  }
  std::memset(counts_.get(), 0, slots_ * sizeof(uint16_t));
  std::memset(keys_.get(), 0, slots_ * sizeof(uint64_t));
  size_ = 0;
  for (const auto& [key, count] : kept) Insert(key, count);
}

std::string ExactCounter::Save() const {
  std::string out(2 * sizeof(uint64_t) + bytes(), '\0');
  char* p = out.data();
  std::memcpy(p, &size_, sizeof(size_));
  std::memcpy(p + sizeof(uint64_t), &dropped_, sizeof(dropped_));
  p += 2 * sizeof(uint64_t);
  std::memcpy(p, keys_.get(), slots_ * sizeof(uint64_t));
  std::memcpy(p + slots_ * sizeof(uint64_t), counts_.get(), slots_ * sizeof(uint16_t));
  return out;
}

bool ExactCounter::Load(std::string_view state) {
  if (state.size() != 2 * sizeof(uint64_t) + bytes()) return false;
  const char* p = state.data() + 2 * sizeof(uint64_t);
  // (Checked before anything changes: the size must be the count of occupied slots, within
  // the capacity, and each key must be reachable from its home.)
  std::vector<uint16_t> counts(slots_);
  std::vector<uint64_t> keys(slots_);
  std::memcpy(keys.data(), p, slots_ * sizeof(uint64_t));
  std::memcpy(counts.data(), p + slots_ * sizeof(uint64_t), slots_ * sizeof(uint16_t));
  uint64_t size, dropped, occupied = 0;
  std::memcpy(&size, state.data(), sizeof(size));
  std::memcpy(&dropped, state.data() + sizeof(uint64_t), sizeof(dropped));
  for (size_t i = 0; i < slots_; ++i) {
    if (counts[i] == 0) continue;
    ++occupied;
    for (size_t j = Home(keys[i]); j != i; j = (j + 1) & (slots_ - 1)) {
      if (counts[j] == 0) return false;  // (a gap before it: Count could never find it)
    }
  }
  if (occupied != size || size > capacity_) return false;
  std::memcpy(keys_.get(), keys.data(), slots_ * sizeof(uint64_t));
  std::memcpy(counts_.get(), counts.data(), slots_ * sizeof(uint16_t));
  size_ = size;
  dropped_ = dropped;
  return true;
}

}  // namespace tessera
