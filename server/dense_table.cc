#include "server/dense_table.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"
#include "common/hash.h"
#include "common/shard_map.h"
#include "optimizer/initializer.h"
#include "server/generation.h"

namespace tessera {

DenseTable::DenseTable(const TableConfig& config, const std::vector<bool>& owned, bool initialize)
    : config_(config),
      params_(OptimizerParams::FromConfig(config.optimizer)),
      layout_{config.dense_size, config.dense_block_elems},
      table_hash_(Fnv1a64(config.name)),
      num_vshards_(static_cast<uint32_t>(owned.size())) {
  blocks_.resize(layout_.num_blocks());
  uint64_t held_blocks = 0;
  for (uint64_t b = 0; b < layout_.num_blocks(); ++b) {
    if (!owned[VshardOf(b)]) continue;
    held_elements_ += layout_.BlockEnd(b) - layout_.BlockBegin(b);
    ++held_blocks;
  }
  bytes_ = held_elements_ * sizeof(float) * (1 + params_.num_slots) +
           layout_.num_blocks() * sizeof(void*) + held_blocks * BlockOverhead();
  // Zero-filled by the kernel; huge pages where the system allows them.
  storage_ = HugeBuffer(held_elements_ * (1 + params_.num_slots) * sizeof(float));
  float* next = reinterpret_cast<float*>(storage_.data());
  for (uint64_t b = 0; b < layout_.num_blocks(); ++b) {
    if (!owned[VshardOf(b)]) continue;
    auto block = std::make_unique<Block>();
    block->begin = layout_.BlockBegin(b);
    block->size = (layout_.BlockEnd(b) - block->begin) * (1 + params_.num_slots);
    block->data = next;
    next += block->size;
    blocks_[b] = std::move(block);
    if (initialize) InitializeBlock(b);
  }
}

void DenseTable::InitializeBlock(uint64_t b) {
  const Initializer init(config_.initializer);
  Block& block = *blocks_[b];
  const uint64_t len = layout_.BlockEnd(b) - block.begin;
  absl::MutexLock lock(&block.mu);
  init.FillDense(block.begin, block.data, len);
  for (int s = 0; s < params_.num_slots; ++s) {
    std::fill_n(block.data + len * (1 + s), len, params_.InitialSlotValue(s));
  }
  block.step = 0;
  block.gen = kBaseGeneration;
  block.has_values = true;
}

uint64_t DenseTable::BlockOverhead() { return sizeof(Block) + sizeof(std::unique_ptr<Block>); }

absl::StatusOr<uint64_t> DenseTable::BytesFor(const TableConfig& config,
                                              const std::vector<bool>& owned, uint64_t limit) {
  const DenseLayout layout{config.dense_size, config.dense_block_elems};
  const uint64_t blocks = layout.num_blocks();
  if (blocks > kMaxBlocks) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "dense table '%s' would have %u blocks of %u elements, over the limit of %u blocks; use "
        "larger dense_block_elems",
        config.name.substr(0, 64), blocks, config.dense_block_elems, kMaxBlocks));
  }
  // The index of every block is held whatever the ownership: a lower bound, in O(1).
  if (limit != 0 && blocks * sizeof(void*) > limit) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "dense table '%s' needs at least %u bytes for its block index, over the limit of %u "
        "bytes",
        config.name.substr(0, 64), blocks * sizeof(void*), limit));
  }
  const uint64_t table_hash = Fnv1a64(config.name);
  const uint32_t num_vshards = static_cast<uint32_t>(owned.size());
  uint64_t elements = 0, held = 0;
  for (uint64_t b = 0; b < blocks; ++b) {
    if (owned[VshardOfDenseBlock(table_hash, b, num_vshards)]) {
      elements += layout.BlockEnd(b) - layout.BlockBegin(b);
      ++held;
    }
  }
  return elements * sizeof(float) * (1 + NumOptimizerSlots(config.optimizer.kind)) +
         blocks * sizeof(void*) + held * BlockOverhead();
}

int64_t DenseTable::FirstMissingBlock(uint64_t offset, uint64_t count) const {
  if (count == 0) return -1;
  const uint64_t first = offset / layout_.block_elems;
  const uint64_t last = (offset + count - 1) / layout_.block_elems;
  for (uint64_t b = first; b <= last; ++b) {
    if (blocks_[b] == nullptr) return static_cast<int64_t>(b);
  }
  return -1;
}

void DenseTable::Pull(uint64_t offset, uint64_t count, float* out) const {
  const uint64_t end = offset + count;
  for (uint64_t b = offset / layout_.block_elems; b < layout_.num_blocks(); ++b) {
    const uint64_t lo = std::max(offset, layout_.BlockBegin(b));
    const uint64_t hi = std::min(end, layout_.BlockEnd(b));
    if (lo >= hi) break;
    const Block& block = *blocks_[b];
    absl::MutexLock lock(&block.mu);
    std::memcpy(out + (lo - offset), block.data + (lo - block.begin), (hi - lo) * sizeof(float));
  }
}

void DenseTable::Push(uint64_t offset, uint64_t count, const float* grads, uint64_t gen,
                      bool assign, uint32_t part, uint32_t parts) {
  const uint64_t end = offset + count;
  for (uint64_t b = offset / layout_.block_elems; b < layout_.num_blocks(); ++b) {
    const uint64_t lo = std::max(offset, layout_.BlockBegin(b));
    const uint64_t hi = std::min(end, layout_.BlockEnd(b));
    if (lo >= hi) break;
    if (parts > 1 && VshardOf(b) % parts != part) continue;
    Block& block = *blocks_[b];
    const uint64_t len = layout_.BlockEnd(b) - block.begin;
    absl::MutexLock lock(&block.mu);
    if (block.cow_gen != 0 && !block.has_cow && block.gen <= block.cow_gen) {
      // First change since the cut: keep the block as it was for the checkpoint.
      block.cow_data.assign(block.data, block.data + block.size);
      block.cow_step = block.step;
      block.cow_block_gen = block.gen;
      block.has_cow = true;
    }
    float* w = block.data + (lo - block.begin);
    float* slot0 = params_.num_slots > 0 ? w + len : nullptr;
    float* slot1 = params_.num_slots > 1 ? w + 2 * len : nullptr;
    if (assign) {
      AssignWeights(params_, w, slot0, slot1, grads + (lo - offset), hi - lo);
    } else {
      ApplyUpdate(params_, w, slot0, slot1, &block.step, grads + (lo - offset), hi - lo);
    }
    block.gen = gen;
  }
}

uint64_t DenseTable::Digest() const {
  uint64_t h = Mix64(layout_.size);
  for (uint64_t b = 0; b < blocks_.size(); ++b) {
    if (blocks_[b] == nullptr) continue;
    const Block& block = *blocks_[b];
    absl::MutexLock lock(&block.mu);
    h = Mix64(h ^ b);
    h = Mix64(h ^ block.step);
    h = Mix64(h ^ Fnv1a64(absl::string_view(reinterpret_cast<const char*>(block.data),
                                            block.size * sizeof(float))));
  }
  return h;
}

uint32_t DenseTable::VshardOf(uint64_t block) const {
  return VshardOfDenseBlock(table_hash_, block, num_vshards_);
}

size_t DenseTable::BlockPayloadBytes(uint64_t block) const {
  const uint64_t len = layout_.BlockEnd(block) - layout_.BlockBegin(block);
  return len * (1 + params_.num_slots) * sizeof(float) + sizeof(uint64_t);
}

void DenseTable::BeginCut(uint64_t cut_gen) {
  for (auto& block : blocks_) {
    if (block == nullptr) continue;
    absl::MutexLock lock(&block->mu);
    block->cow_gen = cut_gen;
    block->has_cow = false;
  }
}

bool DenseTable::TakeBlock(uint64_t b, uint64_t cut_gen, uint64_t parent_gen, char* payload) {
  Block& block = *blocks_[b];
  absl::MutexLock lock(&block.mu);
  const bool saved = block.has_cow;
  const float* data = saved ? block.cow_data.data() : block.data;
  const uint64_t step = saved ? block.cow_step : block.step;
  const uint64_t gen = saved ? block.cow_block_gen : block.gen;
  const bool dirty = gen > parent_gen && gen <= cut_gen;
  if (dirty) {
    std::memcpy(payload, data, block.size * sizeof(float));
    std::memcpy(payload + block.size * sizeof(float), &step, sizeof(step));
  }
  block.cow_gen = 0;
  block.has_cow = false;
  block.cow_data = {};
  return dirty;
}

void DenseTable::EndCut() {
  for (auto& block : blocks_) {
    if (block == nullptr) continue;
    absl::MutexLock lock(&block->mu);
    block->cow_gen = 0;
    block->has_cow = false;
    block->cow_data = {};
  }
}

void DenseTable::LoadBlock(uint64_t b, absl::string_view payload) {
  Block& block = *blocks_[b];
  absl::MutexLock lock(&block.mu);
  const size_t data_bytes = block.size * sizeof(float);
  std::memcpy(block.data, payload.data(), data_bytes);
  std::memcpy(&block.step, payload.data() + data_bytes, sizeof(block.step));
  block.gen = kBaseGeneration;
  block.has_values = true;
}

std::vector<EntryGroup> DenseTable::HeldGroups() const {
  std::vector<EntryGroup> groups;
  for (uint64_t b = 0; b < layout_.num_blocks(); ++b) {
    if (Holds(b)) groups.push_back({.vshard = VshardOf(b), .block = b});
  }
  std::sort(groups.begin(), groups.end(), [](const EntryGroup& x, const EntryGroup& y) {
    return std::pair(x.vshard, x.block) < std::pair(y.vshard, y.block);
  });
  return groups;
}

absl::Status DenseTable::TakeGroup(const EntryGroup& group, uint64_t cut_gen, uint64_t parent_gen,
                                   EntrySink& sink) {
  const size_t n = BlockPayloadBytes(group.block);
  std::unique_ptr<char[]> own;
  char* payload = sink.Buffer(n);
  if (payload == nullptr) {
    own = std::make_unique_for_overwrite<char[]>(n);
    payload = own.get();
  }
  if (!TakeBlock(group.block, cut_gen, parent_gen, payload)) return absl::OkStatus();
  return sink.Add(group.vshard, group.block, absl::string_view(payload, n));
}

size_t DenseTable::EntryBytes(uint32_t vshard, uint64_t block) const {
  if (block >= layout_.num_blocks() || !Holds(block) || VshardOf(block) != vshard) return 0;
  return BlockPayloadBytes(block);
}

void DenseTable::FinishLoad() {
  for (uint64_t b = 0; b < layout_.num_blocks(); ++b) {
    if (!Holds(b)) continue;
    bool loaded;
    {
      absl::MutexLock lock(&blocks_[b]->mu);
      loaded = blocks_[b]->has_values;
    }
    if (!loaded) InitializeBlock(b);
  }
}

size_t DenseTable::SumFloats(uint64_t block) const {
  return block < layout_.num_blocks() ? layout_.BlockEnd(block) - layout_.BlockBegin(block) : 0;
}

uint64_t DenseTable::ApplySums(const EntrySums& sums, float scale, uint64_t gen,
                               int64_t /*time_ms*/, uint64_t /*step*/) {
  std::vector<uint64_t> blocks;
  for (const auto& [b, sum] : sums) blocks.push_back(b);
  std::sort(blocks.begin(), blocks.end());
  std::vector<float> scaled;
  uint64_t elements = 0;
  for (uint64_t b : blocks) {
    const std::vector<float>& sum = sums.at(b);
    scaled.resize(sum.size());
    for (size_t i = 0; i < sum.size(); ++i) scaled[i] = SaturateToFloat(double{sum[i]} * scale);
    Push(layout_.BlockBegin(b), scaled.size(), scaled.data(), gen);
    elements += scaled.size();
  }
  return elements;
}

}  // namespace tessera
