#include "worker/models/emb_mlp.h"

#include <algorithm>

#include "absl/container/flat_hash_map.h"

namespace tessera {

MlpShape EmbMlpShape::Mlp() const {
  MlpShape s;
  s.sizes.push_back(static_cast<uint32_t>(input()));
  for (uint32_t h : hidden) s.sizes.push_back(h);
  s.sizes.push_back(2);
  return s;
}

BatchKeys UniqueKeys(const uint64_t* keys, size_t n) {
  BatchKeys out;
  out.row.resize(n);
  absl::flat_hash_map<uint64_t, uint32_t> index;
  index.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    auto [it, inserted] = index.try_emplace(keys[i], static_cast<uint32_t>(out.unique.size()));
    if (inserted) out.unique.push_back(keys[i]);
    out.row[i] = it->second;
  }
  return out;
}

namespace {

// The MLP's input: each example's embeddings, field by field, the dot products of every pair
// (a < b, in order), then its dense features.
void Gather(const EmbMlpShape& shape, const BatchKeys& keys, const float* rows, const float* dense,
            uint32_t batch, std::vector<float>* x) {
  const size_t width = shape.input();
  const size_t emb = size_t{shape.fields} * shape.dim;
  x->resize(batch * width);
  for (uint32_t i = 0; i < batch; ++i) {
    float* out = x->data() + i * width;
    for (uint32_t f = 0; f < shape.fields; ++f) {
      const float* e = rows + size_t{keys.row[size_t{i} * shape.fields + f]} * shape.dim;
      std::copy(e, e + shape.dim, out + size_t{f} * shape.dim);
    }
    size_t p = emb;
    for (uint32_t a = 0; shape.interactions && a < shape.fields; ++a) {
      for (uint32_t b = a + 1; b < shape.fields; ++b) {
        float dot = 0;
        for (uint32_t k = 0; k < shape.dim; ++k) {
          dot += out[size_t{a} * shape.dim + k] * out[size_t{b} * shape.dim + k];
        }
        out[p++] = dot;
      }
    }
    std::copy(dense + size_t{i} * shape.dense, dense + size_t{i + 1} * shape.dense, out + p);
  }
}

}  // namespace

MlpBatchStats EmbMlpForwardBackward(const EmbMlpShape& shape, const MlpParams& params,
                                    const BatchKeys& keys, const float* rows, const float* dense,
                                    const uint8_t* labels, uint32_t batch, MlpParams* grads,
                                    std::vector<float>* emb_grads, EmbMlpWorkspace* ws) {
  Gather(shape, keys, rows, dense, batch, &ws->x);
  ws->dx.resize(ws->x.size());
  const MlpBatchStats stats = MlpForwardBackward(shape.Mlp(), params, ws->x.data(), labels, batch,
                                                 grads, &ws->mlp, ws->dx.data());
  // Scatter: each key's gradient is the sum over the examples (and fields) that used it; a dot
  // product's gradient reaches both of its embeddings.
  emb_grads->assign(keys.unique.size() * shape.dim, 0.0f);
  const size_t width = shape.input();
  const size_t emb = size_t{shape.fields} * shape.dim;
  for (uint32_t i = 0; i < batch; ++i) {
    float* g = ws->dx.data() + i * width;
    const float* x = ws->x.data() + i * width;
    size_t p = emb;
    for (uint32_t a = 0; shape.interactions && a < shape.fields; ++a) {
      for (uint32_t b = a + 1; b < shape.fields; ++b, ++p) {
        for (uint32_t k = 0; k < shape.dim; ++k) {
          g[size_t{a} * shape.dim + k] += g[p] * x[size_t{b} * shape.dim + k];
          g[size_t{b} * shape.dim + k] += g[p] * x[size_t{a} * shape.dim + k];
        }
      }
    }
    for (uint32_t f = 0; f < shape.fields; ++f) {
      float* out = emb_grads->data() + size_t{keys.row[size_t{i} * shape.fields + f]} * shape.dim;
      for (uint32_t k = 0; k < shape.dim; ++k) out[k] += g[size_t{f} * shape.dim + k];
    }
  }
  return stats;
}

void EmbMlpScores(const EmbMlpShape& shape, const MlpParams& params, const BatchKeys& keys,
                  const float* rows, const float* dense, uint32_t batch, std::vector<float>* out,
                  EmbMlpWorkspace* ws) {
  Gather(shape, keys, rows, dense, batch, &ws->x);
  const std::vector<uint8_t> labels(batch, 0);
  MlpEvaluate(shape.Mlp(), params, ws->x.data(), labels.data(), batch, &ws->mlp);
  const std::vector<float>& logits = MlpLogits(ws->mlp);
  out->resize(batch);
  for (uint32_t i = 0; i < batch; ++i) (*out)[i] = logits[2 * i + 1] - logits[2 * i];
}

}  // namespace tessera
