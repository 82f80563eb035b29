// LrGpu and CudaDeviceCount: the CUDA path when built with it, a clear UNAVAILABLE otherwise.
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/lr_kernels.h"

#if TESSERA_HAVE_CUDA
#include "worker/lr_cuda.h"
#endif

namespace tessera {

#if TESSERA_HAVE_CUDA

int CudaDeviceCount(std::string* why) {
  int error = 0;
  const char* message = "";
  const int n = cuda::DeviceCount(&error, &message);
  if (n == 0 && why != nullptr) {
    *why = error != 0 ? absl::StrFormat("CUDA error %d: %s", error, message)
                      : std::string("no CUDA device present");
  }
  return n;
}

namespace {

class LrGpuImpl final : public LrGpu {
 public:
  explicit LrGpuImpl(cuda::LrContext* ctx) : ctx_(ctx) {}
  ~LrGpuImpl() override { cuda::DestroyLrContext(ctx_); }

  absl::StatusOr<double> ForwardBackward(const LrBatch& batch, absl::Span<const float> weights,
                                         absl::Span<float> grads) override {
    double loss = 0;
    const char* message = "";
    const int rc = cuda::LrForwardBackward(
        ctx_, batch.offsets.data(), batch.slots.data(), batch.labels.data(), batch.num_samples(),
        batch.slots.size(), weights.data(), grads.data(), batch.num_keys, &loss, &message);
    if (rc != 0) {
      return absl::InternalError(
          absl::StrFormat("GPU forward/backward failed: %d (%s)", rc, message));
    }
    return loss;
  }

 private:
  cuda::LrContext* ctx_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<LrGpu>> LrGpu::Create() {
  std::string why;
  if (CudaDeviceCount(&why) == 0) return absl::UnavailableError("no GPU: " + why);
  const char* message = "";
  cuda::LrContext* ctx = cuda::CreateLrContext(&message);
  if (ctx == nullptr) return absl::UnavailableError(absl::StrCat("no GPU: ", message));
  return std::unique_ptr<LrGpu>(new LrGpuImpl(ctx));
}

#else  // !TESSERA_HAVE_CUDA

int CudaDeviceCount(std::string* why) {
  if (why != nullptr) *why = "Tessera was built without CUDA (no nvcc at build time)";
  return 0;
}

absl::StatusOr<std::unique_ptr<LrGpu>> LrGpu::Create() {
  return absl::UnavailableError("no GPU: Tessera was built without CUDA");
}

#endif

}  // namespace tessera
