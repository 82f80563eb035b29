// LrGpu and CudaDeviceCount: the CUDA path, loaded at run time from libtessera_cuda.so
// (worker/cuda_api.h says why), and a clear UNAVAILABLE where there is none.
#include <dlfcn.h>

#include <cstdlib>
#include <mutex>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/cuda/cuda_api.h"
#include "worker/models/lr_kernels.h"

namespace tessera {

const cuda::Api* LoadCudaLibrary(std::string* why) {
  static std::once_flag once;
  static const cuda::Api* api = nullptr;
  static std::string* reason = new std::string();
  std::call_once(once, [] {
#if TESSERA_HAVE_CUDA
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("TESSERA_CUDA_LIBRARY"); env != nullptr && *env != '\0') {
      candidates.push_back(env);
    }
    candidates.push_back(TESSERA_CUDA_LIBRARY_PATH);  // the build tree's
    candidates.push_back("libtessera_cuda.so");       // the loader's search path
    for (const std::string& path : candidates) {
      void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (handle == nullptr) {
        absl::StrAppend(reason, reason->empty() ? "" : "; ", dlerror());
        continue;
      }
      auto* entry = reinterpret_cast<const cuda::Api* (*)()>(dlsym(handle, "tessera_cuda_api"));
      const cuda::Api* loaded = entry != nullptr ? entry() : nullptr;
      if (loaded == nullptr || loaded->version != cuda::kApiVersion) {
        absl::StrAppend(reason, reason->empty() ? "" : "; ", path,
                        ": not a matching libtessera_cuda (API version)");
        dlclose(handle);
        continue;
      }
      api = loaded;  // (never unloaded)
      return;
    }
#else
    *reason = "Tessera was built without CUDA (no nvcc at build time)";
#endif
  });
  if (api == nullptr && why != nullptr) *why = *reason;
  return api;
}

namespace {

class LrGpuImpl final : public LrGpu {
 public:
  LrGpuImpl(const cuda::Api* api, cuda::LrContext* ctx) : api_(api), ctx_(ctx) {}
  ~LrGpuImpl() override { api_->destroy_lr_context(ctx_); }

  absl::StatusOr<double> ForwardBackward(const LrBatch& batch, absl::Span<const float> weights,
                                         absl::Span<float> grads) override {
    double loss = 0;
    const char* message = "";
    const int rc = api_->lr_forward_backward(
        ctx_, batch.offsets.data(), batch.slots.data(), batch.labels.data(), batch.num_samples(),
        batch.slots.size(), weights.data(), grads.data(), batch.num_keys, &loss, &message);
    if (rc != 0) {
      return absl::InternalError(
          absl::StrFormat("GPU forward/backward failed: %d (%s)", rc, message));
    }
    return loss;
  }

 private:
  const cuda::Api* api_;
  cuda::LrContext* ctx_;
};

}  // namespace

int CudaDeviceCount(std::string* why) {
  const cuda::Api* api = LoadCudaLibrary(why);
  if (api == nullptr) return 0;
  int error = 0;
  const char* message = "";
  const int n = api->device_count(&error, &message);
  if (n == 0 && why != nullptr) {
    *why = error != 0 ? absl::StrFormat("CUDA error %d: %s", error, message)
                      : std::string("no CUDA device present");
  }
  return n;
}

absl::StatusOr<std::unique_ptr<LrGpu>> LrGpu::Create() {
  std::string why;
  if (CudaDeviceCount(&why) == 0) return absl::UnavailableError("no GPU: " + why);
  const cuda::Api* api = LoadCudaLibrary(nullptr);
  const char* message = "";
  cuda::LrContext* ctx = api->create_lr_context(&message);
  if (ctx == nullptr) return absl::UnavailableError(absl::StrCat("no GPU: ", message));
  return std::unique_ptr<LrGpu>(new LrGpuImpl(api, ctx));
}

}  // namespace tessera
