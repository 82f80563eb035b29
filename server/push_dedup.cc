#include "server/push_dedup.h"

#include <algorithm>

namespace tessera {

PushDeduplicator::PushDeduplicator(int64_t client_ttl_ms) : client_ttl_ms_(client_ttl_ms) {}

bool PushDeduplicator::IsDuplicate(uint64_t client_id, uint64_t sequence, uint64_t floor) const {
  auto it = clients_.find(client_id);
  if (it == clients_.end()) return false;
  const ClientState& c = it->second;
  // A sequence below the larger of the two floors is settled: the client said so (this push's
  // floor) or said so before (the recorded one).
  return sequence < std::max(c.floor, floor) || c.applied.contains(sequence);
}

void PushDeduplicator::Record(uint64_t client_id, uint64_t sequence, uint64_t floor,
                              int64_t time_ms) {
  Sweep(time_ms);
  ClientState& c = clients_[client_id];
  c.last_seen_ms = time_ms;
  if (floor > c.floor) {
    c.floor = floor;
    absl::erase_if(c.applied, [&](uint64_t seq) { return seq < floor; });
  }
  if (sequence >= c.floor) c.applied.insert(sequence);
}

void PushDeduplicator::Sweep(int64_t now_ms) {
  // At most every quarter TTL of entry time: the sweep is O(clients).
  if (now_ms - last_sweep_ms_ < client_ttl_ms_ / 4) return;
  last_sweep_ms_ = now_ms;
  absl::erase_if(clients_, [&](const auto& entry) {
    return now_ms - entry.second.last_seen_ms > client_ttl_ms_;
  });
}

std::vector<PushDeduplicator::ClientSnapshot> PushDeduplicator::Snapshot() const {
  std::vector<ClientSnapshot> out;
  out.reserve(clients_.size());
  for (const auto& [id, c] : clients_) {
    ClientSnapshot s{id, c.floor, {c.applied.begin(), c.applied.end()}, c.last_seen_ms};
    std::sort(s.applied.begin(), s.applied.end());
    out.push_back(std::move(s));
  }
  std::sort(out.begin(), out.end(), [](const ClientSnapshot& a, const ClientSnapshot& b) {
    return a.client_id < b.client_id;
  });
  return out;
}

void PushDeduplicator::Restore(const std::vector<ClientSnapshot>& clients) {
  clients_.clear();
  last_sweep_ms_ = 0;
  for (const ClientSnapshot& c : clients) {
    ClientState& state = clients_[c.client_id];
    state.floor = c.floor;
    state.applied.insert(c.applied.begin(), c.applied.end());
    state.last_seen_ms = c.last_seen_ms;
  }
}

}  // namespace tessera
