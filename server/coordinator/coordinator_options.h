// The coordinator's per-cluster options (no generated headers: included widely).
#ifndef TESSERA_SERVER_COORDINATOR_COORDINATOR_OPTIONS_H_
#define TESSERA_SERVER_COORDINATOR_COORDINATOR_OPTIONS_H_

#include <cstdint>

#include "absl/time/time.h"

namespace tessera {

struct CoordinatorOptions {
  uint32_t num_shards = 1;
  uint32_t replication = 1;  // R, 1..3
  uint32_t num_vshards = 1024;
  absl::Duration lease = absl::Milliseconds(1500);

  // Deliberately broken rules, for the simulation to prove it catches them. Never set
  // outside tests.
  // Promotes a LIVE backup as soon as the primary's lease ends, if the backup's own lease has
  // not ended yet (no proof that it is alive after the failure).
  bool promote_unproven_for_testing = false;
  // Treats a new incarnation at a known address as the same member (identity by address).
  bool ignore_incarnation_for_testing = false;
  // A server rule, for the simulation's servers: a primary stops counting a FAILED backup at
  // once, without the coordinator making it JOINING first (T10).
  bool uncount_failed_backup_for_testing = false;
};

}  // namespace tessera

#endif  // TESSERA_SERVER_COORDINATOR_COORDINATOR_OPTIONS_H_
