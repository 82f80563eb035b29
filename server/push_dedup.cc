#include "server/push_dedup.h"

#include "absl/time/clock.h"

namespace tessera {

PushDeduplicator::PushDeduplicator(absl::Duration client_ttl) : client_ttl_(client_ttl) {}

PushDeduplicator::Decision PushDeduplicator::Begin(uint64_t client_id, uint64_t sequence,
                                                   uint64_t floor) {
  Stripe& s = StripeOf(client_id);
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&s.mu);
  SweepLocked(s, now);
  ClientState& c = s.clients[client_id];
  c.last_seen = now;
  if (floor > c.floor) {
    c.floor = floor;
    absl::erase_if(c.applied, [&](uint64_t seq) { return seq < floor; });
  }
  if (sequence < c.floor || c.applied.contains(sequence)) return Decision::kDuplicate;
  if (!c.applying.insert(sequence).second) return Decision::kInProgress;
  return Decision::kApply;
}

void PushDeduplicator::Finish(uint64_t client_id, uint64_t sequence, bool applied) {
  Stripe& s = StripeOf(client_id);
  absl::MutexLock lock(&s.mu);
  auto it = s.clients.find(client_id);
  if (it == s.clients.end()) return;  // forgotten meanwhile (idle past the TTL)
  ClientState& c = it->second;
  c.applying.erase(sequence);
  if (applied && sequence >= c.floor) c.applied.insert(sequence);
}

void PushDeduplicator::SweepLocked(Stripe& s, absl::Time now) {
  if (now - s.last_sweep < client_ttl_ / 4) return;
  s.last_sweep = now;
  absl::erase_if(s.clients, [&](const auto& entry) {
    const ClientState& c = entry.second;
    return c.applying.empty() && now - c.last_seen > client_ttl_;
  });
}

std::vector<PushDeduplicator::ClientSnapshot> PushDeduplicator::Snapshot() const {
  std::vector<ClientSnapshot> out;
  for (const Stripe& s : stripes_) {
    absl::MutexLock lock(&s.mu);
    for (const auto& [id, c] : s.clients) {
      out.push_back({id, c.floor, std::vector<uint64_t>(c.applied.begin(), c.applied.end())});
    }
  }
  return out;
}

void PushDeduplicator::Restore(const std::vector<ClientSnapshot>& clients) {
  const absl::Time now = absl::Now();
  for (Stripe& s : stripes_) {
    absl::MutexLock lock(&s.mu);
    s.clients.clear();
  }
  for (const ClientSnapshot& c : clients) {
    Stripe& s = StripeOf(c.client_id);
    absl::MutexLock lock(&s.mu);
    ClientState& state = s.clients[c.client_id];
    state.floor = c.floor;
    state.applied.insert(c.applied.begin(), c.applied.end());
    state.last_seen = now;
  }
}

size_t PushDeduplicator::NumClientsForTesting() const {
  size_t n = 0;
  for (const Stripe& s : stripes_) {
    absl::MutexLock lock(&s.mu);
    n += s.clients.size();
  }
  return n;
}

}  // namespace tessera
