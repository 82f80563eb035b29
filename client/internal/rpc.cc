#include "client/internal/rpc.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/data_frame.h"
#include "common/grpc_status.h"
#include "proto/tessera.grpc.pb.h"

namespace tessera::client_internal {

namespace {

// The data plane's number of a bulk method (docs/data_plane.md); 0 for the rest.
uint16_t DataMethodOf(absl::string_view method) {
  using data_frame::BulkMethod;
  if (method == "PullSparse") return static_cast<uint16_t>(BulkMethod::kPullSparse);
  if (method == "PushSparse") return static_cast<uint16_t>(BulkMethod::kPushSparse);
  if (method == "PullDense") return static_cast<uint16_t>(BulkMethod::kPullDense);
  if (method == "PushDense") return static_cast<uint16_t>(BulkMethod::kPushDense);
  return 0;
}

}  // namespace

std::chrono::milliseconds Backoff(const Client::Impl& impl, int attempt) {
  thread_local std::minstd_rand rng(std::random_device{}());
  const ClientOptions& o = impl.options;
  const double max_ms =
      impl.coordinated() ? std::min(o.max_backoff_ms, 250) : static_cast<double>(o.max_backoff_ms);
  double ms = o.initial_backoff_ms;
  for (int i = 2; i < attempt && ms < max_ms; ++i) ms *= 2;
  ms = std::min<double>(ms, max_ms);
  std::uniform_real_distribution<double> jitter(0.5, 1.0);
  return std::chrono::milliseconds(static_cast<int64_t>(ms * jitter(rng)) + 1);
}

Rpc::Rpc(Client::Impl* impl, uint32_t shard, const char* method, bool push,
         std::shared_ptr<OpTracker> op)
    : impl_(impl),
      shard_(shard),
      method_(absl::StrCat("/", v1::ParameterServer::service_full_name(), "/", method)),
      data_method_(DataMethodOf(method)),
      op_(std::move(op)) {
  impl_->RpcStarted();
  if (push) sequence_ = conn().pushes.Issue();
}

uint64_t Rpc::client_id() const { return impl_->client_id; }
uint64_t Rpc::floor() const { return conn().pushes.Floor(); }

BulkField Rpc::Borrow(int field_number, const void* data, size_t size) {
  holds_.fetch_add(1, std::memory_order_relaxed);
  return BulkField{field_number, data, size, [](void* self) { static_cast<Rpc*>(self)->Unhold(); },
                   this};
}

void Rpc::Attempt() {
  if (++attempt_ == 1) first_attempt_ = absl::Now();
  ctx_ = std::make_unique<grpc::ClientContext>();
  ctx_->set_deadline(std::chrono::system_clock::now() +
                     std::chrono::milliseconds(impl_->AttemptTimeoutMs()));
  endpoint_ = conn().Current();
  if (endpoint_ == nullptr) {
    if (std::string down = conn().Down(); !down.empty()) {  // LOST or RESTORING: fail fast
      down_ = true;
      OnDone(grpc::Status(grpc::StatusCode::UNAVAILABLE, down));
      return;
    }
    // No primary yet (a new cluster): wait for a map that has one.
    OnDone(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the shard has no primary"));
    return;
  }
  const grpc::ByteBuffer request = encode(*this);
  response_.Clear();
  on_data_ = false;
  if (data_method_ != 0) {
    if (std::shared_ptr<DataConn> data = endpoint_->Data(); data != nullptr) {
      on_data_ = true;
      reroute_ = false;
      // (`done` may run before Call returns; nothing here touches this object after it.)
      data->Call(data_method_, request, &response_,
                 absl::Now() + absl::Milliseconds(impl_->AttemptTimeoutMs()),
                 [this](grpc::Status s, DataConn::Hints hints) {
                   reroute_ = hints.reroute;
                   retry_after_ms_ = hints.retry_after_ms;
                   OnDone(std::move(s));
                 });
      return;
    }
  }
  endpoint_->Register(ctx_.get());
  endpoint_->NextGenericStub()->UnaryCall(ctx_.get(), method_, grpc::StubOptions(), &request,
                                          &response_,
                                          [this](grpc::Status s) { OnDone(std::move(s)); });
}

void Rpc::OnDone(grpc::Status s) {
  if (endpoint_ != nullptr && !on_data_) {
    endpoint_->Unregister(ctx_.get());
    retry_after_ms_ = RetryAfterMs(*ctx_);
  }
  const bool retryable = !down_ && (on_data_ ? impl_->Retryable(s, reroute_, retry_after_ms_)
                                             : impl_->Retryable(s, *ctx_));
  if (retryable) impl_->RequestRefresh();  // the shard may have a new primary
  if (retryable && impl_->MayRetry(attempt_, first_attempt_)) {
    impl_->retries.fetch_add(1, std::memory_order_relaxed);
    alarm_ = std::make_unique<grpc::Alarm>();
    alarm_->Set(
        std::chrono::system_clock::now() +
            std::max(Backoff(*impl_, attempt_ + 1), std::chrono::milliseconds(retry_after_ms_)),
        [this](bool) { Attempt(); });
    return;
  }
  absl::Status status = FromGrpcStatus(s);
  if (status.ok() && consume) status = consume(response_);
  if (sequence_ != 0) conn().pushes.Settle(sequence_);
  if (!status.ok()) {
    if (retryable && attempt_ > 1) {
      status =
          absl::Status(status.code(), absl::StrCat(status.message(), " (gave up after ", attempt_,
                                                   " attempts; a push's outcome is unknown)"));
    }
    status = impl_->Annotate(shard_, status);
  }
  outcome_ = std::move(status);
  Unhold();
}

void Rpc::Unhold() {
  if (holds_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  op_->Finish(outcome_);
  Client::Impl* impl = impl_;
  delete this;
  impl->RpcEnded();
}

}  // namespace tessera::client_internal
