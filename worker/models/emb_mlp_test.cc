#include "worker/models/emb_mlp.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <random>

#include "absl/container/flat_hash_map.h"
#include "optimizer/optimizer.h"
#include "worker/data/synthetic_ctr.h"

namespace tessera {
namespace {

MlpParams RandomParams(const MlpShape& shape, std::mt19937& rng) {
  MlpParams p = MlpParams::Zeros(shape);
  for (size_t l = 0; l < shape.num_layers(); ++l) {
    std::normal_distribution<float> n(0, std::sqrt(2.0f / shape.sizes[l]));
    for (float& v : p.w[l]) v = n(rng);
  }
  return p;
}

TEST_CASE("a batch's keys are deduplicated, each use pointing at its row", "[ctr]") {
  const std::vector<uint64_t> keys = {7, 9, 7, 3, 9, 9};
  const BatchKeys k = UniqueKeys(keys.data(), keys.size());
  CHECK(k.unique == std::vector<uint64_t>{7, 9, 3});
  CHECK(k.row == std::vector<uint32_t>{0, 1, 0, 2, 1, 1});
}

TEST_CASE("embedding gradients match finite differences, summed over repeated keys", "[ctr]") {
  EmbMlpShape shape{.fields = 3, .dim = 2, .dense = 1, .hidden = {5}};
  std::mt19937 rng(4);
  const MlpParams params = RandomParams(shape.Mlp(), rng);
  // Four examples; key 11 is used twice in one example and again in another.
  const std::vector<uint64_t> raw = {11, 12, 11, 13, 14, 15, 11, 16, 17, 18, 12, 19};
  const BatchKeys keys = UniqueKeys(raw.data(), raw.size());
  std::normal_distribution<float> n(0, 1);
  std::vector<float> rows(keys.unique.size() * shape.dim), dense(4);
  for (float& v : rows) v = n(rng);
  for (float& v : dense) v = n(rng);
  const std::vector<uint8_t> labels = {1, 0, 1, 0};
  MlpParams grads;
  std::vector<float> emb_grads;
  EmbMlpWorkspace ws;
  EmbMlpForwardBackward(shape, params, keys, rows.data(), dense.data(), labels.data(), 4, &grads,
                        &emb_grads, &ws);
  auto loss = [&] {
    MlpParams g;
    std::vector<float> eg;
    EmbMlpWorkspace w;
    return EmbMlpForwardBackward(shape, params, keys, rows.data(), dense.data(), labels.data(), 4,
                                 &g, &eg, &w)
        .loss;
  };
  const double at = loss();
  const float eps = 1e-3f;
  int checked = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const float keep = rows[i];
    rows[i] = keep + eps;
    const double up = loss();
    rows[i] = keep - eps;
    const double down = loss();
    rows[i] = keep;
    if (std::abs((up - at) - (at - down)) > 1e-4) continue;  // a ReLU kink in between
    ++checked;
    const double numeric = (up - down) / (2 * eps);
    INFO("row value " << i << ": analytic " << emb_grads[i] << ", numeric " << numeric);
    CHECK(std::abs(emb_grads[i] - numeric) <= 2e-3 + 2e-2 * std::abs(numeric));
  }
  CHECK(checked >= static_cast<int>(rows.size() * 8 / 10));
}

// A local sanity check on a third of the data; the acceptance bar (AUC within 0.02 of the
// planted model's, through a cluster) is tests/ctr_cluster_test.cc.
TEST_CASE("the CTR model learns the planted problem locally, close to the planted AUC", "[ctr]") {
  PlantedCtrOptions po;
  po.train_examples = 60000;
  po.test_examples = 10000;
  const PlantedCtrProblem p = MakePlantedCtrProblem(po);
  EmbMlpShape shape{.fields = po.num_fields, .dim = 8, .dense = po.num_dense, .hidden = {64, 32}};
  std::mt19937 rng(1);
  MlpParams params = RandomParams(shape.Mlp(), rng);
  // Embeddings in a local table (what a sparse table holds), small normal initial values.
  absl::flat_hash_map<uint64_t, std::vector<float>> table;
  std::normal_distribution<float> init(0, 0.05f);
  auto row_of = [&](uint64_t key) -> std::vector<float>& {
    auto [it, inserted] = table.try_emplace(key);
    if (inserted) {
      it->second.resize(shape.dim);
      for (float& v : it->second) v = init(rng);
    }
    return it->second;
  };
  const uint32_t batch = 256;
  OptimizerParams adagrad;
  adagrad.kind = OptimizerKind::kAdagrad;
  adagrad.learning_rate = 0.05f;
  adagrad.epsilon = 1e-10f;
  adagrad.num_slots = 1;
  std::vector<std::vector<float>> acc_w, acc_b;
  for (size_t l = 0; l < params.w.size(); ++l) {
    acc_w.emplace_back(params.w[l].size(), 0.0f);
    acc_b.emplace_back(params.b[l].size(), 0.0f);
  }
  absl::flat_hash_map<uint64_t, std::vector<float>> acc_e;
  MlpParams grads;
  std::vector<float> emb_grads, rows;
  std::vector<uint8_t> labels(batch);
  EmbMlpWorkspace ws;
  auto scores_of = [&](const SparseDataset& d) {
    std::vector<float> all, s;
    for (size_t start = 0; start < d.num_examples(); start += batch) {
      const uint32_t n = static_cast<uint32_t>(std::min<size_t>(batch, d.num_examples() - start));
      const BatchKeys k =
          UniqueKeys(d.keys.data() + start * shape.fields, size_t{n} * shape.fields);
      rows.clear();
      for (uint64_t key : k.unique) {
        const std::vector<float>& r = row_of(key);
        rows.insert(rows.end(), r.begin(), r.end());
      }
      EmbMlpScores(shape, params, k, rows.data(), d.dense.data() + start * shape.dense, n, &s, &ws);
      all.insert(all.end(), s.begin(), s.end());
    }
    return all;
  };
  for (int epoch = 0; epoch < 3; ++epoch) {
    for (size_t start = 0; start + batch <= p.train.num_examples(); start += batch) {
      const BatchKeys k =
          UniqueKeys(p.train.keys.data() + start * shape.fields, size_t{batch} * shape.fields);
      rows.clear();
      for (uint64_t key : k.unique) {
        const std::vector<float>& r = row_of(key);
        rows.insert(rows.end(), r.begin(), r.end());
      }
      for (uint32_t i = 0; i < batch; ++i) labels[i] = p.train.labels[start + i] > 0.5f;
      EmbMlpForwardBackward(shape, params, k, rows.data(),
                            p.train.dense.data() + start * shape.dense, labels.data(), batch,
                            &grads, &emb_grads, &ws);
      // Adagrad everywhere (the servers' own kernel): per-coordinate steps suit rare keys.
      for (size_t l = 0; l < params.w.size(); ++l) {
        ApplyUpdate(adagrad, params.w[l].data(), acc_w[l].data(), nullptr, nullptr,
                    grads.w[l].data(), params.w[l].size());
        ApplyUpdate(adagrad, params.b[l].data(), acc_b[l].data(), nullptr, nullptr,
                    grads.b[l].data(), params.b[l].size());
      }
      for (size_t u = 0; u < k.unique.size(); ++u) {
        std::vector<float>& r = row_of(k.unique[u]);
        std::vector<float>& a = acc_e[k.unique[u]];
        a.resize(shape.dim, 0.0f);
        ApplyUpdate(adagrad, r.data(), a.data(), nullptr, nullptr, emb_grads.data() + u * shape.dim,
                    shape.dim);
      }
    }
  }
  const double auc = Auc(scores_of(p.test), p.test.labels);
  const double planted = Auc(p.test_logits, p.test.labels);
  WARN("local CTR model: test AUC " << auc << " (planted model " << planted << ")");
  CHECK(auc > planted - 0.05);
  CHECK(auc <= planted + 0.01);
}

}  // namespace
}  // namespace tessera
