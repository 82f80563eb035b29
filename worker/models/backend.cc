#include "worker/models/backend.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/cuda/cuda_api.h"
#include "worker/models/lr_kernels.h"

namespace tessera {
namespace {

class CpuBackend final : public NnBackend {
 public:
  std::string name() const override { return "cpu"; }

  absl::StatusOr<MlpBatchStats> MlpForwardBackward(const MlpShape& shape, const MlpParams& params,
                                                   const float* x, const uint8_t* labels,
                                                   uint32_t batch, MlpParams* grads,
                                                   float* dx) override {
    return tessera::MlpForwardBackward(shape, params, x, labels, batch, grads, &mlp_ws_, dx);
  }

  absl::StatusOr<MlpBatchStats> EmbMlpForwardBackward(const EmbMlpShape& shape,
                                                      const MlpParams& params,
                                                      const BatchKeys& keys, const float* rows,
                                                      const float* dense, const uint8_t* labels,
                                                      uint32_t batch, MlpParams* grads,
                                                      std::vector<float>* emb_grads) override {
    return tessera::EmbMlpForwardBackward(shape, params, keys, rows, dense, labels, batch, grads,
                                          emb_grads, &emb_ws_);
  }

  absl::StatusOr<BatchKeys> UniqueKeys(const uint64_t* keys, size_t n) override {
    return tessera::UniqueKeys(keys, n);
  }

 private:
  MlpWorkspace mlp_ws_;
  EmbMlpWorkspace emb_ws_;
};

class GpuBackend final : public NnBackend {
 public:
  GpuBackend(const cuda::Api* api, cuda::NnContext* ctx) : api_(api), ctx_(ctx) {}
  ~GpuBackend() override { api_->destroy_nn_context(ctx_); }

  std::string name() const override { return "gpu"; }

  absl::StatusOr<MlpBatchStats> MlpForwardBackward(const MlpShape& shape, const MlpParams& params,
                                                   const float* x, const uint8_t* labels,
                                                   uint32_t batch, MlpParams* grads,
                                                   float* dx) override {
    Prepare(shape, params, grads);
    MlpBatchStats stats;
    const char* message = "";
    const int rc = api_->mlp_forward_backward(
        ctx_, static_cast<uint32_t>(shape.num_layers()), shape.sizes.data(), w_.data(), b_.data(),
        x, labels, batch, gw_.data(), gb_.data(), dx, &stats.loss, &stats.correct, &message);
    if (rc != 0) return Failed("MLP forward/backward", rc, message);
    return stats;
  }

  absl::StatusOr<MlpBatchStats> EmbMlpForwardBackward(const EmbMlpShape& shape,
                                                      const MlpParams& params,
                                                      const BatchKeys& keys, const float* rows,
                                                      const float* dense, const uint8_t* labels,
                                                      uint32_t batch, MlpParams* grads,
                                                      std::vector<float>* emb_grads) override {
    const MlpShape mlp = shape.Mlp();
    Prepare(mlp, params, grads);
    emb_grads->resize(keys.unique.size() * shape.dim);
    MlpBatchStats stats;
    const char* message = "";
    const int rc = api_->emb_mlp_forward_backward(
        ctx_, shape.fields, shape.dim, shape.dense, shape.interactions ? 1 : 0,
        static_cast<uint32_t>(mlp.num_layers()), mlp.sizes.data(), w_.data(), b_.data(),
        keys.row.data(), static_cast<uint32_t>(keys.unique.size()), rows, dense, labels, batch,
        gw_.data(), gb_.data(), emb_grads->data(), &stats.loss, &stats.correct, &message);
    if (rc != 0) return Failed("CTR forward/backward", rc, message);
    return stats;
  }

  absl::StatusOr<BatchKeys> UniqueKeys(const uint64_t* keys, size_t n) override {
    if (n > UINT32_MAX) return absl::InvalidArgumentError("too many keys in one batch");
    BatchKeys out;
    out.unique.resize(n);
    out.row.resize(n);
    uint32_t count = 0;
    const char* message = "";
    const int rc = api_->unique_keys(ctx_, keys, static_cast<uint32_t>(n), out.unique.data(),
                                     out.row.data(), &count, &message);
    if (rc != 0) return Failed("distinct keys", rc, message);
    out.unique.resize(count);
    return out;
  }

 private:
  // Pointer tables of the parameters and gradients (sized like the parameters).
  void Prepare(const MlpShape& shape, const MlpParams& params, MlpParams* grads) {
    const size_t layers = shape.num_layers();
    grads->w.resize(layers);
    grads->b.resize(layers);
    w_.resize(layers);
    b_.resize(layers);
    gw_.resize(layers);
    gb_.resize(layers);
    for (size_t l = 0; l < layers; ++l) {
      grads->w[l].resize(shape.weights(l));
      grads->b[l].resize(shape.biases(l));
      w_[l] = params.w[l].data();
      b_[l] = params.b[l].data();
      gw_[l] = grads->w[l].data();
      gb_[l] = grads->b[l].data();
    }
  }

  static absl::Status Failed(const char* what, int rc, const char* message) {
    return absl::InternalError(absl::StrFormat("GPU %s failed: %d (%s)", what, rc, message));
  }

  const cuda::Api* api_;
  cuda::NnContext* ctx_;
  std::vector<const float*> w_, b_;
  std::vector<float*> gw_, gb_;
};

}  // namespace

std::unique_ptr<NnBackend> MakeCpuBackend() { return std::make_unique<CpuBackend>(); }

absl::StatusOr<std::unique_ptr<NnBackend>> MakeGpuBackend() {
  std::string why;
  if (CudaDeviceCount(&why) == 0) return absl::UnavailableError("no GPU: " + why);
  const cuda::Api* api = LoadCudaLibrary(nullptr);
  const char* message = "";
  cuda::NnContext* ctx = api->create_nn_context(&message);
  if (ctx == nullptr) return absl::UnavailableError(absl::StrCat("no GPU: ", message));
  return std::unique_ptr<NnBackend>(new GpuBackend(api, ctx));
}

}  // namespace tessera
