// The data plane (docs/data_plane.md) of a real tessera-server process: the same answers as
// gRPC (D1), and bad input on its port answered precisely without a crash or a change (D2).
#include <grpcpp/grpcpp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "client/internal/data_conn.h"
#include "common/data_frame.h"
#include "common/http_get.h"
#include "common/prom_text.h"
#include "common/socket_io.h"
#include "common/wire.h"
#include "proto/tessera.grpc.pb.h"
#include "tests/test_cluster.h"

namespace tessera {
namespace {

namespace df = data_frame;
using testing::Connect;
using testing::StartCluster;

std::unique_ptr<v1::ParameterServer::Stub> Stub(const std::string& address) {
  return v1::ParameterServer::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
}

int DataPort(const std::string& address) {
  grpc::ClientContext ctx;
  v1::GetDataPlaneResponse resp;
  const grpc::Status s = Stub(address)->GetDataPlane(&ctx, {}, &resp);
  INFO(s.error_message());
  REQUIRE(s.ok());
  CHECK(resp.version() == df::kVersion);
  return static_cast<int>(resp.port());
}

double Metric(int metrics_port, const std::string& name,
              const std::map<std::string, std::string>& labels = {}) {
  absl::StatusOr<std::string> m = HttpGet(metrics_port, "/metrics");
  REQUIRE(m.ok());
  return SumSamples(ParsePromText(*m), name, labels);
}

// Waits (bounded) until the server has `n` data-plane connections open.
void WaitForConnections(int metrics_port, double n) {
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (Metric(metrics_port, "tessera_data_plane_connections") != n) {
    REQUIRE(absl::Now() < deadline);
    absl::SleepFor(absl::Milliseconds(10));
  }
}

// A raw data-plane connection, as a stranger would open one.
struct RawConn {
  int fd = -1;
  explicit RawConn(int port, bool handshake = true, const std::string& token = "") {
    absl::StatusOr<int> c = ConnectTcp("127.0.0.1", port, 5000);
    REQUIRE(c.ok());
    fd = *c;
    if (handshake) {
      Send(df::ClientHello(token));
      char hello[df::kHandshakeBytes];
      REQUIRE(ReadFull(fd, hello, sizeof(hello)));
      REQUIRE(df::HandshakeOk(hello));
    }
  }
  ~RawConn() { ::close(fd); }
  void Send(const std::string& bytes) {
    std::vector<iovec> iov = {{const_cast<char*>(bytes.data()), bytes.size()}};
    REQUIRE(WriteAll(fd, iov));
  }
  void SendFrame(uint32_t id, uint16_t method, const std::string& payload, uint16_t flags = 0,
                 int64_t length = -1) {
    df::RequestHeader h{id, method, flags,
                        static_cast<uint32_t>(length < 0 ? payload.size() : length)};
    char raw[df::kRequestHeaderBytes];
    df::Put(h, raw);
    Send(std::string(raw, sizeof(raw)) + payload);
  }
  // The next response: header, status message, payload.
  struct Response {
    df::ResponseHeader header;
    std::string message;
    std::string payload;
  };
  Response Next() {
    char raw[df::kResponseHeaderBytes];
    REQUIRE(ReadFull(fd, raw, sizeof(raw)));
    Response r{df::GetResponse(raw), "", ""};
    REQUIRE(df::ResponseHeaderProblem(r.header, 1 << 30) == nullptr);
    r.message.resize(r.header.message_length);
    r.payload.resize(r.header.payload_length);
    REQUIRE(ReadFull(fd, r.message.data(), r.message.size()));
    REQUIRE(ReadFull(fd, r.payload.data(), r.payload.size()));
    return r;
  }
  // Whether the server closed the connection (reads end).
  bool Closed() {
    char c;
    return !ReadFull(fd, &c, 1);
  }
};

std::string PullPayload(const std::vector<uint64_t>& keys, uint32_t dim = 4) {
  v1::PullSparseRequest r;
  r.mutable_header()->set_shard_map_epoch(1);
  r.set_table("emb");
  r.set_key_type(v1::KEY_TYPE_UINT64);
  r.set_dtype(v1::DTYPE_FLOAT32);
  r.set_dim(dim);
  r.set_num_keys(keys.size());
  PackedAssign<uint64_t>(r.mutable_keys(), keys);
  return r.SerializeAsString();
}

constexpr uint16_t kPullSparse = static_cast<uint16_t>(df::BulkMethod::kPullSparse);

TEST_CASE("bulk calls on the data plane answer as on gRPC, and really travel on it", "[process]") {
  auto cluster = StartCluster(2);
  const int m0 = cluster->metrics_ports()[0];
  const int m1 = cluster->metrics_ports()[1];
  ClientOptions grpc_only;
  grpc_only.data_plane = false;
  auto g = Connect(*cluster, grpc_only);
  auto d = Connect(*cluster);  // default: the data plane, 16 / 2 = 8 connections per server
  WaitForConnections(m0, 8);
  WaitForConnections(m1, 8);
  const double frames_before =
      Metric(m0, "tessera_data_plane_frames_total") + Metric(m1, "tessera_data_plane_frames_total");

  TableConfig emb{.name = "emb", .kind = TableKind::kSparse, .dim = 4};
  emb.optimizer.kind = OptimizerKind::kAdagrad;
  REQUIRE(g->CreateTable(emb).ok());
  TableConfig dense{.name = "w", .kind = TableKind::kDense, .dense_size = 300000};
  dense.optimizer.kind = OptimizerKind::kSgd;
  REQUIRE(g->CreateTable(dense).ok());

  // The same pushes through either client, alternating: both see the same values.
  std::vector<uint64_t> keys(5000);
  for (size_t i = 0; i < keys.size(); ++i) keys[i] = i * 2654435761u + 17;
  std::vector<float> grads(keys.size() * 4), dgrad(300000);
  for (size_t i = 0; i < grads.size(); ++i) grads[i] = static_cast<float>(i % 13) * 0.25f - 1;
  for (size_t i = 0; i < dgrad.size(); ++i) dgrad[i] = static_cast<float>(i % 7) - 3;
  for (int round = 0; round < 4; ++round) {
    Client& c = round % 2 == 0 ? *d : *g;
    TESSERA_REQUIRE_OK(c.PushSparse("emb", keys, grads));
    TESSERA_REQUIRE_OK(c.PushDense("w", 0, dgrad));
  }
  std::vector<float> via_data(grads.size()), via_grpc(grads.size());
  TESSERA_REQUIRE_OK(d->PullSparse("emb", keys, absl::MakeSpan(via_data)));
  TESSERA_REQUIRE_OK(g->PullSparse("emb", keys, absl::MakeSpan(via_grpc)));
  CHECK(via_data == via_grpc);
  std::vector<float> dense_data(300000), dense_grpc(300000);
  TESSERA_REQUIRE_OK(d->PullDense("w", 0, absl::MakeSpan(dense_data)));
  TESSERA_REQUIRE_OK(g->PullDense("w", 0, absl::MakeSpan(dense_grpc)));
  CHECK(dense_data == dense_grpc);
  CHECK(dense_data[1] != 0);  // (the pushes did something)

  // A refusal is the same too: a key repeated on the server's side is the client's check, so
  // use a wrong dim, which only the server sees.
  std::vector<float> wrong(keys.size() * 5);
  absl::Status sd = d->PushSparse("emb", keys, wrong);
  absl::Status sg = g->PushSparse("emb", keys, wrong);
  CHECK(sd.code() == absl::StatusCode::kInvalidArgument);
  CHECK(sd.code() == sg.code());

  // The data client's calls went over the data plane: at least one frame per call and server
  // (the calls are split into chunks of 512 KiB); the gRPC client's did not add any.
  const double frames_after =
      Metric(m0, "tessera_data_plane_frames_total") + Metric(m1, "tessera_data_plane_frames_total");
  CHECK(frames_after - frames_before >= 2 * (2 + 2 + 2 + 1));
  const double grpc_frames = frames_after;
  TESSERA_REQUIRE_OK(g->PullSparse("emb", keys, absl::MakeSpan(via_grpc)));
  CHECK(Metric(m0, "tessera_data_plane_frames_total") +
            Metric(m1, "tessera_data_plane_frames_total") ==
        grpc_frames);
}

TEST_CASE("a retired client connection answers its calls in flight and then closes", "[process]") {
  // What a client does with its healthy connections when it replaces a broken one (a draining
  // server closes its idle connections first): the calls they carry must still be answered.
  auto cluster = StartCluster(1, {"--testing_push_delay_ms=1000"});
  auto client = Connect(*cluster);
  TableConfig emb{.name = "emb", .kind = TableKind::kSparse, .dim = 4};
  emb.optimizer.kind = OptimizerKind::kAdd;
  REQUIRE(client->CreateTable(emb).ok());
  v1::PushSparseRequest push;
  push.mutable_header()->set_shard_map_epoch(1);
  push.set_table("emb");
  push.set_key_type(v1::KEY_TYPE_UINT64);
  push.set_dtype(v1::DTYPE_FLOAT32);
  push.set_dim(4);
  push.set_num_keys(1);
  PackedAssign<uint64_t>(push.mutable_keys(), std::vector<uint64_t>{7});
  PackedAssign<float>(push.mutable_values(), std::vector<float>{1, 2, 3, 4});
  push.mutable_id()->set_client_id(77);
  push.mutable_id()->set_sequence(1);
  const std::string bytes = push.SerializeAsString();
  grpc::Slice slice(bytes);
  const grpc::ByteBuffer request(&slice, 1);
  absl::StatusOr<std::shared_ptr<client_internal::DataConn>> conn =
      client_internal::DataConn::Open("127.0.0.1", DataPort(cluster->addresses()[0]), 5000, "");
  REQUIRE(conn.ok());
  constexpr uint16_t kPush = static_cast<uint16_t>(df::BulkMethod::kPushSparse);
  grpc::ByteBuffer response;
  absl::Notification answered;
  grpc::Status first;
  (*conn)->Call(kPush, request, &response, absl::Now() + absl::Seconds(20),
                [&](grpc::Status s, client_internal::DataConn::Hints) {
                  first = s;
                  answered.Notify();
                });
  (*conn)->Retire("retired by the test");  // while the push is held in the server
  grpc::Status later;
  grpc::ByteBuffer unused;
  (*conn)->Call(kPush, request, &unused, absl::Now() + absl::Seconds(20),
                [&](grpc::Status s, client_internal::DataConn::Hints) { later = s; });
  CHECK(later.error_code() == grpc::StatusCode::UNAVAILABLE);  // refused at once
  CHECK(later.error_message() == "retired by the test");
  REQUIRE(answered.WaitForNotificationWithTimeout(absl::Seconds(20)));
  INFO(first.error_message());
  CHECK(first.ok());  // the call in flight got its answer
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (!(*conn)->broken()) {  // and then the connection ended
    REQUIRE(absl::Now() < deadline);
    absl::SleepFor(absl::Milliseconds(10));
  }
  std::vector<float> row(4);
  REQUIRE(client->PullSparse("emb", std::vector<uint64_t>{7}, absl::MakeSpan(row)).ok());
  CHECK(row == std::vector<float>{1, 2, 3, 4});  // applied once
}

TEST_CASE("bad input on the data port is answered precisely and changes nothing", "[process]") {
  auto cluster = StartCluster(1, {"--max_request_bytes=1048576", "--max_memory_bytes=67108864",
                                  "--max_data_connections=4"});
  const int metrics = cluster->metrics_ports()[0];
  ClientOptions grpc_only;
  grpc_only.data_plane = false;
  auto client = Connect(*cluster, grpc_only);
  TableConfig emb{.name = "emb", .kind = TableKind::kSparse, .dim = 4};
  emb.optimizer.kind = OptimizerKind::kAdd;
  REQUIRE(client->CreateTable(emb).ok());
  const std::vector<uint64_t> keys = {1, 2, 3};
  TESSERA_REQUIRE_OK(client->PushSparse("emb", keys, std::vector<float>(12, 1.0f)));
  const int port = DataPort(cluster->addresses()[0]);
  REQUIRE(port > 0);

  SECTION("a wrong handshake: closed at once") {
    RawConn c(port, /*handshake=*/false);
    c.Send("HTTP/1.1");
    CHECK(c.Closed());
    CHECK(Metric(metrics, "tessera_data_plane_refused_connections_total") >= 1);
  }
  SECTION("an unknown method or flags: INVALID_ARGUMENT, then closed") {
    RawConn c(port);
    c.SendFrame(7, 9, "");
    RawConn::Response r = c.Next();
    CHECK(r.header.call_id == 7);
    CHECK(r.header.code == static_cast<uint16_t>(grpc::StatusCode::INVALID_ARGUMENT));
    CHECK(r.message.find("unknown method") != std::string::npos);
    CHECK(c.Closed());
    RawConn f(port);
    f.SendFrame(8, kPullSparse, PullPayload(keys), /*flags=*/4);
    r = f.Next();
    CHECK(r.header.code == static_cast<uint16_t>(grpc::StatusCode::INVALID_ARGUMENT));
    CHECK(r.message.find("unknown flags") != std::string::npos);
    CHECK(f.Closed());
  }
  SECTION("a frame over --max_request_bytes: RESOURCE_EXHAUSTED before any of it is read") {
    RawConn c(port);
    c.SendFrame(3, kPullSparse, "", 0, /*length=*/uint32_t{0xFFFFFFF0});
    RawConn::Response r = c.Next();
    CHECK(r.header.code == static_cast<uint16_t>(grpc::StatusCode::RESOURCE_EXHAUSTED));
    CHECK(r.message.find("--max_request_bytes 1048576") != std::string::npos);
    CHECK(c.Closed());
  }
  SECTION("a payload that is not the request: INVALID_ARGUMENT, and the stream goes on") {
    RawConn c(port);
    c.SendFrame(11, kPullSparse, std::string("\xff\xff\xff\xff\x0f", 5));
    RawConn::Response r = c.Next();
    CHECK(r.header.call_id == 11);
    CHECK(r.header.code == static_cast<uint16_t>(grpc::StatusCode::INVALID_ARGUMENT));
    CHECK(r.message.find("not a valid protobuf message") != std::string::npos);
    // Same connection, a good pull: the rows pushed above.
    c.SendFrame(12, kPullSparse, PullPayload(keys));
    r = c.Next();
    INFO(r.message);
    REQUIRE(r.header.code == 0);
    v1::PullSparseResponse resp;
    REQUIRE(resp.ParseFromString(r.payload));
    REQUIRE(resp.values().size() == 12 * sizeof(float));
    float first;
    std::memcpy(&first, resp.values().data(), sizeof(first));
    CHECK(first == 1.0f);
    // A request the server refuses (wrong dim) keeps the stream too, with its epoch.
    c.SendFrame(13, kPullSparse, PullPayload(keys, 5));
    r = c.Next();
    CHECK(r.header.code == static_cast<uint16_t>(grpc::StatusCode::INVALID_ARGUMENT));
    CHECK(r.header.epoch == 1);
  }
  SECTION("a truncated frame, then the connection dropped: the server carries on") {
    {
      RawConn c(port);
      const std::string p = PullPayload(keys);
      c.SendFrame(5, kPullSparse, p.substr(0, p.size() / 2), 0, static_cast<int64_t>(p.size()));
    }
    WaitForConnections(metrics, 0);
  }
  SECTION("more connections than --max_data_connections: the extra ones are closed") {
    std::vector<std::unique_ptr<RawConn>> open;
    for (int i = 0; i < 4; ++i) open.push_back(std::make_unique<RawConn>(port));
    absl::StatusOr<int> extra = ConnectTcp("127.0.0.1", port, 5000);
    REQUIRE(extra.ok());
    std::string client_hello = df::ClientHello("");
    std::vector<iovec> iov = {{client_hello.data(), client_hello.size()}};
    (void)WriteAll(*extra, iov);  // (may fail: the server may have closed it already)
    char hello[df::kHandshakeBytes];
    CHECK_FALSE(ReadFull(*extra, hello, sizeof(hello)));
    ::close(*extra);
    // A data-plane client then uses gRPC: its calls still succeed.
    auto d = Connect(*cluster);
    std::vector<float> out(12);
    TESSERA_REQUIRE_OK(d->PullSparse("emb", keys, absl::MakeSpan(out)));
    CHECK(out[0] == 1.0f);
  }

  // Whatever came in, the server is up and its rows are as pushed.
  std::vector<float> out(12);
  TESSERA_REQUIRE_OK(client->PullSparse("emb", keys, absl::MakeSpan(out)));
  CHECK(out == std::vector<float>(12, 1.0f));
  absl::StatusOr<TableStatus> t = client->DescribeTable("emb");
  REQUIRE(t.ok());
  CHECK(t->rows == 3);
}

TEST_CASE("a frame beyond the memory budget is refused without allocating it", "[process]") {
  // 4 MiB of budget, frames up to 8 MiB: a 6 MiB frame cannot be reserved, so it is read
  // through a small scratch buffer and answered RESOURCE_EXHAUSTED; the connection goes on.
  auto cluster = StartCluster(1, {"--max_request_bytes=8388608", "--max_memory_bytes=4194304"});
  const int port = DataPort(cluster->addresses()[0]);
  RawConn c(port);
  std::string big(6 << 20, '\0');
  c.SendFrame(21, kPullSparse, big);
  RawConn::Response r = c.Next();
  CHECK(r.header.call_id == 21);
  CHECK(r.header.code == static_cast<uint16_t>(grpc::StatusCode::RESOURCE_EXHAUSTED));
  CHECK(r.message.find("data-plane frame of 6291456 bytes") != std::string::npos);
  CHECK(r.message.find("--max_memory_bytes") != std::string::npos);
  c.SendFrame(22, kPullSparse, PullPayload({1}));  // table "emb" does not exist: NOT_FOUND
  r = c.Next();
  CHECK(r.header.call_id == 22);
  CHECK(r.header.code == static_cast<uint16_t>(grpc::StatusCode::NOT_FOUND));
}

TEST_CASE("a server started with --data_port=-1 has no data plane, and clients use gRPC",
          "[process]") {
  auto cluster = StartCluster(1, {"--data_port=-1"});
  CHECK(DataPort(cluster->addresses()[0]) == 0);
  auto client = Connect(*cluster);
  TableConfig emb{.name = "emb", .kind = TableKind::kSparse, .dim = 2};
  REQUIRE(client->CreateTable(emb).ok());
  std::vector<float> out(2);
  TESSERA_REQUIRE_OK(client->PullSparse("emb", std::vector<uint64_t>{5}, absl::MakeSpan(out)));
}

}  // namespace
}  // namespace tessera
