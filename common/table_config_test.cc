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
