#include "common/table_config.h"

#include <cmath>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace tessera {
namespace {

bool ValidName(absl::string_view name) {
  if (name.empty() || name.size() > kMaxTableNameLength) return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-' || c == '.';
    if (!ok) return false;
  }
  return true;
}

void SetDefault(std::optional<float>& field, float value) {
  if (!field.has_value()) field = value;
}

struct OptimizerField {
  const char* name;
  std::optional<float> OptimizerConfig::*member;
  float lo, hi;
  bool lo_open, hi_open;
};
constexpr float kInf = INFINITY;
const OptimizerField kOptimizerFields[] = {
    {"learning_rate", &OptimizerConfig::learning_rate, 0, kInf, true, true},
    {"momentum", &OptimizerConfig::momentum, 0, 1, false, true},
    {"beta1", &OptimizerConfig::beta1, 0, 1, false, true},
    {"beta2", &OptimizerConfig::beta2, 0, 1, false, true},
    {"epsilon", &OptimizerConfig::epsilon, 0, kInf, true, true},
    {"initial_accumulator", &OptimizerConfig::initial_accumulator, 0, kInf, false, true},
    {"l1", &OptimizerConfig::l1, 0, kInf, false, true},
    {"l2", &OptimizerConfig::l2, 0, kInf, false, true},
    {"ftrl_beta", &OptimizerConfig::ftrl_beta, 0, kInf, false, true},
};

struct FieldDefault {
  std::optional<float> OptimizerConfig::*member;
  float value;
};

// The fields each optimizer uses, with their defaults. Any other field set is an error.
std::vector<FieldDefault> OptimizerDefaults(OptimizerKind kind) {
  using O = OptimizerConfig;
  switch (kind) {
    case OptimizerKind::kSgd:
      return {{&O::learning_rate, 0.01f}};
    case OptimizerKind::kMomentum:
      return {{&O::learning_rate, 0.01f}, {&O::momentum, 0.9f}};
    case OptimizerKind::kAdagrad:
      return {{&O::learning_rate, 0.01f}, {&O::epsilon, 1e-10f}, {&O::initial_accumulator, 0.0f}};
    case OptimizerKind::kAdam:
      return {{&O::learning_rate, 0.001f},
              {&O::beta1, 0.9f},
              {&O::beta2, 0.999f},
              {&O::epsilon, 1e-8f}};
    case OptimizerKind::kFtrl:
      return {{&O::learning_rate, 0.05f},
              {&O::initial_accumulator, 0.0f},
              {&O::l1, 0.0f},
              {&O::l2, 0.0f},
              {&O::ftrl_beta, 1.0f}};
    case OptimizerKind::kAdd:
    case OptimizerKind::kAssign:
      return {};
  }
  return {};
}

absl::Status ResolveOptimizer(TableConfig& c) {
  OptimizerConfig& o = c.optimizer;
  const std::vector<FieldDefault> defaults = OptimizerDefaults(o.kind);
  for (const OptimizerField& f : kOptimizerFields) {
    std::optional<float>& value = o.*(f.member);
    bool applies = false;
    for (const FieldDefault& d : defaults) {
      if (d.member != f.member) continue;
      applies = true;
      if (!value.has_value()) value = d.value;
    }
    if (!value.has_value()) continue;
    if (!applies) {
      return absl::InvalidArgumentError(
          absl::StrFormat("table '%s': optimizer.%s does not apply to the %s optimizer", c.name,
                          f.name, OptimizerKindName(o.kind)));
    }
    const float v = *value;
    const bool ok = std::isfinite(v) && (f.lo_open ? v > f.lo : v >= f.lo) &&
                    (f.hi_open ? v < f.hi : v <= f.hi);
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrFormat("table '%s': optimizer.%s = %g is out of range %c%g, %g%c", c.name,
                          f.name, v, f.lo_open ? '(' : '[', f.lo, f.hi, f.hi_open ? ')' : ']'));
    }
  }
  return absl::OkStatus();
}

absl::Status ResolveInitializer(TableConfig& c) {
  InitializerConfig& i = c.initializer;
  const bool uniform = i.kind == InitializerKind::kUniform;
  const bool normal = i.kind == InitializerKind::kNormal;
  if ((!uniform && (i.low || i.high)) || (!normal && (i.mean || i.stddev))) {
    return absl::InvalidArgumentError(absl::StrFormat("table '%s': initializer %s takes %s", c.name,
                                                      InitializerKindName(i.kind),
                                                      uniform  ? "only low and high"
                                                      : normal ? "only mean and stddev"
                                                               : "no parameters"));
  }
  switch (i.kind) {
    case InitializerKind::kZeros:
      break;
    case InitializerKind::kUniform:
      SetDefault(i.low, -0.01f);
      SetDefault(i.high, 0.01f);
      if (!std::isfinite(*i.low) || !std::isfinite(*i.high) || !(*i.low < *i.high)) {
        return absl::InvalidArgumentError(
            absl::StrFormat("table '%s': uniform initializer needs finite low < high, got [%g, %g)",
                            c.name, *i.low, *i.high));
      }
      break;
    case InitializerKind::kNormal:
      SetDefault(i.mean, 0.0f);
      SetDefault(i.stddev, 0.01f);
      if (!std::isfinite(*i.mean) || !std::isfinite(*i.stddev) || *i.stddev < 0) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "table '%s': normal initializer needs finite mean and stddev >= 0, got (%g, %g)",
            c.name, *i.mean, *i.stddev));
      }
      break;
  }
  return absl::OkStatus();
}

absl::Status ResolveLifecycle(TableConfig& c) {
  LifecycleConfig& l = c.lifecycle;
  const bool any = !(l == LifecycleConfig{});
  if (!any) return absl::OkStatus();
  if (c.kind != TableKind::kSparse) {
    return absl::InvalidArgumentError(
        absl::StrFormat("table '%s': a lifecycle applies only to sparse tables", c.name));
  }
  const bool admission_fields = l.admission_sketch_width != 0 || l.admission_sketch_depth != 0 ||
                                l.admission_aging_sightings != 0;
  if (!l.admission() && (admission_fields || l.admission_min_count == 1 || l.admission_exact ||
                         l.admission_exact_keys != 0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "table '%s': lifecycle admission_sketch_*, admission_aging_sightings and "
        "admission_exact* need admission_min_count >= 2 (1 admits every key: leave it 0)",
        c.name));
  }
  if (!l.eviction() && !l.tier() &&
      (l.victims != EvictionVictims::kLru || l.lfu_half_life_seconds != 0 || l.dry_run)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "table '%s': lifecycle victims, lfu_half_life_seconds and dry_run need a policy: set "
        "ttl_seconds, ttl_steps, capacity_rows, capacity_bytes or a tier_* field",
        c.name));
  }
  if (l.tier() && (l.capacity_rows != 0 || l.capacity_bytes != 0)) {
    // (The capacity would have to choose victims among the rows on disk too: not built. A TTL
    // bounds the disk tier: it removes rows from both tiers.)
    return absl::InvalidArgumentError(absl::StrFormat(
        "table '%s': a lifecycle with a disk tier (tier_ram_rows, tier_ram_bytes or "
        "tier_idle_seconds) takes no capacity_rows or capacity_bytes: bound the rows on disk "
        "with ttl_seconds",
        c.name));
  }
  if (l.ttl_steps != 0) {
    // (Rows keep one clock: their last update as a step, not a second.)
    if (l.ttl_seconds != 0 || l.tier_idle_seconds != 0 || l.victims == EvictionVictims::kLfu) {
      return absl::InvalidArgumentError(
          absl::StrFormat("table '%s': lifecycle ttl_steps counts steps: it takes no ttl_seconds, "
                          "tier_idle_seconds or LFU victims (their times are seconds)",
                          c.name));
    }
    if (l.ttl_steps > 0xffffffffu) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "table '%s': lifecycle ttl_steps must be below 2^32, got %u", c.name, l.ttl_steps));
    }
  }
  if (l.tier_idle_seconds > kMaxTtlSeconds) {
    return absl::InvalidArgumentError(
        absl::StrFormat("table '%s': lifecycle tier_idle_seconds must be at most %u, got %u",
                        c.name, kMaxTtlSeconds, l.tier_idle_seconds));
  }
  if (l.admission()) {
    if (l.admission_min_count > 0xffff) {
      return absl::InvalidArgumentError(
          absl::StrFormat("table '%s': lifecycle admission_min_count must be at most 65535, got %u",
                          c.name, l.admission_min_count));
    }
    if (l.admission_exact || l.admission_exact_keys != 0) {
      if (admission_fields) {
        return absl::InvalidArgumentError(
            absl::StrFormat("table '%s': lifecycle admission_exact counts without a sketch: leave "
                            "admission_sketch_* and admission_aging_sightings unset",
                            c.name));
      }
      l.admission_exact = true;
      if (l.admission_exact_keys == 0) l.admission_exact_keys = kDefaultExactKeys;
      if (l.admission_exact_keys > kMaxExactKeys) {
        return absl::InvalidArgumentError(
            absl::StrFormat("table '%s': lifecycle admission_exact_keys must be at most %u, got %u",
                            c.name, kMaxExactKeys, l.admission_exact_keys));
      }
    } else {
      if (l.admission_sketch_width == 0) l.admission_sketch_width = kDefaultSketchWidth;
      if (l.admission_sketch_depth == 0) l.admission_sketch_depth = kDefaultSketchDepth;
      if (l.admission_sketch_width < 64 || l.admission_sketch_width > kMaxSketchWidth ||
          l.admission_sketch_depth > 8) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "table '%s': lifecycle admission sketch must be 64 to %u counters wide and 1 to 8 "
            "deep, got %u x %u",
            c.name, kMaxSketchWidth, l.admission_sketch_width, l.admission_sketch_depth));
      }
      if (l.admission_aging_sightings == 0) {
        l.admission_aging_sightings = 16 * l.admission_sketch_width;
      }
    }
  }
  if (l.ttl_seconds > kMaxTtlSeconds) {
    return absl::InvalidArgumentError(
        absl::StrFormat("table '%s': lifecycle ttl_seconds must be at most %u, got %u", c.name,
                        kMaxTtlSeconds, l.ttl_seconds));
  }
  if (l.victims == EvictionVictims::kLfu) {
    if (l.lfu_half_life_seconds == 0) l.lfu_half_life_seconds = kDefaultLfuHalfLifeSeconds;
  } else if (l.lfu_half_life_seconds != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "table '%s': lifecycle lfu_half_life_seconds applies only to LFU victims", c.name));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TableConfig> ResolveTableConfig(const TableConfig& config) {
  TableConfig c = config;
  if (!ValidName(c.name)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("table name '%s' is invalid: use 1 to %d characters from [A-Za-z0-9_.-]",
                        c.name, kMaxTableNameLength));
  }
  if (c.kind == TableKind::kSparse) {
    if (c.dim == 0 || c.dim > kMaxSparseDim) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "table '%s': sparse dim must be in [1, %u], got %u", c.name, kMaxSparseDim, c.dim));
    }
    if (c.dense_size != 0 || c.dense_block_elems != 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "table '%s': dense_size and dense_block_elems apply only to dense tables", c.name));
    }
  } else {
    if (c.dense_size == 0 || c.dense_size > kMaxDenseSize) {
      return absl::InvalidArgumentError(
          absl::StrFormat("table '%s': dense_size must be in [1, %u], got %u", c.name,
                          kMaxDenseSize, c.dense_size));
    }
    if (c.dim != 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("table '%s': dim applies only to sparse tables (got %u)", c.name, c.dim));
    }
    if (c.dense_block_elems == 0) c.dense_block_elems = kDefaultDenseBlockElems;
    if (c.dense_block_elems > kMaxDenseBlockElems) {
      return absl::InvalidArgumentError(
          absl::StrFormat("table '%s': dense_block_elems must be in [1, %u], got %u", c.name,
                          kMaxDenseBlockElems, c.dense_block_elems));
    }
  }
  if (absl::Status s = ResolveOptimizer(c); !s.ok()) return s;
  if (absl::Status s = ResolveInitializer(c); !s.ok()) return s;
  if (absl::Status s = ResolveLifecycle(c); !s.ok()) return s;
  return c;
}

int NumOptimizerSlots(OptimizerKind kind) {
  switch (kind) {
    case OptimizerKind::kMomentum:
    case OptimizerKind::kAdagrad:
      return 1;
    case OptimizerKind::kAdam:
    case OptimizerKind::kFtrl:
      return 2;
    case OptimizerKind::kSgd:
    case OptimizerKind::kAdd:
    case OptimizerKind::kAssign:
      return 0;
  }
  return 0;
}

bool OptimizerHasStep(OptimizerKind kind) { return kind == OptimizerKind::kAdam; }

absl::string_view TableKindName(TableKind kind) {
  return kind == TableKind::kDense ? "dense" : "sparse";
}

namespace {
constexpr struct {
  OptimizerKind kind;
  absl::string_view name;
} kOptimizerNames[] = {
    {OptimizerKind::kSgd, "sgd"},         {OptimizerKind::kMomentum, "momentum"},
    {OptimizerKind::kAdagrad, "adagrad"}, {OptimizerKind::kAdam, "adam"},
    {OptimizerKind::kFtrl, "ftrl"},       {OptimizerKind::kAdd, "add"},
    {OptimizerKind::kAssign, "assign"},
};
constexpr struct {
  InitializerKind kind;
  absl::string_view name;
} kInitializerNames[] = {
    {InitializerKind::kZeros, "zeros"},
    {InitializerKind::kUniform, "uniform"},
    {InitializerKind::kNormal, "normal"},
};
}  // namespace

absl::string_view OptimizerKindName(OptimizerKind kind) {
  for (const auto& e : kOptimizerNames) {
    if (e.kind == kind) return e.name;
  }
  return "unknown";
}

absl::string_view InitializerKindName(InitializerKind kind) {
  for (const auto& e : kInitializerNames) {
    if (e.kind == kind) return e.name;
  }
  return "unknown";
}

absl::StatusOr<OptimizerKind> ParseOptimizerKind(absl::string_view name) {
  for (const auto& e : kOptimizerNames) {
    if (e.name == name) return e.kind;
  }
  return absl::InvalidArgumentError(absl::StrFormat(
      "unknown optimizer '%s' (want sgd, momentum, adagrad, adam, ftrl, add or assign)", name));
}

absl::StatusOr<InitializerKind> ParseInitializerKind(absl::string_view name) {
  for (const auto& e : kInitializerNames) {
    if (e.name == name) return e.kind;
  }
  return absl::InvalidArgumentError(
      absl::StrFormat("unknown initializer '%s' (want zeros, uniform or normal)", name));
}

absl::string_view EvictionVictimsName(EvictionVictims victims) {
  return victims == EvictionVictims::kLfu ? "lfu" : "lru";
}

std::string DescribeLifecycle(const LifecycleConfig& l) {
  if (!l.enabled()) return "none";
  std::vector<std::string> parts;
  if (l.ttl_seconds != 0) parts.push_back(absl::StrFormat("ttl %u s", l.ttl_seconds));
  if (l.ttl_steps != 0) parts.push_back(absl::StrFormat("ttl %u steps", l.ttl_steps));
  if (l.capacity_rows != 0) parts.push_back(absl::StrFormat("capacity %u rows", l.capacity_rows));
  if (l.capacity_bytes != 0) {
    parts.push_back(absl::StrFormat("capacity %u bytes", l.capacity_bytes));
  }
  if (l.tier_ram_rows != 0) parts.push_back(absl::StrFormat("ram %u rows", l.tier_ram_rows));
  if (l.tier_ram_bytes != 0) parts.push_back(absl::StrFormat("ram %u bytes", l.tier_ram_bytes));
  if (l.tier_idle_seconds != 0) {
    parts.push_back(absl::StrFormat("to disk after %u s idle", l.tier_idle_seconds));
  }
  if (l.capacity_rows != 0 || l.capacity_bytes != 0 || l.tier_ram_rows != 0 ||
      l.tier_ram_bytes != 0) {
    parts.push_back(l.victims == EvictionVictims::kLfu
                        ? absl::StrFormat("lfu (half-life %u s)", l.lfu_half_life_seconds)
                        : std::string("lru"));
  }
  if (l.dry_run) parts.push_back("DRY RUN");
  if (l.admission() && l.admission_exact) {
    parts.push_back(absl::StrFormat("admission at %u sightings (exact, %u keys)",
                                    l.admission_min_count, l.admission_exact_keys));
  } else if (l.admission()) {
    parts.push_back(absl::StrFormat("admission at %u sightings (sketch %u x %u)",
                                    l.admission_min_count, l.admission_sketch_width,
                                    l.admission_sketch_depth));
  }
  return absl::StrJoin(parts, ", ");
}

std::string DescribeSpecDifference(const TableConfig& a, const TableConfig& b) {
  auto diff = [](absl::string_view field, const std::string& x, const std::string& y) {
    return absl::StrFormat("%s: %s here, %s requested", field, x, y);
  };
  if (a.kind != b.kind) {
    return diff("kind", std::string(TableKindName(a.kind)), std::string(TableKindName(b.kind)));
  }
  if (a.dim != b.dim) return diff("dim", absl::StrCat(a.dim), absl::StrCat(b.dim));
  if (a.dense_size != b.dense_size) {
    return diff("dense_size", absl::StrCat(a.dense_size), absl::StrCat(b.dense_size));
  }
  if (a.dense_block_elems != b.dense_block_elems) {
    return diff("dense_block_elems", absl::StrCat(a.dense_block_elems),
                absl::StrCat(b.dense_block_elems));
  }
  if (a.optimizer.kind != b.optimizer.kind) {
    return diff("optimizer", std::string(OptimizerKindName(a.optimizer.kind)),
                std::string(OptimizerKindName(b.optimizer.kind)));
  }
  if (!(a.optimizer == b.optimizer)) return "the optimizer's parameters differ";
  if (!(a.initializer == b.initializer)) return "the initializer differs";
  if (!(a.lifecycle == b.lifecycle)) {
    return diff("lifecycle", DescribeLifecycle(a.lifecycle), DescribeLifecycle(b.lifecycle));
  }
  return "";
}

absl::StatusOr<EvictionVictims> ParseEvictionVictims(absl::string_view name) {
  if (name == "lru") return EvictionVictims::kLru;
  if (name == "lfu") return EvictionVictims::kLfu;
  return absl::InvalidArgumentError(
      absl::StrFormat("unknown eviction victims '%s' (want lru or lfu)", name));
}

}  // namespace tessera
