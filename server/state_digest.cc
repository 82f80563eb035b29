// ServerCore::StateDigest: what replicas must agree on, hashed (docs/state_machine.md).
#include <algorithm>

#include "common/hash.h"
#include "common/wire.h"
#include "proto/tessera.pb.h"
#include "server/apply_executors.h"
#include "server/dense_table.h"
#include "server/server_core.h"
#include "server/sparse_table.h"

namespace tessera {
namespace {

uint64_t HashFloats(const std::vector<float>& v) {
  return Fnv1a64(absl::string_view(reinterpret_cast<const char*>(v.data()), v.size() * 4));
}

// (Over every executor's part, in id order: replicas with other executor counts agree.)
template <typename Sums>
uint64_t HashSums(uint64_t h, const Sums& sums) {
  for (const auto& [id, sum] : sums.Sorted()) h = Mix64(Mix64(h ^ id) ^ HashFloats(*sum));
  return h;
}

}  // namespace

uint64_t ServerCore::StateDigest() {
  absl::MutexLock order(&order_mu_);
  executors_->Drain();
  absl::WriterMutexLock gate(&gate_);  // (row-creating pulls wait)
  std::vector<std::shared_ptr<Table>> tables;
  {
    absl::ReaderMutexLock lock(&tables_mu_);
    for (const auto& [name, t] : tables_) tables.push_back(t);
  }
  std::sort(tables.begin(), tables.end(),
            [](const auto& a, const auto& b) { return a->config.name < b->config.name; });
  uint64_t h = Mix64(lsn_);
  for (const auto& t : tables) {
    v1::TableSpec spec;
    TableConfigToProto(t->config, &spec);
    h = Mix64(h ^ Fnv1a64(spec.SerializeAsString()));
    h = Mix64(h ^ t->id);
    h = Mix64(Mix64(h ^ t->sums.step) ^ t->sums.applied_step);
    h = HashSums(h, t->sums);
    h = Mix64(h ^ t->data().Digest());
  }
  for (const PushDeduplicator::ClientSnapshot& c : dedup_.Snapshot()) {
    h = Mix64(Mix64(Mix64(h ^ c.client_id) ^ c.floor) ^ static_cast<uint64_t>(c.last_seen_ms));
    for (uint64_t seq : c.applied) h = Mix64(h ^ seq);
  }
  return h;
}

}  // namespace tessera
