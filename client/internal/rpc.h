// One RPC to one server with its retries: the unit the client's calls are made of.
#ifndef TESSERA_CLIENT_INTERNAL_RPC_H_
#define TESSERA_CLIENT_INTERNAL_RPC_H_

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <random>

#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>

#include "client/internal/client_impl.h"
#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"

namespace tessera::client_internal {

// Backoff before attempt `attempt` (2, 3, ...): exponential with full jitter in [50%, 100%].
inline std::chrono::milliseconds Backoff(const ClientOptions& o, int attempt) {
  thread_local std::minstd_rand rng(std::random_device{}());
  double ms = o.initial_backoff_ms;
  for (int i = 2; i < attempt && ms < o.max_backoff_ms; ++i) ms *= 2;
  ms = std::min<double>(ms, o.max_backoff_ms);
  std::uniform_real_distribution<double> jitter(0.5, 1.0);
  return std::chrono::milliseconds(static_cast<int64_t>(ms * jitter(rng)) + 1);
}

// A heap-allocated RPC that deletes itself once done. On UNAVAILABLE (or CANCELLED) it retries
// with backoff,
// resending the same request (so a push keeps its sequence number). On success `consume` gets
// the response (it may reject a malformed one); the outcome goes to `op`.
template <typename Req, typename Resp>
class Rpc {
 public:
  using IssueFn = void (*)(v1::ParameterServer::Stub*, grpc::ClientContext*, const Req*, Resp*,
                           std::function<void(grpc::Status)>);
  using ConsumeFn = std::function<absl::Status(const Resp&)>;

  Rpc(Client::Impl* impl, uint32_t shard, IssueFn issue, std::shared_ptr<OpTracker> op)
      : impl_(impl), shard_(shard), issue_(issue), op_(std::move(op)) {
    impl_->RpcStarted();
    impl_->FillHeader(request.mutable_header());
    if constexpr (kIsPush) {
      v1::PushId* id = request.mutable_id();
      id->set_client_id(impl_->client_id);
      id->set_sequence(conn().pushes.Issue());
    }
  }

  Req request;
  Resp response;
  ConsumeFn consume;

  // Sends the first attempt. The object may be deleted before Start returns.
  void Start() { Attempt(); }

 private:
  static constexpr bool kIsPush = requires(Req r) { r.mutable_id(); };

  ServerConn& conn() { return *impl_->servers[shard_]; }

  void Attempt() {
    ++attempt_;
    if constexpr (kIsPush) request.mutable_id()->set_floor(conn().pushes.Floor());
    ctx_ = std::make_unique<grpc::ClientContext>();
    ctx_->set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(impl_->options.rpc_timeout_ms));
    response.Clear();
    issue_(conn().NextStub(), ctx_.get(), &request, &response,
           [this](grpc::Status s) { OnDone(std::move(s)); });
  }

  void OnDone(grpc::Status s) {
    // CANCELLED is what gRPC reports for a call cut off by a server shutting down (this client
    // never cancels its own calls); like UNAVAILABLE it is safe to retry: pulls are idempotent
    // and a retried push keeps its sequence number.
    const bool retryable = s.error_code() == grpc::StatusCode::UNAVAILABLE ||
                           s.error_code() == grpc::StatusCode::CANCELLED;
    if (retryable && attempt_ < impl_->options.max_attempts) {
      impl_->retries.fetch_add(1, std::memory_order_relaxed);
      alarm_ = std::make_unique<grpc::Alarm>();
      alarm_->Set(std::chrono::system_clock::now() + Backoff(impl_->options, attempt_ + 1),
                  [this](bool) { Attempt(); });
      return;
    }
    absl::Status status = FromGrpcStatus(s);
    if (status.ok() && consume) status = consume(response);
    if constexpr (kIsPush) {
      if (status.ok() && response.duplicate()) {
        impl_->duplicate_acks.fetch_add(1, std::memory_order_relaxed);
      }
      conn().pushes.Settle(request.id().sequence());
    }
    if (!status.ok()) {
      if (retryable && attempt_ > 1) {
        status = absl::UnavailableError(absl::StrCat(
            status.message(), " (gave up after ", attempt_, " attempts; outcome unknown)"));
      }
      status = impl_->Annotate(shard_, status);
    }
    op_->Finish(status);
    Client::Impl* impl = impl_;
    delete this;
    impl->RpcEnded();
  }

  Client::Impl* const impl_;
  const uint32_t shard_;
  const IssueFn issue_;
  const std::shared_ptr<OpTracker> op_;
  int attempt_ = 0;
  std::unique_ptr<grpc::ClientContext> ctx_;
  std::unique_ptr<grpc::Alarm> alarm_;
};

}  // namespace tessera::client_internal

#endif  // TESSERA_CLIENT_INTERNAL_RPC_H_
