#include "client/serving_client.h"

#include <chrono>
#include <cstring>

#include "absl/strings/str_format.h"
#include "common/grpc_channel.h"
#include "common/grpc_status.h"
#include "grpcpp/grpcpp.h"
#include "serving.grpc.pb.h"

namespace tessera {

namespace pb = tessera::serving::v1;

struct ServingClient::Impl {
  ServingClientOptions options;
  std::vector<std::unique_ptr<pb::Serving::Stub>> stubs;
  std::atomic<uint64_t> next{0};

  void Prepare(grpc::ClientContext* ctx) const {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(options.rpc_timeout_ms));
  }

  // Runs `call` on replicas in round-robin order until one answers with something other than
  // UNAVAILABLE or DEADLINE_EXCEEDED, at most max_attempts replicas.
  template <typename Fn>
  grpc::Status RoundRobin(Fn call) {
    grpc::Status s;
    const int attempts = std::max(1, options.max_attempts);
    for (int a = 0; a < attempts; ++a) {
      const size_t i = next.fetch_add(1) % stubs.size();
      grpc::ClientContext ctx;
      Prepare(&ctx);
      s = call(*stubs[i], &ctx);
      if (s.error_code() != grpc::StatusCode::UNAVAILABLE &&
          s.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
        return s;
      }
    }
    return s;
  }
};

absl::StatusOr<std::unique_ptr<ServingClient>> ServingClient::Connect(
    const ServingClientOptions& options) {
  if (options.replicas.empty()) return absl::InvalidArgumentError("no serving replica given");
  if (absl::Status s = CheckCredentials(options.credentials); !s.ok()) return s;
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetLoadBalancingPolicyName("round_robin");  // over a DNS name's addresses
  // A 1,000-key lookup's answer (64 KB at 16 floats) fits the first HTTP/2 window.
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 4 << 20);
  for (const std::string& r : options.replicas) {
    impl->stubs.push_back(pb::Serving::NewStub(MakeChannel(r, options.credentials, args)));
  }
  return std::unique_ptr<ServingClient>(new ServingClient(std::move(impl)));
}

ServingClient::ServingClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ServingClient::~ServingClient() = default;

namespace {

// One Lookup call, its answer checked for size.
absl::Status CallLookup(ServingClient::Impl& impl, const std::string& table,
                        absl::Span<const uint64_t> keys, uint64_t version,
                        pb::LookupResponse* resp) {
  pb::LookupRequest req;
  req.set_table(table);
  req.set_version(version);
  req.mutable_keys()->Add(keys.begin(), keys.end());
  grpc::Status s = impl.RoundRobin([&](pb::Serving::Stub& stub, grpc::ClientContext* ctx) {
    return stub.Lookup(ctx, req, resp);
  });
  if (!s.ok()) return FromGrpcStatus(s);
  if (resp->values().size() != size_t{resp->dim()} * keys.size() * sizeof(float) ||
      resp->found().size() < (keys.size() + 7) / 8) {
    return absl::InternalError(absl::StrFormat(
        "a malformed answer: %u value bytes and %u found bytes for %u keys of %u floats",
        resp->values().size(), resp->found().size(), keys.size(), resp->dim()));
  }
  return absl::OkStatus();
}

std::vector<bool> FoundBits(const std::string& bits, size_t n) {
  std::vector<bool> found(n);
  for (size_t i = 0; i < n; ++i) found[i] = (static_cast<uint8_t>(bits[i / 8]) >> (i % 8)) & 1;
  return found;
}

}  // namespace

absl::StatusOr<ServingRows> ServingClient::LookupRows(const std::string& table,
                                                      absl::Span<const uint64_t> keys,
                                                      uint64_t version) {
  pb::LookupResponse resp;
  if (absl::Status s = CallLookup(*impl_, table, keys, version, &resp); !s.ok()) return s;
  ServingRows out;
  out.version = resp.version();
  out.dim = resp.dim();
  out.values.resize(resp.values().size() / sizeof(float));
  std::memcpy(out.values.data(), resp.values().data(), resp.values().size());
  out.found = FoundBits(resp.found(), keys.size());
  return out;
}

absl::StatusOr<uint64_t> ServingClient::Lookup(const std::string& table,
                                               absl::Span<const uint64_t> keys,
                                               absl::Span<float> values, uint64_t version,
                                               std::vector<bool>* found) {
  pb::LookupResponse resp;
  if (absl::Status s = CallLookup(*impl_, table, keys, version, &resp); !s.ok()) return s;
  if (resp.values().size() != values.size() * sizeof(float)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("table '%s' has %u floats a row: %u values for %u keys, given room for %u",
                        table, resp.dim(), resp.values().size() / 4, keys.size(), values.size()));
  }
  std::memcpy(values.data(), resp.values().data(), resp.values().size());
  if (found != nullptr) *found = FoundBits(resp.found(), keys.size());
  return resp.version();
}

absl::StatusOr<uint64_t> ServingClient::LookupDense(const std::string& table,
                                                    std::vector<float>* values, uint64_t version) {
  pb::LookupDenseRequest req;
  req.set_table(table);
  req.set_version(version);
  pb::LookupDenseResponse resp;
  grpc::Status s = impl_->RoundRobin([&](pb::Serving::Stub& stub, grpc::ClientContext* ctx) {
    return stub.LookupDense(ctx, req, &resp);
  });
  if (!s.ok()) return FromGrpcStatus(s);
  values->resize(resp.values().size() / sizeof(float));
  std::memcpy(values->data(), resp.values().data(), values->size() * sizeof(float));
  return resp.version();
}

namespace {

absl::Status CheckIndex(size_t i, size_t n) {
  if (i < n) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrFormat("replica %u of %u", i, n));
}

}  // namespace

absl::StatusOr<ServingStatusInfo> ServingClient::Status(size_t i) {
  if (absl::Status s = CheckIndex(i, impl_->stubs.size()); !s.ok()) return s;
  grpc::ClientContext ctx;
  impl_->Prepare(&ctx);
  pb::ServingStatus resp;
  grpc::Status s = impl_->stubs[i]->GetServingStatus(&ctx, pb::GetServingStatusRequest(), &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  ServingStatusInfo out;
  out.version = resp.version();
  out.newest_version = resp.newest_version();
  out.held_versions.assign(resp.held_versions().begin(), resp.held_versions().end());
  out.pinned = resp.pinned();
  out.staleness_seconds = resp.staleness_seconds();
  out.bytes = resp.bytes();
  out.source = resp.source();
  out.last_error = resp.last_error();
  for (const pb::ServedTable& t : resp.tables()) {
    out.tables.push_back({.name = t.name(),
                          .dense = t.kind() == tessera::v1::TABLE_KIND_DENSE,
                          .dim = t.dim(),
                          .dense_size = t.dense_size(),
                          .rows = t.rows(),
                          .digest = t.digest()});
  }
  return out;
}

absl::StatusOr<uint64_t> ServingClient::Rollback(size_t i, uint64_t version) {
  if (absl::Status s = CheckIndex(i, impl_->stubs.size()); !s.ok()) return s;
  grpc::ClientContext ctx;
  impl_->Prepare(&ctx);
  pb::RollbackRequest req;
  req.set_version(version);
  pb::RollbackResponse resp;
  grpc::Status s = impl_->stubs[i]->Rollback(&ctx, req, &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return resp.version();
}

absl::StatusOr<uint64_t> ServingClient::Resume(size_t i) {
  if (absl::Status s = CheckIndex(i, impl_->stubs.size()); !s.ok()) return s;
  grpc::ClientContext ctx;
  impl_->Prepare(&ctx);
  pb::RollbackResponse resp;
  grpc::Status s = impl_->stubs[i]->Resume(&ctx, pb::ResumeRequest(), &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  return resp.version();
}

}  // namespace tessera
