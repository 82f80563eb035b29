// Exactly-once application of pushes: docs/design.md, "Exactly-once pushes".
#ifndef TESSERA_SERVER_PUSH_DEDUP_H_
#define TESSERA_SERVER_PUSH_DEDUP_H_

#include <array>
#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tessera {

// Remembers, per client, which push sequences this shard has applied. A client numbers its
// pushes to this shard 1, 2, 3, ... and sends with each the lowest sequence it still has in
// flight (the floor): sequences below the floor are settled and forgotten, so the memory per
// client is bounded by the client's in-flight window.
//
// Protocol per push: Begin(); if kApply, apply the push and then call Finish(applied = true),
// or Finish(applied = false) if it was not applied after all.
//
// Thread-safe; clients are striped over independent mutexes.
class PushDeduplicator {
 public:
  enum class Decision {
    kApply,       // new: the caller applies it, then calls Finish
    kDuplicate,   // applied before (or below the floor): acknowledge without applying
    kInProgress,  // the same push is being applied right now: answer UNAVAILABLE, retry later
  };

  // client_ttl: a client not heard from for this long is forgotten.
  explicit PushDeduplicator(absl::Duration client_ttl = absl::Hours(1));

  Decision Begin(uint64_t client_id, uint64_t sequence, uint64_t floor);
  void Finish(uint64_t client_id, uint64_t sequence, bool applied);

  // The remembered state, for checkpoints: pushes being applied count as not applied.
  struct ClientSnapshot {
    uint64_t client_id;
    uint64_t floor;
    std::vector<uint64_t> applied;
  };
  std::vector<ClientSnapshot> Snapshot() const;
  // Replaces the state with a snapshot (restore). REQUIRES: no push in progress.
  void Restore(const std::vector<ClientSnapshot>& clients);

  // Number of clients currently remembered.
  size_t NumClientsForTesting() const;

 private:
  struct ClientState {
    uint64_t floor = 0;                      // every sequence < floor is settled
    absl::flat_hash_set<uint64_t> applied;   // applied sequences >= floor
    absl::flat_hash_set<uint64_t> applying;  // between Begin and Finish
    absl::Time last_seen;
  };
  struct Stripe {
    mutable absl::Mutex mu;
    absl::flat_hash_map<uint64_t, ClientState> clients ABSL_GUARDED_BY(mu);
    absl::Time last_sweep ABSL_GUARDED_BY(mu);
  };
  static constexpr size_t kStripes = 16;

  Stripe& StripeOf(uint64_t client_id) { return stripes_[client_id % kStripes]; }
  void SweepLocked(Stripe& s, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu);

  // Constant after construction.
  const absl::Duration client_ttl_;
  std::array<Stripe, kStripes> stripes_;
};

}  // namespace tessera

#endif  // TESSERA_SERVER_PUSH_DEDUP_H_
