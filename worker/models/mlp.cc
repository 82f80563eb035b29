#include "worker/models/mlp.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>

namespace tessera {

size_t MlpShape::num_params() const {
  size_t n = 0;
  for (size_t l = 0; l < num_layers(); ++l) n += weights(l) + biases(l);
  return n;
}

MlpParams MlpParams::Zeros(const MlpShape& shape) {
  MlpParams p;
  for (size_t l = 0; l < shape.num_layers(); ++l) {
    p.w.emplace_back(shape.weights(l), 0.0f);
    p.b.emplace_back(shape.biases(l), 0.0f);
  }
  return p;
}

void SetBlasThreads(int threads) { openblas_set_num_threads(threads); }

namespace {

// Forward pass; leaves the logits in ws->z.back().
void Forward(const MlpShape& shape, const MlpParams& params, const float* x, uint32_t batch,
             MlpWorkspace* ws) {
  const size_t layers = shape.num_layers();
  ws->z.resize(layers);
  ws->h.resize(layers);
  const float* in = x;
  for (size_t l = 0; l < layers; ++l) {
    const int din = static_cast<int>(shape.sizes[l]);
    const int dout = static_cast<int>(shape.sizes[l + 1]);
    std::vector<float>& z = ws->z[l];
    z.resize(size_t{batch} * dout);
    for (uint32_t i = 0; i < batch; ++i) {
      std::copy(params.b[l].begin(), params.b[l].end(), z.begin() + size_t{i} * dout);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(batch), dout, din, 1.0f,
                in, din, params.w[l].data(), dout, 1.0f, z.data(), dout);
    if (l + 1 < layers) {
      std::vector<float>& h = ws->h[l + 1];
      h.resize(z.size());
      for (size_t k = 0; k < z.size(); ++k) h[k] = z[k] > 0 ? z[k] : 0.0f;
      in = h.data();
    }
  }
}

// Softmax cross-entropy of the logits: the stats and, when dz is not null, d(mean loss)/dz.
MlpBatchStats SoftmaxCrossEntropy(const float* logits, const uint8_t* labels, uint32_t batch,
                                  uint32_t classes, float* dz) {
  MlpBatchStats s;
  for (uint32_t i = 0; i < batch; ++i) {
    const float* row = logits + size_t{i} * classes;
    const float top = *std::max_element(row, row + classes);
    double sum = 0;
    for (uint32_t c = 0; c < classes; ++c) sum += std::exp(static_cast<double>(row[c] - top));
    const double log_sum = std::log(sum) + top;
    s.loss += log_sum - row[labels[i]];
    s.correct += static_cast<uint32_t>(std::max_element(row, row + classes) - row) == labels[i];
    if (dz != nullptr) {
      for (uint32_t c = 0; c < classes; ++c) {
        const double p = std::exp(static_cast<double>(row[c]) - log_sum);
        dz[size_t{i} * classes + c] =
            static_cast<float>((p - (c == labels[i] ? 1.0 : 0.0)) / batch);
      }
    }
  }
  s.loss /= std::max<uint32_t>(batch, 1);
  return s;
}

}  // namespace

MlpBatchStats MlpForwardBackward(const MlpShape& shape, const MlpParams& params, const float* x,
                                 const uint8_t* labels, uint32_t batch, MlpParams* grads,
                                 MlpWorkspace* ws, float* dx) {
  Forward(shape, params, x, batch, ws);
  const size_t layers = shape.num_layers();
  const uint32_t classes = shape.sizes.back();
  ws->dz.resize(size_t{batch} * classes);
  const MlpBatchStats stats =
      SoftmaxCrossEntropy(ws->z.back().data(), labels, batch, classes, ws->dz.data());
  grads->w.resize(layers);
  grads->b.resize(layers);
  for (size_t l = layers; l-- > 0;) {
    const int din = static_cast<int>(shape.sizes[l]);
    const int dout = static_cast<int>(shape.sizes[l + 1]);
    const float* in = l == 0 ? x : ws->h[l].data();
    grads->w[l].resize(shape.weights(l));
    grads->b[l].assign(shape.biases(l), 0.0f);
    // dW = in^T dz, db = column sums of dz.
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, din, dout, static_cast<int>(batch), 1.0f,
                in, din, ws->dz.data(), dout, 0.0f, grads->w[l].data(), dout);
    for (uint32_t i = 0; i < batch; ++i) {
      const float* row = ws->dz.data() + size_t{i} * dout;
      for (int c = 0; c < dout; ++c) grads->b[l][c] += row[c];
    }
    if (l == 0) {
      if (dx != nullptr) {  // dx = dz W^T
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(batch), din, dout,
                    1.0f, ws->dz.data(), dout, params.w[0].data(), dout, 0.0f, dx, din);
      }
      break;
    }
    // dh = dz W^T, then through the ReLU of layer l - 1.
    ws->dh.resize(size_t{batch} * din);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(batch), din, dout, 1.0f,
                ws->dz.data(), dout, params.w[l].data(), dout, 0.0f, ws->dh.data(), din);
    const std::vector<float>& z = ws->z[l - 1];
    for (size_t k = 0; k < ws->dh.size(); ++k) {
      if (z[k] <= 0) ws->dh[k] = 0;
    }
    std::swap(ws->dz, ws->dh);
  }
  return stats;
}

MlpBatchStats MlpEvaluate(const MlpShape& shape, const MlpParams& params, const float* x,
                          const uint8_t* labels, uint32_t batch, MlpWorkspace* ws) {
  Forward(shape, params, x, batch, ws);
  return SoftmaxCrossEntropy(ws->z.back().data(), labels, batch, shape.sizes.back(), nullptr);
}

}  // namespace tessera
