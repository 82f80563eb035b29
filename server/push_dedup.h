// Exactly-once application of pushes: docs/design.md, "Exactly-once pushes". Part of the
// shard's replicated state (docs/state_machine.md): it changes only when an entry is sequenced,
// and its only clock is the entries' time.
#ifndef TESSERA_SERVER_PUSH_DEDUP_H_
#define TESSERA_SERVER_PUSH_DEDUP_H_

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"

namespace tessera {

// Remembers, per client, which push sequences this shard has applied. A client numbers its
// pushes to this shard 1, 2, 3, ... and sends with each the lowest sequence it still has in
// flight (the floor): sequences below the floor are settled and forgotten, so the memory per
// client is bounded by the client's in-flight window.
//
// Protocol per push: IsDuplicate() (reads only); if false and every other check passes,
// Record() as the push is sequenced. A push that is refused leaves no trace.
//
// Thread-compatible: the shard's order lock serializes every call.
class PushDeduplicator {
 public:
  // client_ttl_ms: a client with no applied push for this long (in entry time) is forgotten.
  explicit PushDeduplicator(int64_t client_ttl_ms = int64_t{3600} * 1000);

  // Whether (client_id, sequence) was applied before or is below the client's floor.
  bool IsDuplicate(uint64_t client_id, uint64_t sequence, uint64_t floor) const;
  // Records that the push was applied at entry time `time_ms` (non-decreasing across calls),
  // raising the client's floor; forgets clients idle past the TTL.
  void Record(uint64_t client_id, uint64_t sequence, uint64_t floor, int64_t time_ms);

  // The remembered state, for checkpoints and snapshots, sorted by client.
  struct ClientSnapshot {
    uint64_t client_id;
    uint64_t floor;
    std::vector<uint64_t> applied;  // sorted
    int64_t last_seen_ms = 0;
  };
  std::vector<ClientSnapshot> Snapshot() const;
  // Replaces the state with a snapshot (restore, catch-up).
  void Restore(const std::vector<ClientSnapshot>& clients);

  // Number of clients currently remembered.
  size_t NumClients() const { return clients_.size(); }

 private:
  struct ClientState {
    uint64_t floor = 0;                     // every sequence < floor is settled
    absl::flat_hash_set<uint64_t> applied;  // applied sequences >= floor
    int64_t last_seen_ms = 0;
  };
  void Sweep(int64_t now_ms);

  const int64_t client_ttl_ms_;
  absl::flat_hash_map<uint64_t, ClientState> clients_;
  int64_t last_sweep_ms_ = 0;
};

}  // namespace tessera

#endif  // TESSERA_SERVER_PUSH_DEDUP_H_
