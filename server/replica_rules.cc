#include "server/replica_rules.h"

#include "absl/strings/str_cat.h"
#include "proto/cluster.pb.h"

namespace tessera {

std::string ReplicaId::Key() const {
  return absl::StrCat(address, "/", incarnation, "/", join_epoch);
}

const char* RoleName(Role role) {
  switch (role) {
    case Role::kPrimary:
      return "primary";
    case Role::kBackup:
      return "backup";
    case Role::kJoining:
      return "joining";
    case Role::kRestoring:
      return "restoring";
    default:
      return "none";
  }
}

Placement Locate(const v1::ClusterMap& map, const std::string& address, uint64_t incarnation) {
  Placement p;
  for (int s = 0; s < map.shards_size(); ++s) {
    const v1::ShardReplicas& shard = map.shards(s);
    if (shard.state() == v1::SHARD_STATE_LOST) continue;  // holders serve nothing (R2)
    for (int i = 0; i < shard.replicas_size(); ++i) {
      const v1::Replica& r = shard.replicas(i);
      if (r.address() != address || r.incarnation() != incarnation) continue;
      p.shard = s;
      p.join_epoch = r.join_epoch();
      p.primary = shard.replicas(0).address();
      p.primary_incarnation = shard.replicas(0).incarnation();
      if (i == 0) {
        p.role = shard.state() == v1::SHARD_STATE_RESTORING ? Role::kRestoring : Role::kPrimary;
      } else {
        p.role = r.state() == v1::REPLICA_STATE_LIVE ? Role::kBackup : Role::kJoining;
      }
      return p;
    }
  }
  return p;
}

std::vector<BackupEntry> BackupsOf(const v1::ClusterMap& map, int32_t shard) {
  std::vector<BackupEntry> out;
  if (shard < 0 || shard >= map.shards_size()) return out;
  const v1::ShardReplicas& s = map.shards(shard);
  for (int i = 1; i < s.replicas_size(); ++i) {
    const v1::Replica& r = s.replicas(i);
    out.push_back(
        {{r.address(), r.incarnation(), r.join_epoch()}, r.state() == v1::REPLICA_STATE_LIVE});
  }
  return out;
}

SenderCheck CheckSender(uint64_t my_epoch, const Placement& me, uint64_t batch_epoch,
                        uint32_t batch_shard, const std::string& sender,
                        uint64_t sender_incarnation) {
  if (batch_epoch > my_epoch) return SenderCheck::kBehind;
  const bool replica = me.role == Role::kBackup || me.role == Role::kJoining;
  if (!replica || me.shard != static_cast<int32_t>(batch_shard) || me.primary != sender ||
      me.primary_incarnation != sender_incarnation) {
    return SenderCheck::kNotPrimary;
  }
  return SenderCheck::kOk;
}

}  // namespace tessera
