// Table configuration shared by the client and the server: plain structs, free of protobuf.
#ifndef TESSERA_COMMON_TABLE_CONFIG_H_
#define TESSERA_COMMON_TABLE_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/export.h"

namespace tessera {

enum class TableKind { kDense, kSparse };

enum class OptimizerKind { kSgd, kMomentum, kAdagrad, kAdam, kFtrl, kAdd, kAssign };

enum class InitializerKind { kZeros, kUniform, kNormal };

// Unset fields take per-optimizer defaults in ResolveTableConfig (docs/design.md, "Optimizers").
struct OptimizerConfig {
  OptimizerKind kind = OptimizerKind::kSgd;
  std::optional<float> learning_rate;        // all but add/assign; FTRL's alpha
  std::optional<float> momentum;             // momentum; default 0.9
  std::optional<float> beta1;                // adam; default 0.9
  std::optional<float> beta2;                // adam; default 0.999
  std::optional<float> epsilon;              // adagrad 1e-10, adam 1e-8
  std::optional<float> initial_accumulator;  // adagrad accumulator / FTRL n; default 0
  std::optional<float> l1;                   // ftrl; default 0
  std::optional<float> l2;                   // ftrl; default 0
  std::optional<float> ftrl_beta;            // ftrl; default 1

  bool operator==(const OptimizerConfig&) const = default;
};

struct InitializerConfig {
  InitializerKind kind = InitializerKind::kZeros;
  std::optional<float> low;     // uniform; default -0.01
  std::optional<float> high;    // uniform; default 0.01
  std::optional<float> mean;    // normal; default 0
  std::optional<float> stddev;  // normal; default 0.01
  uint64_t seed = 0;

  bool operator==(const InitializerConfig&) const = default;
};

enum class EvictionVictims { kLru, kLfu };

// A sparse table's embedding lifecycle (docs/embedding_lifecycle.md); all 0: off.
struct LifecycleConfig {
  uint64_t ttl_seconds = 0;     // remove rows not updated for this long
  uint64_t capacity_rows = 0;   // per server
  uint64_t capacity_bytes = 0;  // per server, what the budget charges its rows
  EvictionVictims victims = EvictionVictims::kLru;
  uint32_t lfu_half_life_seconds = 0;  // LFU: resolved to 3600 when unset
  bool dry_run = false;
  // Admission (k >= 2: on); the sketch's defaults are resolved when admission is on.
  uint32_t admission_min_count = 0;
  uint64_t admission_sketch_width = 0;     // over all vshards; default 2^21
  uint32_t admission_sketch_depth = 0;     // default 4
  uint64_t admission_aging_sightings = 0;  // default 16 x width
  // Admission counted exactly (pending keys per vshard), up to this many keys per server.
  bool admission_exact = false;
  uint64_t admission_exact_keys = 0;  // default 2^20
  // The disk tier (any set: on): rows kept in RAM per server, in rows or bytes, and the idle
  // time after which a row moves to disk.
  uint64_t tier_ram_rows = 0;
  uint64_t tier_ram_bytes = 0;
  uint64_t tier_idle_seconds = 0;
  // TTL in training steps (what pushes carry) instead of seconds; rows keep a step then.
  uint64_t ttl_steps = 0;

  bool admission() const { return admission_min_count >= 2; }
  bool eviction() const {
    return ttl_seconds != 0 || ttl_steps != 0 || capacity_rows != 0 || capacity_bytes != 0;
  }
  bool tier() const { return tier_ram_rows != 0 || tier_ram_bytes != 0 || tier_idle_seconds != 0; }
  // Whether the policy gives RAM rows back (removes or demotes them): near the memory limit
  // its table keeps a reserve and its refused pushes carry a retry hint.
  bool frees_rows() const { return eviction() || tier(); }
  // Whether rows carry lifecycle metadata (any policy set).
  bool enabled() const { return eviction() || admission() || tier(); }
  bool operator==(const LifecycleConfig&) const = default;
};

inline constexpr uint32_t kDefaultLfuHalfLifeSeconds = 3600;
inline constexpr uint64_t kDefaultSketchWidth = uint64_t{1} << 21;
inline constexpr uint32_t kDefaultSketchDepth = 4;
inline constexpr uint64_t kMaxSketchWidth = uint64_t{1} << 30;
inline constexpr uint64_t kDefaultExactKeys = uint64_t{1} << 20;
inline constexpr uint64_t kMaxExactKeys = uint64_t{1} << 30;
inline constexpr uint64_t kMaxTtlSeconds = uint64_t{100} * 365 * 24 * 3600;

inline constexpr uint32_t kDefaultDenseBlockElems = 128 * 1024;  // 512 KiB of float32
inline constexpr uint32_t kMaxDenseBlockElems = 16 * 1024 * 1024;
inline constexpr uint32_t kMaxSparseDim = 65536;
inline constexpr uint64_t kMaxDenseSize = uint64_t{1} << 40;
inline constexpr size_t kMaxTableNameLength = 128;

struct TableConfig {
  std::string name;
  TableKind kind = TableKind::kSparse;
  uint32_t dim = 0;                // sparse only: floats per row
  uint64_t dense_size = 0;         // dense only: float32 elements
  uint32_t dense_block_elems = 0;  // dense only: 0 = kDefaultDenseBlockElems
  OptimizerConfig optimizer;
  InitializerConfig initializer;
  LifecycleConfig lifecycle;  // sparse only

  bool operator==(const TableConfig&) const = default;
};

// Validates `config` and fills every unset field with its default. INVALID_ARGUMENT names the
// table and the offending field.
TESSERA_EXPORT absl::StatusOr<TableConfig> ResolveTableConfig(const TableConfig& config);

// Number of dim-sized optimizer slot vectors kept beside each row (0, 1 or 2).
TESSERA_EXPORT int NumOptimizerSlots(OptimizerKind kind);
// Whether the optimizer keeps a step counter (Adam).
TESSERA_EXPORT bool OptimizerHasStep(OptimizerKind kind);

TESSERA_EXPORT absl::string_view TableKindName(TableKind kind);
TESSERA_EXPORT absl::string_view OptimizerKindName(OptimizerKind kind);
TESSERA_EXPORT absl::string_view InitializerKindName(InitializerKind kind);
TESSERA_EXPORT absl::string_view EvictionVictimsName(EvictionVictims victims);
// "ttl 3600 s, capacity 1000000 rows, lru" (resolved configs); "none" when off.
TESSERA_EXPORT std::string DescribeLifecycle(const LifecycleConfig& lifecycle);
// What differs between two resolved configs of one table, for messages: "lifecycle: ttl 60 s
// here, none requested"; empty when they are equal.
TESSERA_EXPORT std::string DescribeSpecDifference(const TableConfig& here,
                                                  const TableConfig& requested);
TESSERA_EXPORT absl::StatusOr<EvictionVictims> ParseEvictionVictims(absl::string_view name);
TESSERA_EXPORT absl::StatusOr<OptimizerKind> ParseOptimizerKind(absl::string_view name);
TESSERA_EXPORT absl::StatusOr<InitializerKind> ParseInitializerKind(absl::string_view name);

}  // namespace tessera

#endif  // TESSERA_COMMON_TABLE_CONFIG_H_
