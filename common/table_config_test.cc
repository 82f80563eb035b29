#include "common/table_config.h"

#include <catch2/catch.hpp>

#include "common/wire.h"
#include "proto/tessera.pb.h"

namespace tessera {
namespace {

TEST_CASE("defaults are filled per optimizer", "[table_config]") {
  TableConfig c{.name = "emb", .kind = TableKind::kSparse, .dim = 8};
  c.optimizer.kind = OptimizerKind::kAdam;
  absl::StatusOr<TableConfig> r = ResolveTableConfig(c);
  REQUIRE(r.ok());
  CHECK(*r->optimizer.learning_rate == 0.001f);
  CHECK(*r->optimizer.beta1 == 0.9f);
  CHECK(*r->optimizer.beta2 == 0.999f);
  CHECK(*r->optimizer.epsilon == 1e-8f);
  CHECK_FALSE(r->optimizer.momentum.has_value());
  // Resolving twice changes nothing.
  CHECK(*ResolveTableConfig(*r) == *r);

  TableConfig d{.name = "w", .kind = TableKind::kDense, .dense_size = 10};
  d.initializer.kind = InitializerKind::kUniform;
  absl::StatusOr<TableConfig> rd = ResolveTableConfig(d);
  REQUIRE(rd.ok());
  CHECK(rd->dense_block_elems == kDefaultDenseBlockElems);
  CHECK(*rd->initializer.low == -0.01f);
}

TEST_CASE("invalid configs name the table and the field", "[table_config]") {
  auto error = [](TableConfig c) {
    absl::StatusOr<TableConfig> r = ResolveTableConfig(c);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
    return std::string(r.status().message());
  };
  CHECK(error({.name = "", .dim = 4}).find("invalid") != std::string::npos);
  CHECK(error({.name = "a/b", .dim = 4}).find("invalid") != std::string::npos);
  CHECK(error({.name = "e", .dim = 0}).find("sparse dim") != std::string::npos);
  CHECK(error({.name = "e", .dim = 70000}).find("sparse dim") != std::string::npos);
  CHECK(error({.name = "d", .kind = TableKind::kDense}).find("dense_size") != std::string::npos);
  CHECK(error({.name = "d", .kind = TableKind::kDense, .dim = 3, .dense_size = 9})
            .find("dim applies only") != std::string::npos);
  TableConfig lr{.name = "e", .dim = 4};
  lr.optimizer.learning_rate = -1.0f;
  CHECK(error(lr).find("'e': optimizer.learning_rate = -1") != std::string::npos);
  TableConfig mom{.name = "e", .dim = 4};
  mom.optimizer.momentum = 0.5f;  // sgd has no momentum
  CHECK(error(mom).find("does not apply to the sgd optimizer") != std::string::npos);
  TableConfig uni{.name = "e", .dim = 4};
  uni.initializer = {.kind = InitializerKind::kUniform, .low = 1.0f, .high = 1.0f};
  CHECK(error(uni).find("low < high") != std::string::npos);
  TableConfig norm{.name = "e", .dim = 4};
  norm.initializer = {.kind = InitializerKind::kNormal, .low = 1.0f};
  CHECK(error(norm).find("only mean and stddev") != std::string::npos);
  TableConfig dense_ttl{.name = "d", .kind = TableKind::kDense, .dense_size = 9};
  dense_ttl.lifecycle.ttl_seconds = 5;
  CHECK(error(dense_ttl).find("only to sparse tables") != std::string::npos);
  TableConfig no_policy{.name = "e", .dim = 4};
  no_policy.lifecycle.dry_run = true;
  CHECK(error(no_policy).find("need a policy") != std::string::npos);
  TableConfig half_life{.name = "e", .dim = 4};
  half_life.lifecycle = {.capacity_rows = 10, .lfu_half_life_seconds = 5};
  CHECK(error(half_life).find("only to LFU") != std::string::npos);
  TableConfig long_ttl{.name = "e", .dim = 4};
  long_ttl.lifecycle.ttl_seconds = kMaxTtlSeconds + 1;
  CHECK(error(long_ttl).find("ttl_seconds must be at most") != std::string::npos);
  TableConfig width_alone{.name = "e", .dim = 4};
  width_alone.lifecycle.admission_sketch_width = 1 << 20;
  CHECK(error(width_alone).find("need admission_min_count >= 2") != std::string::npos);
  TableConfig narrow{.name = "e", .dim = 4};
  narrow.lifecycle = {.admission_min_count = 2, .admission_sketch_width = 8};
  CHECK(error(narrow).find("64 to") != std::string::npos);
  TableConfig tier_and_capacity{.name = "e", .dim = 4};
  tier_and_capacity.lifecycle = {.capacity_rows = 10, .tier_ram_rows = 5};
  CHECK(error(tier_and_capacity).find("takes no capacity_rows") != std::string::npos);
  TableConfig long_idle{.name = "e", .dim = 4};
  long_idle.lifecycle.tier_idle_seconds = kMaxTtlSeconds + 1;
  CHECK(error(long_idle).find("tier_idle_seconds must be at most") != std::string::npos);
  TableConfig tier_lfu{.name = "e", .dim = 4};
  tier_lfu.lifecycle = {.victims = EvictionVictims::kLfu, .tier_ram_bytes = 1 << 20};
  REQUIRE(ResolveTableConfig(tier_lfu).ok());  // (victims order the RAM capacity's demotions)
  CHECK(ResolveTableConfig(tier_lfu)->lifecycle.enabled());
  CHECK(DescribeLifecycle(ResolveTableConfig(tier_lfu)->lifecycle).find("ram 1048576 bytes") !=
        std::string::npos);
  TableConfig admission{.name = "e", .dim = 4};
  admission.lifecycle.admission_min_count = 3;
  absl::StatusOr<TableConfig> resolved = ResolveTableConfig(admission);
  REQUIRE(resolved.ok());
  CHECK(resolved->lifecycle.admission_sketch_width == kDefaultSketchWidth);
  CHECK(resolved->lifecycle.admission_sketch_depth == kDefaultSketchDepth);
  CHECK(resolved->lifecycle.admission_aging_sightings == 16 * kDefaultSketchWidth);
}

TEST_CASE("a lifecycle resolves its LFU half-life and survives the wire", "[table_config]") {
  TableConfig c{.name = "emb", .kind = TableKind::kSparse, .dim = 8};
  c.lifecycle = {.ttl_seconds = 86400, .capacity_rows = 1000, .victims = EvictionVictims::kLfu};
  absl::StatusOr<TableConfig> r = ResolveTableConfig(c);
  REQUIRE(r.ok());
  CHECK(r->lifecycle.lfu_half_life_seconds == kDefaultLfuHalfLifeSeconds);
  CHECK(r->lifecycle.enabled());
  v1::TableSpec spec;
  TableConfigToProto(*r, &spec);
  CHECK(spec.lifecycle().victims() == v1::EVICTION_VICTIMS_LFU);
  absl::StatusOr<TableConfig> back = TableConfigFromProto(spec);
  REQUIRE(back.ok());
  CHECK(*back == *r);
  // The disk tier's fields too.
  TableConfig tiered{.name = "emb", .kind = TableKind::kSparse, .dim = 8};
  tiered.lifecycle = {
      .ttl_seconds = 600, .tier_ram_rows = 7, .tier_ram_bytes = 9, .tier_idle_seconds = 11};
  v1::TableSpec tiered_spec;
  TableConfigToProto(*ResolveTableConfig(tiered), &tiered_spec);
  CHECK(TableConfigFromProto(tiered_spec)->lifecycle == ResolveTableConfig(tiered)->lifecycle);
  // A table without one sends no lifecycle at all (specs of older servers compare equal).
  TableConfig plain{.name = "emb", .kind = TableKind::kSparse, .dim = 8};
  TableConfigToProto(plain, &spec);
  CHECK_FALSE(spec.has_lifecycle());
  spec.mutable_lifecycle()->set_victims(static_cast<v1::EvictionVictims>(7));
  CHECK(TableConfigFromProto(spec).status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(*ParseEvictionVictims("lfu") == EvictionVictims::kLfu);
  CHECK_FALSE(ParseEvictionVictims("fifo").ok());
}

TEST_CASE("a spec difference names the field", "[table_config]") {
  TableConfig a{.name = "emb", .kind = TableKind::kSparse, .dim = 8};
  TableConfig b = a;
  CHECK(DescribeSpecDifference(a, b).empty());
  b.lifecycle.ttl_seconds = 60;
  CHECK(DescribeSpecDifference(a, b) == "lifecycle: none here, ttl 60 s requested");
  b.dim = 4;
  CHECK(DescribeSpecDifference(a, b) == "dim: 8 here, 4 requested");
  b = a;
  b.optimizer.kind = OptimizerKind::kAdam;
  CHECK(DescribeSpecDifference(a, b) == "optimizer: sgd here, adam requested");
}

TEST_CASE("table configs survive the wire", "[table_config]") {
  TableConfig c{.name = "emb", .kind = TableKind::kSparse, .dim = 16};
  c.optimizer = {.kind = OptimizerKind::kFtrl, .learning_rate = 0.2f, .l1 = 0.5f};
  c.initializer = {.kind = InitializerKind::kNormal, .stddev = 0.1f, .seed = 99};
  v1::TableSpec spec;
  TableConfigToProto(c, &spec);
  absl::StatusOr<TableConfig> back = TableConfigFromProto(spec);
  REQUIRE(back.ok());
  CHECK(*back == c);
  spec.set_kind(static_cast<v1::TableKind>(9));
  CHECK(TableConfigFromProto(spec).status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("optimizer names parse both ways", "[table_config]") {
  for (auto k :
       {OptimizerKind::kSgd, OptimizerKind::kMomentum, OptimizerKind::kAdagrad,
        OptimizerKind::kAdam, OptimizerKind::kFtrl, OptimizerKind::kAdd, OptimizerKind::kAssign}) {
    CHECK(*ParseOptimizerKind(OptimizerKindName(k)) == k);
  }
  CHECK_FALSE(ParseOptimizerKind("rmsprop").ok());
  CHECK(*ParseInitializerKind("normal") == InitializerKind::kNormal);
}

}  // namespace
}  // namespace tessera
