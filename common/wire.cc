#include "common/wire.h"

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "proto/tessera.pb.h"

namespace tessera {
namespace {

void CopyOptional(const std::optional<float>& from, void (v1::OptimizerSpec::*set)(float),
                  v1::OptimizerSpec* to) {
  if (from.has_value()) (to->*set)(*from);
}

}  // namespace

void TableConfigToProto(const TableConfig& c, v1::TableSpec* spec) {
  spec->Clear();
  spec->set_name(c.name);
  spec->set_kind(c.kind == TableKind::kDense ? v1::TABLE_KIND_DENSE : v1::TABLE_KIND_SPARSE);
  spec->set_dim(c.dim);
  spec->set_dense_size(c.dense_size);
  spec->set_dense_block_elems(c.dense_block_elems);

  v1::OptimizerSpec* o = spec->mutable_optimizer();
  o->set_kind(static_cast<v1::OptimizerKind>(static_cast<int>(c.optimizer.kind) + 1));
  const OptimizerConfig& oc = c.optimizer;
  CopyOptional(oc.learning_rate, &v1::OptimizerSpec::set_learning_rate, o);
  CopyOptional(oc.momentum, &v1::OptimizerSpec::set_momentum, o);
  CopyOptional(oc.beta1, &v1::OptimizerSpec::set_beta1, o);
  CopyOptional(oc.beta2, &v1::OptimizerSpec::set_beta2, o);
  CopyOptional(oc.epsilon, &v1::OptimizerSpec::set_epsilon, o);
  CopyOptional(oc.initial_accumulator, &v1::OptimizerSpec::set_initial_accumulator, o);
  CopyOptional(oc.l1, &v1::OptimizerSpec::set_l1, o);
  CopyOptional(oc.l2, &v1::OptimizerSpec::set_l2, o);
  CopyOptional(oc.ftrl_beta, &v1::OptimizerSpec::set_ftrl_beta, o);

  v1::InitializerSpec* i = spec->mutable_initializer();
  const InitializerConfig& ic = c.initializer;
  i->set_kind(static_cast<v1::InitializerKind>(static_cast<int>(ic.kind) + 1));
  if (ic.low) i->set_low(*ic.low);
  if (ic.high) i->set_high(*ic.high);
  if (ic.mean) i->set_mean(*ic.mean);
  if (ic.stddev) i->set_stddev(*ic.stddev);
  i->set_seed(ic.seed);

  const LifecycleConfig& lc = c.lifecycle;
  if (lc != LifecycleConfig{}) {
    v1::LifecycleSpec* l = spec->mutable_lifecycle();
    l->set_ttl_seconds(lc.ttl_seconds);
    l->set_capacity_rows(lc.capacity_rows);
    l->set_capacity_bytes(lc.capacity_bytes);
    l->set_victims(lc.victims == EvictionVictims::kLfu ? v1::EVICTION_VICTIMS_LFU
                                                       : v1::EVICTION_VICTIMS_LRU);
    l->set_lfu_half_life_seconds(lc.lfu_half_life_seconds);
    l->set_dry_run(lc.dry_run);
    l->set_admission_min_count(lc.admission_min_count);
    l->set_admission_sketch_width(lc.admission_sketch_width);
    l->set_admission_sketch_depth(lc.admission_sketch_depth);
    l->set_admission_aging_sightings(lc.admission_aging_sightings);
    l->set_tier_ram_rows(lc.tier_ram_rows);
    l->set_tier_ram_bytes(lc.tier_ram_bytes);
    l->set_tier_idle_seconds(lc.tier_idle_seconds);
    l->set_admission_exact(lc.admission_exact);
    l->set_admission_exact_keys(lc.admission_exact_keys);
    l->set_ttl_steps(lc.ttl_steps);
  }
}

absl::StatusOr<LifecycleConfig> LifecycleFromProto(const v1::LifecycleSpec& l,
                                                   absl::string_view table) {
  LifecycleConfig c;
  c.ttl_seconds = l.ttl_seconds();
  c.capacity_rows = l.capacity_rows();
  c.capacity_bytes = l.capacity_bytes();
  switch (l.victims()) {
    case v1::EVICTION_VICTIMS_UNSPECIFIED:
    case v1::EVICTION_VICTIMS_LRU:
      c.victims = EvictionVictims::kLru;
      break;
    case v1::EVICTION_VICTIMS_LFU:
      c.victims = EvictionVictims::kLfu;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrFormat("table '%s': lifecycle.victims %d is not LRU or LFU", table,
                          static_cast<int>(l.victims())));
  }
  c.lfu_half_life_seconds = l.lfu_half_life_seconds();
  c.dry_run = l.dry_run();
  c.admission_min_count = l.admission_min_count();
  c.admission_sketch_width = l.admission_sketch_width();
  c.admission_sketch_depth = l.admission_sketch_depth();
  c.admission_aging_sightings = l.admission_aging_sightings();
  c.tier_ram_rows = l.tier_ram_rows();
  c.tier_ram_bytes = l.tier_ram_bytes();
  c.tier_idle_seconds = l.tier_idle_seconds();
  c.admission_exact = l.admission_exact();
  c.admission_exact_keys = l.admission_exact_keys();
  c.ttl_steps = l.ttl_steps();
  return c;
}

absl::StatusOr<TableConfig> TableConfigFromProto(const v1::TableSpec& spec) {
  TableConfig c;
  c.name = spec.name();
  switch (spec.kind()) {
    case v1::TABLE_KIND_DENSE:
      c.kind = TableKind::kDense;
      break;
    case v1::TABLE_KIND_SPARSE:
      c.kind = TableKind::kSparse;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrFormat("table '%s': kind must be TABLE_KIND_DENSE or TABLE_KIND_SPARSE, got %d",
                          spec.name(), static_cast<int>(spec.kind())));
  }
  c.dim = spec.dim();
  c.dense_size = spec.dense_size();
  c.dense_block_elems = spec.dense_block_elems();

  const v1::OptimizerSpec& o = spec.optimizer();
  const int ok = static_cast<int>(o.kind());
  if (ok < v1::OPTIMIZER_KIND_SGD || ok > v1::OPTIMIZER_KIND_ASSIGN) {
    return absl::InvalidArgumentError(
        absl::StrFormat("table '%s': optimizer.kind %d is not a known optimizer", spec.name(), ok));
  }
  c.optimizer.kind = static_cast<OptimizerKind>(ok - 1);
  if (o.has_learning_rate()) c.optimizer.learning_rate = o.learning_rate();
  if (o.has_momentum()) c.optimizer.momentum = o.momentum();
  if (o.has_beta1()) c.optimizer.beta1 = o.beta1();
  if (o.has_beta2()) c.optimizer.beta2 = o.beta2();
  if (o.has_epsilon()) c.optimizer.epsilon = o.epsilon();
  if (o.has_initial_accumulator()) c.optimizer.initial_accumulator = o.initial_accumulator();
  if (o.has_l1()) c.optimizer.l1 = o.l1();
  if (o.has_l2()) c.optimizer.l2 = o.l2();
  if (o.has_ftrl_beta()) c.optimizer.ftrl_beta = o.ftrl_beta();

  const v1::InitializerSpec& i = spec.initializer();
  const int ik = static_cast<int>(i.kind());
  if (ik == v1::INITIALIZER_KIND_UNSPECIFIED) {
    c.initializer.kind = InitializerKind::kZeros;
  } else if (ik >= v1::INITIALIZER_KIND_ZEROS && ik <= v1::INITIALIZER_KIND_NORMAL) {
    c.initializer.kind = static_cast<InitializerKind>(ik - 1);
  } else {
    return absl::InvalidArgumentError(absl::StrFormat(
        "table '%s': initializer.kind %d is not a known initializer", spec.name(), ik));
  }
  if (i.has_low()) c.initializer.low = i.low();
  if (i.has_high()) c.initializer.high = i.high();
  if (i.has_mean()) c.initializer.mean = i.mean();
  if (i.has_stddev()) c.initializer.stddev = i.stddev();
  c.initializer.seed = i.seed();

  absl::StatusOr<LifecycleConfig> lifecycle = LifecycleFromProto(spec.lifecycle(), spec.name());
  if (!lifecycle.ok()) return lifecycle.status();
  c.lifecycle = *lifecycle;
  return c;
}

}  // namespace tessera
