#include "worker/allreduce.h"

#include <algorithm>
#include <chrono>
#include <exception>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gloo/allreduce.h"
#include "gloo/broadcast.h"
#include "gloo/common/error.h"
#include "gloo/common/logging.h"
#include "gloo/math.h"
#include "gloo/rendezvous/context.h"
#include "gloo/rendezvous/store.h"
#include "gloo/transport/tcp/device.h"

namespace tessera {

absl::Status InMemoryRendezvousStore::Set(const std::string& key, const std::string& value) {
  absl::MutexLock lock(&mu_);
  values_[key] = value;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> InMemoryRendezvousStore::Get(
    const std::vector<std::string>& keys, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto all_set = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    for (const std::string& k : keys) {
      if (!values_.contains(k)) return false;
    }
    return true;
  };
  if (!mu_.AwaitWithTimeout(absl::Condition(&all_set), timeout)) {
    return absl::DeadlineExceededError(absl::StrFormat("rendezvous: %u key(s) not set within %s",
                                                       keys.size(), absl::FormatDuration(timeout)));
  }
  std::vector<std::string> out;
  out.reserve(keys.size());
  for (const std::string& k : keys) out.push_back(values_.at(k));
  return out;
}

namespace {

// Gloo's store interface on ours. Gloo's calls return nothing: a failure is thrown as Gloo's
// own IoException and caught by the group's boundary below, like every other Gloo error.
class GlooStore : public gloo::rendezvous::Store {
 public:
  GlooStore(RendezvousStore* store, std::string prefix, absl::Duration timeout)
      : store_(store), prefix_(std::move(prefix)), timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    const absl::Status s = store_->Set(prefix_ + key, std::string(data.begin(), data.end()));
    if (!s.ok()) throw gloo::IoException(std::string(s.message()));
  }

  std::vector<char> get(const std::string& key) override {
    absl::StatusOr<std::vector<std::string>> v = store_->Get({prefix_ + key}, timeout_);
    if (!v.ok()) throw gloo::IoException(std::string(v.status().message()));
    return std::vector<char>((*v)[0].begin(), (*v)[0].end());
  }

  void wait(const std::vector<std::string>& keys) override { wait(keys, ToChrono(timeout_)); }

  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override {
    std::vector<std::string> full;
    full.reserve(keys.size());
    for (const std::string& k : keys) full.push_back(prefix_ + k);
    absl::StatusOr<std::vector<std::string>> v = store_->Get(
        full, absl::FromChrono(std::min<std::chrono::milliseconds>(timeout, ToChrono(timeout_))));
    if (!v.ok()) throw gloo::IoException(std::string(v.status().message()));
  }

 private:
  static std::chrono::milliseconds ToChrono(absl::Duration d) {
    return std::chrono::milliseconds(absl::ToInt64Milliseconds(d));
  }

  RendezvousStore* const store_;
  const std::string prefix_;
  const absl::Duration timeout_;
};

// Every exception Gloo throws, as a status naming what was being done. Gloo's messages say
// "Timed out" for a peer silent past the timeout.
absl::Status FromGloo(const std::exception_ptr& e, const std::string& what) {
  std::string message;
  try {
    std::rethrow_exception(e);
  } catch (const gloo::EnforceNotMet& x) {
    message = x.msg();
  } catch (const std::exception& x) {
    message = x.what();
  } catch (...) {
    message = "an unknown error";
  }
  const std::string text = absl::StrCat(what, ": ", message);
  if (message.find("imed out") != std::string::npos ||
      message.find("not set within") != std::string::npos) {
    return absl::DeadlineExceededError(text);
  }
  return absl::UnavailableError(text);
}

}  // namespace

struct AllReduceGroup::Impl {
  int rank = 0;
  int size = 0;
  AllReduceOptions options;
  std::shared_ptr<gloo::transport::Device> device;
  std::shared_ptr<gloo::rendezvous::Context> context;
  uint32_t next_tag = 0;
  absl::Status failed;  // OK until a call failed
};

absl::StatusOr<std::unique_ptr<AllReduceGroup>> AllReduceGroup::Create(
    int rank, int size, RendezvousStore* store, const AllReduceOptions& options) {
  if (size < 1 || rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(
        absl::StrFormat("all-reduce rank %d is outside a group of %d", rank, size));
  }
  if (options.timeout <= absl::ZeroDuration() || options.bucket_bytes < sizeof(float)) {
    return absl::InvalidArgumentError("all-reduce: the timeout and bucket size must be positive");
  }
  auto impl = std::make_unique<Impl>();
  impl->rank = rank;
  impl->size = size;
  impl->options = options;
  try {
    gloo::transport::tcp::attr attr;
    attr.hostname = options.hostname;
    impl->device = gloo::transport::tcp::CreateDevice(attr);
    impl->context = std::make_shared<gloo::rendezvous::Context>(rank, size);
    impl->context->setTimeout(
        std::chrono::milliseconds(absl::ToInt64Milliseconds(options.timeout)));
    GlooStore gloo_store(store, options.prefix, options.timeout);
    impl->context->connectFullMesh(gloo_store, impl->device);
  } catch (...) {
    return FromGloo(
        std::current_exception(),
        absl::StrFormat("all-reduce rank %d of %d: connecting to the peers", rank, size));
  }
  return std::unique_ptr<AllReduceGroup>(new AllReduceGroup(std::move(impl)));
}

AllReduceGroup::AllReduceGroup(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

AllReduceGroup::~AllReduceGroup() = default;

int AllReduceGroup::rank() const { return impl_->rank; }
int AllReduceGroup::size() const { return impl_->size; }

absl::Status AllReduceGroup::Collective(const char* what, absl::Span<float> values,
                                        const std::function<void(float*, size_t, uint32_t)>& run) {
  if (!impl_->failed.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("this all-reduce group failed earlier (",
                                                      impl_->failed.message(),
                                                      "): form a new generation"));
  }
  if (impl_->size == 1 || values.empty()) return absl::OkStatus();
  const size_t bucket = std::max<size_t>(1, impl_->options.bucket_bytes / sizeof(float));
  for (size_t first = 0; first < values.size(); first += bucket) {
    const size_t n = std::min(bucket, values.size() - first);
    try {
      run(values.data() + first, n, impl_->next_tag++);
    } catch (...) {
      impl_->failed = FromGloo(std::current_exception(),
                               absl::StrFormat("all-reduce rank %d of %d: %s %u floats",
                                               impl_->rank, impl_->size, what, n));
      return impl_->failed;
    }
  }
  return absl::OkStatus();
}

absl::Status AllReduceGroup::Sum(absl::Span<float> values) {
  const auto timeout = std::chrono::milliseconds(absl::ToInt64Milliseconds(impl_->options.timeout));
  return Collective("summing", values, [&](float* data, size_t n, uint32_t tag) {
    gloo::AllreduceOptions opts(impl_->context);
    opts.setAlgorithm(gloo::AllreduceOptions::Algorithm::RING);
    opts.setOutput(data, n);
    opts.setReduceFunction(
        static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
    opts.setTag(tag);
    opts.setTimeout(timeout);
    gloo::allreduce(opts);
  });
}

absl::Status AllReduceGroup::Broadcast(int root, absl::Span<float> values) {
  if (root < 0 || root >= impl_->size) {
    return absl::InvalidArgumentError(
        absl::StrFormat("all-reduce: broadcast from rank %d of a group of %d", root, impl_->size));
  }
  const auto timeout = std::chrono::milliseconds(absl::ToInt64Milliseconds(impl_->options.timeout));
  return Collective("broadcasting", values, [&](float* data, size_t n, uint32_t tag) {
    gloo::BroadcastOptions opts(impl_->context);
    opts.setOutput(data, n);
    opts.setRoot(root);
    opts.setTag(tag);
    opts.setTimeout(timeout);
    gloo::broadcast(opts);
  });
}

}  // namespace tessera
