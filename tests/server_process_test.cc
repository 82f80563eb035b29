// One real tessera-server process: bad input over the wire, metrics, health, SIGTERM drain.
#include <google/protobuf/unknown_field_set.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <atomic>
#include <vector>

#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/grpc_status.h"
#include "common/http_get.h"
#include "common/prom_text.h"
#include "common/wire.h"
#include "proto/tessera.grpc.pb.h"
#include "tests/test_cluster.h"

namespace tessera {
namespace {

using testing::Connect;
using testing::StartCluster;

std::unique_ptr<v1::ParameterServer::Stub> RawStub(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(-1);
  return v1::ParameterServer::NewStub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
}

v1::PullSparseRequest Pull(std::vector<uint64_t> keys) {
  v1::PullSparseRequest r;
  r.mutable_header()->set_shard_map_epoch(1);
  r.set_table("emb");
  r.set_key_type(v1::KEY_TYPE_UINT64);
  r.set_dtype(v1::DTYPE_FLOAT32);
  r.set_dim(8);
  r.set_num_keys(keys.size());
  PackedAssign<uint64_t>(r.mutable_keys(), keys);
  return r;
}

grpc::Status Call(v1::ParameterServer::Stub& stub, const v1::PullSparseRequest& req) {
  grpc::ClientContext ctx;
  v1::PullSparseResponse resp;
  return stub.PullSparse(&ctx, req, &resp);
}

TEST_CASE("a sparse call's working memory is reserved before it is allocated", "[process]") {
  // The per-key scratch (vshard order, the repeated-key table) counts against
  // --max_memory_bytes with the request and the response: 100,000 keys of dim 1 need 0.8 MB
  // of request and 0.4 MB of response, which fit in 3 MiB, but 6.4 MB of scratch does not.
  auto cluster = StartCluster(1, {"--max_memory_bytes=3145728"});
  auto client = Connect(*cluster);
  TableConfig t{.name = "t", .kind = TableKind::kSparse, .dim = 1};
  t.optimizer.kind = OptimizerKind::kAdd;
  REQUIRE(client->CreateTable(t).ok());
  auto stub = RawStub(cluster->addresses()[0]);
  std::vector<uint64_t> keys(100000);
  for (size_t i = 0; i < keys.size(); ++i) keys[i] = i * 7919;
  v1::PullSparseRequest req = Pull(keys);
  req.set_table("t");
  req.set_dim(1);
  const grpc::Status s = Call(*stub, req);
  INFO(s.error_message());
  CHECK(s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED);
  CHECK(s.error_message().find("working memory of 6404096 bytes") != std::string::npos);
  CHECK(s.error_message().find("--max_memory_bytes") != std::string::npos);
  absl::StatusOr<TableStatus> d = client->DescribeTable("t");
  REQUIRE(d.ok());
  CHECK(d->rows == 0);
  // A call that fits is served.
  std::vector<float> v(1000);
  CHECK(client->PullSparse("t", absl::MakeSpan(keys).subspan(0, 1000), absl::MakeSpan(v)).ok());
}

TEST_CASE("bad requests over the wire get precise statuses and change nothing", "[process]") {
  auto cluster = StartCluster(1, {"--max_request_bytes=1048576", "--max_keys_per_request=4096"});
  auto client = Connect(*cluster);
  TableConfig emb{.name = "emb", .kind = TableKind::kSparse, .dim = 8};
  emb.optimizer.kind = OptimizerKind::kAdd;
  REQUIRE(client->CreateTable(emb).ok());
  const std::vector<uint64_t> keys = {1, 2, 3};
  std::vector<float> grads(24, 2.0f);
  TESSERA_REQUIRE_OK(client->PushSparse("emb", keys, grads));
  auto snapshot = [&] {
    std::vector<float> v(24);
    TESSERA_REQUIRE_OK(client->PullSparse("emb", keys, absl::MakeSpan(v)));
    absl::StatusOr<TableStatus> t = client->DescribeTable("emb");
    REQUIRE(t.ok());
    v.push_back(static_cast<float>(t->rows));
    return v;
  };
  const std::vector<float> before = snapshot();

  auto stub = RawStub(cluster->addresses()[0]);
  struct Case {
    const char* what;
    v1::PullSparseRequest req;
    grpc::StatusCode code;
    const char* message;
  };
  std::vector<Case> cases;
  cases.push_back({"unknown table", Pull({7}), grpc::StatusCode::NOT_FOUND, "does not exist"});
  cases.back().req.set_table("missing");
  cases.push_back({"wrong dim", Pull({7}), grpc::StatusCode::INVALID_ARGUMENT, "has dim 8"});
  cases.back().req.set_dim(3);
  cases.push_back({"length mismatch", Pull({7, 8}), grpc::StatusCode::INVALID_ARGUMENT,
                   "needs 16 key bytes, got 15"});
  cases.back().req.mutable_keys()->pop_back();
  cases.push_back(
      {"unknown key type", Pull({7}), grpc::StatusCode::INVALID_ARGUMENT, "unknown key_type"});
  cases.back().req.set_key_type(static_cast<v1::KeyType>(3));
  cases.push_back({"too many keys", Pull(std::vector<uint64_t>(5000, 9)),
                   grpc::StatusCode::RESOURCE_EXHAUSTED, "over the limit of 4096"});
  cases.push_back({"oversized message", Pull(std::vector<uint64_t>(200000, 9)),
                   grpc::StatusCode::RESOURCE_EXHAUSTED, ""});
  cases.push_back({"stale epoch", Pull({7}), grpc::StatusCode::FAILED_PRECONDITION, "epoch"});
  cases.back().req.mutable_header()->set_shard_map_epoch(7);
  for (const Case& c : cases) {
    const grpc::Status s = Call(*stub, c.req);
    INFO(c.what << ": " << s.error_message());
    CHECK(s.error_code() == c.code);
    CHECK(s.error_message().find(c.message) != std::string::npos);
  }

  // A payload that is not a valid protobuf at all.
  grpc::GenericStub generic(
      grpc::CreateChannel(cluster->addresses()[0], grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  const char garbage[] = "\xff\xff\xff\xff\x0f not a protobuf";
  grpc::Slice slice(garbage, sizeof(garbage));
  grpc::ByteBuffer request(&slice, 1), response;
  absl::Notification done;
  grpc::Status garbage_status;
  generic.UnaryCall(&ctx, "/tessera.v1.ParameterServer/PushSparse", grpc::StubOptions(), &request,
                    &response, [&](grpc::Status s) {
                      garbage_status = s;
                      done.Notify();
                    });
  done.WaitForNotification();
  INFO(garbage_status.error_message());
  CHECK(garbage_status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(garbage_status.error_message().find("malformed tessera.v1.PushSparseRequest") !=
        std::string::npos);

  CHECK(snapshot() == before);
  CHECK(cluster->Stop().ok());  // and the server is still healthy enough to drain cleanly
}

// The service names a server's reflection service lists (grpc.reflection.v1alpha, spoken as
// raw bytes: Debian ships no reflection client).
absl::StatusOr<std::vector<std::string>> ReflectedServices(const std::string& address) {
  grpc::GenericStub stub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  class Reactor : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
   public:
    explicit Reactor(grpc::GenericStub& stub) {
      ctx_.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      stub.PrepareBidiStreamingCall(
          &ctx_, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
          grpc::StubOptions(), this);
      // ServerReflectionRequest{list_services: ""}: field 7, length-delimited, empty.
      grpc::Slice slice(std::string("\x3a\x00", 2));
      request_ = grpc::ByteBuffer(&slice, 1);
      StartWrite(&request_);
      StartRead(&response_);
      StartCall();
    }
    void OnWriteDone(bool) override { StartWritesDone(); }
    void OnReadDone(bool ok) override { read_ = ok; }
    void OnDone(const grpc::Status& s) override {
      status_ = s;
      done_.Notify();
    }
    absl::StatusOr<std::string> Await() {
      done_.WaitForNotification();
      if (!status_.ok()) return FromGrpcStatus(status_);
      if (!read_) return absl::DataLossError("no reflection response");
      std::vector<grpc::Slice> slices;
      (void)response_.Dump(&slices);
      std::string bytes;
      for (const grpc::Slice& s : slices) {
        bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
      }
      return bytes;
    }

   private:
    grpc::ClientContext ctx_;
    grpc::ByteBuffer request_, response_;
    bool read_ = false;
    grpc::Status status_;
    absl::Notification done_;
  } reactor(stub);
  absl::StatusOr<std::string> bytes = reactor.Await();
  if (!bytes.ok()) return bytes.status();
  // ServerReflectionResponse.list_services_response (6) -> ListServiceResponse.service (1)
  // -> ServiceResponse.name (1).
  google::protobuf::UnknownFieldSet response;
  if (!response.ParseFromString(*bytes)) return absl::DataLossError("unparsable response");
  std::vector<std::string> names;
  for (int i = 0; i < response.field_count(); ++i) {
    const google::protobuf::UnknownField& f = response.field(i);
    if (f.number() != 6 || f.type() != google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) {
      continue;
    }
    google::protobuf::UnknownFieldSet list;
    if (!list.ParseFromString(f.length_delimited())) continue;
    for (int j = 0; j < list.field_count(); ++j) {
      google::protobuf::UnknownFieldSet service;
      if (list.field(j).number() == 1 &&
          service.ParseFromString(list.field(j).length_delimited()) && service.field_count() > 0) {
        names.push_back(service.field(0).length_delimited());
      }
    }
  }
  return names;
}

TEST_CASE("server reflection lists the server's services", "[process]") {
  auto cluster = StartCluster(1);
  absl::StatusOr<std::vector<std::string>> names = ReflectedServices(cluster->addresses()[0]);
  INFO(names.status().ToString());
  REQUIRE(names.ok());
  INFO(absl::StrJoin(*names, ", "));
  CHECK(std::find(names->begin(), names->end(), "tessera.v1.ParameterServer") != names->end());
  CHECK(std::find(names->begin(), names->end(), "grpc.health.v1.Health") != names->end());
}

TEST_CASE("metrics and health are served", "[process]") {
  auto cluster = StartCluster(1);
  absl::StatusOr<bool> healthy = CheckHealth(cluster->addresses()[0]);
  REQUIRE(healthy.ok());
  CHECK(*healthy);
  // Per service: a static server serves data.
  absl::StatusOr<bool> data =
      CheckHealth(cluster->addresses()[0], absl::Seconds(5), "tessera.v1.ParameterServer");
  REQUIRE(data.ok());
  CHECK(*data);
  CHECK(CheckHealth(cluster->addresses()[0], absl::Seconds(5), "no.such.Service").status().code() ==
        absl::StatusCode::kNotFound);

  auto client = Connect(*cluster);
  TableConfig emb{.name = "emb", .kind = TableKind::kSparse, .dim = 4};
  REQUIRE(client->CreateTable(emb).ok());
  std::vector<uint64_t> keys(1000);
  for (size_t i = 0; i < keys.size(); ++i) keys[i] = i;
  std::vector<float> v(4000, 0.5f);
  for (int i = 0; i < 3; ++i) TESSERA_REQUIRE_OK(client->PushSparse("emb", keys, v));
  TESSERA_REQUIRE_OK(client->PullSparse("emb", keys, absl::MakeSpan(v)));
  std::vector<float> wrong(10);
  CHECK_FALSE(client->PullSparse("emb", absl::MakeConstSpan(keys.data(), 2),
                                 absl::MakeSpan(wrong))
                  .ok());  // dim 5: INVALID_ARGUMENT

  absl::StatusOr<std::string> m = HttpGet(cluster->metrics_ports()[0], "/metrics");
  REQUIRE(m.ok());
  INFO(m->substr(0, 3000));
  const std::vector<PromSample> s = ParsePromText(*m);
  CHECK(SumSamples(s, "tessera_server_requests_total",
                   {{"method", "PushSparse"}, {"code", "OK"}}) == 3);
  CHECK(SumSamples(s, "tessera_server_requests_total",
                   {{"method", "PullSparse"}, {"code", "INVALID_ARGUMENT"}}) == 1);
  CHECK(SumSamples(s, "tessera_server_request_duration_seconds_count",
                   {{"method", "PushSparse"}, {"code", "OK"}}) == 3);
  CHECK(SumSamples(s, "tessera_server_request_duration_seconds_bucket",
                   {{"method", "PushSparse"}, {"code", "OK"}, {"le", "+Inf"}}) == 3);
  CHECK(SumSamples(s, "tessera_server_keys_total", {{"method", "PushSparse"}}) == 3000);
  CHECK(SumSamples(s, "tessera_server_received_bytes_total", {{"method", "PushSparse"}}) ==
        3 * (1000 * 8 + 4000 * 4));
  CHECK(SumSamples(s, "tessera_server_sent_bytes_total", {{"method", "PullSparse"}}) == 4000 * 4);
  CHECK(SumSamples(s, "tessera_table_rows", {{"table", "emb"}, {"kind", "sparse"}}) == 1000);
  CHECK(SumSamples(s, "tessera_table_memory_bytes", {{"table", "emb"}}) > 16000);
  CHECK(SumSamples(s, "tessera_tables") == 1);
  CHECK(cluster->Stop().ok());
}

TEST_CASE("SIGTERM drains in-flight requests and exits 0", "[process]") {
  // Each push is held 2 s inside the server, so the test can catch them in flight.
  auto cluster = StartCluster(1, {"--testing_push_delay_ms=2000"});
  ClientOptions o;
  o.max_attempts = 1;  // see each request's own fate
  auto client = Connect(*cluster, o);
  TableConfig emb{.name = "emb", .kind = TableKind::kSparse, .dim = 8};
  emb.optimizer.kind = OptimizerKind::kAdd;
  REQUIRE(client->CreateTable(emb).ok());

  constexpr int kPushes = 6;
  std::vector<std::vector<uint64_t>> keys(kPushes);
  std::vector<float> grads(8, 1.0f);
  absl::Mutex mu;
  int finished = 0, ok = 0, cut_off = 0;
  for (int i = 0; i < kPushes; ++i) {
    keys[i] = {static_cast<uint64_t>(i)};
    client->PushSparseAsync("emb", keys[i], grads, [&](absl::Status s) {
      absl::MutexLock lock(&mu);
      ++finished;
      ok += s.ok();
      cut_off +=
          s.code() == absl::StatusCode::kCancelled || s.code() == absl::StatusCode::kUnavailable;
    });
  }
  // Wait (bounded by 20 s) until the server reports pushes being applied. It holds only as
  // many as gRPC has callback threads; the rest have arrived and wait for a thread.
  const int metrics_port = cluster->metrics_ports()[0];
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  int in_flight = 0;
  while (in_flight == 0 && absl::Now() < deadline) {
    absl::StatusOr<std::string> m = HttpGet(metrics_port, "/metrics");
    REQUIRE(m.ok());
    in_flight =
        static_cast<int>(SumSamples(ParsePromText(*m), "tessera_server_requests_in_flight"));
  }
  REQUIRE(in_flight > 0);
  {
    absl::MutexLock lock(&mu);
    REQUIRE(finished == 0);
  }
  absl::StatusOr<int> code = cluster->StopServer(0);  // SIGTERM while pushes are in flight
  REQUIRE(code.ok());
  CHECK(*code == 0);
  absl::MutexLock lock(&mu);
  mu.Await(absl::Condition(
      +[](int* n) { return *n == kPushes; }, &finished));
  // Every push being applied when SIGTERM came completed and was acknowledged. Pushes still
  // queued inside gRPC were cut off (CANCELLED or UNAVAILABLE: retryable, never applied twice).
  CHECK(ok >= in_flight);
  CHECK(ok + cut_off == kPushes);
}

}  // namespace
}  // namespace tessera
