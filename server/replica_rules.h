// The server's side of the control-plane protocol as pure functions (docs/replication.md,
// "Server rules" R1-R6): where a process is in a map, which backups a primary serves, the
// fencing decision and the catch-up rule. The Replicator and the control-plane simulation
// (server/coordinator/control_plane_sim_test.cc) both use them, so the simulation checks the
// rules the servers run.
#ifndef TESSERA_SERVER_REPLICA_RULES_H_
#define TESSERA_SERVER_REPLICA_RULES_H_

#include <cstdint>
#include <string>
#include <vector>

namespace tessera {

namespace v1 {
class ClusterMap;
}  // namespace v1

// One replica entry of a shard: the process and the join it belongs to (R3).
struct ReplicaId {
  std::string address;
  uint64_t incarnation = 0;
  uint64_t join_epoch = 0;

  bool operator==(const ReplicaId& o) const {
    return address == o.address && incarnation == o.incarnation && join_epoch == o.join_epoch;
  }
  // "address/incarnation/join_epoch": a key for maps of senders.
  std::string Key() const;
};

enum class Role { kNone, kPrimary, kBackup, kJoining, kRestoring };
const char* RoleName(Role role);

// Where process (address, incarnation) is in a map (R1, R2).
struct Placement {
  int32_t shard = -1;  // -1: not a replica as this process
  Role role = Role::kNone;
  uint64_t join_epoch = 0;  // of this process's entry
  std::string primary;      // of the shard (empty when none or LOST)
  uint64_t primary_incarnation = 0;

  bool operator==(const Placement& o) const {
    return shard == o.shard && role == o.role && join_epoch == o.join_epoch &&
           primary == o.primary && primary_incarnation == o.primary_incarnation;
  }
};
Placement Locate(const v1::ClusterMap& map, const std::string& address, uint64_t incarnation);

// Whether a replica at `a` and at `b` follows the same stream: the same shard, primary
// (address and incarnation) and own entry (join epoch). A JOINING replica turning LIVE does;
// a new primary, or a replica removed and added again, does not (its term changes, R4).
inline bool SameUpstream(const Placement& a, const Placement& b) {
  return a.shard == b.shard && a.primary == b.primary &&
         a.primary_incarnation == b.primary_incarnation && a.join_epoch == b.join_epoch;
}

// The other replicas of `shard` (a primary's backups, R3) and whether each is LIVE.
struct BackupEntry {
  ReplicaId id;
  bool live = false;
};
std::vector<BackupEntry> BackupsOf(const v1::ClusterMap& map, int32_t shard);

// R4: may a batch or snapshot from `sender` (incarnation `sender_incarnation`) for
// `batch_shard` at `batch_epoch` be applied by a replica acting on `my_epoch` at `me`?
enum class SenderCheck {
  kOk,
  kBehind,      // the sender's map is newer: UNAVAILABLE, fetch the map
  kNotPrimary,  // FAILED_PRECONDITION: the sender is not this replica's primary (fenced)
};
SenderCheck CheckSender(uint64_t my_epoch, const Placement& me, uint64_t batch_epoch,
                        uint32_t batch_shard, const std::string& sender,
                        uint64_t sender_incarnation);

// R5: a primary counts a backup entry while the map it acts on says LIVE, or once it found
// that entry caught up itself.
inline bool Counted(bool live_in_map, bool found_caught_up) {
  return live_in_map || found_caught_up;
}

// R6: a joiner is caught up once it installed a snapshot and acknowledged every LSN this
// primary acknowledged to a client.
inline bool IsCaughtUp(bool snapshot_installed, uint64_t acked_lsn, uint64_t max_acknowledged) {
  return snapshot_installed && acked_lsn >= max_acknowledged;
}

}  // namespace tessera

#endif  // TESSERA_SERVER_REPLICA_RULES_H_
