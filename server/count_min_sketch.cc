#include "server/count_min_sketch.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include "common/hash.h"

namespace tessera {

CountMinSketch::CountMinSketch(uint32_t width, uint32_t depth, uint64_t seed, uint64_t aging_adds)
    : mask_(std::bit_ceil(std::max<uint32_t>(width, 2)) - 1),
      depth_(std::clamp<uint32_t>(depth, 1, kMaxDepth)),
      seed_(seed),
      aging_adds_(aging_adds),
      counters_(size_t{mask_ + 1} * depth_, 0) {}

void CountMinSketch::Slots(uint64_t key, size_t* slots) const {
  // (Seeded by the table, not by the process: every replica must pick the same counters. The
  // key is mixed with the seed first: keys of one vshard share the low bits of Mix64(key).)
  const uint64_t h = Mix64(key ^ Mix64(seed_));
  const uint32_t h1 = static_cast<uint32_t>(h);
  const uint32_t h2 = static_cast<uint32_t>(h >> 32) | 1;  // odd: the rows' slots differ
  for (uint32_t row = 0; row < depth_; ++row) {
    slots[row] = size_t{row} * (mask_ + 1) + ((h1 + row * h2) & mask_);
  }
}

uint32_t CountMinSketch::Add(uint64_t key) {
  size_t slots[kMaxDepth];
  Slots(key, slots);
  uint32_t low = kMaxCount;
  for (uint32_t row = 0; row < depth_; ++row) low = std::min<uint32_t>(low, counters_[slots[row]]);
  // Conservative update: raise only the counters at the minimum, and only to the new estimate.
  const uint32_t next = std::min(low + 1, kMaxCount);
  for (uint32_t row = 0; row < depth_; ++row) {
    uint16_t& c = counters_[slots[row]];
    if (c < next) c = static_cast<uint16_t>(next);
  }
  if (aging_adds_ != 0 && ++adds_ >= aging_adds_) Age();
  return next;
}

uint32_t CountMinSketch::Estimate(uint64_t key) const {
  size_t slots[kMaxDepth];
  Slots(key, slots);
  uint32_t low = kMaxCount;
  for (uint32_t row = 0; row < depth_; ++row) low = std::min<uint32_t>(low, counters_[slots[row]]);
  return low;
}

std::string CountMinSketch::Save() const {
  std::string out(sizeof(adds_) + bytes(), '\0');
  std::memcpy(out.data(), &adds_, sizeof(adds_));
  std::memcpy(out.data() + sizeof(adds_), counters_.data(), bytes());
  return out;
}

bool CountMinSketch::Load(std::string_view state) {
  if (state.size() != sizeof(adds_) + bytes()) return false;
  uint64_t adds;
  std::memcpy(&adds, state.data(), sizeof(adds));
  if (aging_adds_ != 0 && adds >= aging_adds_) return false;
  adds_ = adds;
  std::memcpy(counters_.data(), state.data() + sizeof(adds_), bytes());
  return true;
}

void CountMinSketch::Age() {
  for (uint16_t& c : counters_) c = static_cast<uint16_t>(c >> 1);
  adds_ = 0;
}

}  // namespace tessera
