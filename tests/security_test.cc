// Tokens and roles (docs/security.md) on real processes: a replicated cluster whose daemons
// run with --auth_token_file. Every RPC of every Tessera service, enumerated through the
// daemons' own server reflection, is refused without a token and with a token of a role it
// does not allow, before its request is parsed, and nothing changes; strangers cannot register
// or replicate; the data plane follows the same rules; SIGHUP rotates tokens while a client
// pushes, without a failed push.
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/auth.h"
#include "common/data_frame.h"
#include "common/grpc_channel.h"
#include "common/http_get.h"
#include "common/prom_text.h"
#include "common/socket_io.h"
#include "proto/tessera.grpc.pb.h"
#include "testing/local_pki.h"
#include "testing/local_prometheus.h"
#include "tests/test_cluster.h"

namespace tessera {
namespace {

using testing::Connect;

const std::string kAdmin = "admin-0123456789abcdef";
const std::string kWorker = "worker-0123456789abcdef";
const std::string kReader = "reader-0123456789abcdef";
const std::string kServer = "server-0123456789abcdef";
const std::map<RoleSet, std::string> kTokenOf = {
    {kRoleAdmin, kAdmin}, {kRoleWorker, kWorker}, {kRoleReader, kReader}, {kRoleServer, kServer}};

std::string TokenFile(const std::string& text) {
  char dir[] = "/tmp/tessera_security_test_XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  const std::string path = std::string(dir) + "/tokens";
  std::ofstream(path) << text;
  return path;
}

std::string AllRoles() {
  return absl::StrCat("admin ", kAdmin, "\nworker ", kWorker, "\nreader ", kReader, "\nserver ",
                      kServer, "\n");
}

std::unique_ptr<LocalCluster> StartSecure(const std::string& token_file, uint32_t servers = 2,
                                          uint32_t replication = 2, const LocalPki* pki = nullptr) {
  LocalClusterOptions o;
  if (pki != nullptr) {
    o.tls_ca_file = pki->ca_file;
    o.tls_cert_file = pki->cert_file;
    o.tls_key_file = pki->key_file;
  }
  o.server_binary = TESSERA_SERVER_BINARY;
  o.coordinator_binary = TESSERA_COORDINATOR_BINARY;
  o.num_servers = servers;
  o.replication = replication;
  o.num_shards = servers / replication;
  o.auth_token_file = token_file;
  absl::StatusOr<std::unique_ptr<LocalCluster>> c = LocalCluster::Start(o);
  INFO(c.status().ToString());
  REQUIRE(c.ok());
  return std::move(*c);
}

// Waits (at most `timeout`) until done() holds.
template <typename Fn>
void WaitUntil(Fn&& done, absl::Duration timeout = absl::Seconds(20)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    REQUIRE(absl::Now() < deadline);
    absl::SleepFor(absl::Milliseconds(10));
  }
}

// A counter or gauge of the daemon serving /metrics on `port`, summed over `labels`.
double Metric(int port, const std::string& name,
              const std::map<std::string, std::string>& labels = {}) {
  absl::StatusOr<std::string> m = HttpGet(port, "/metrics");
  REQUIRE(m.ok());
  return SumSamples(ParsePromText(*m), name, labels);
}

std::unique_ptr<Client> ConnectAs(const LocalCluster& cluster, const std::string& token) {
  ClientOptions o;
  o.coordinator = cluster.coordinator_address();
  o.credentials.auth_token = token;
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(o);
  INFO(c.status().ToString());
  REQUIRE(c.ok());
  return std::move(*c);
}

// ---- Server reflection, spoken directly (grpc.reflection.v1alpha, a bidi stream) ----

void Await(grpc::CompletionQueue& cq, void* tag) {
  void* got = nullptr;
  bool ok = false;
  REQUIRE(cq.Next(&got, &ok));
  REQUIRE(got == tag);
}

std::string FieldBytes(int field, const std::string& value) {
  std::string out;
  google::protobuf::io::StringOutputStream s(&out);
  google::protobuf::io::CodedOutputStream o(&s);
  o.WriteTag((field << 3) | 2);
  o.WriteVarint32(static_cast<uint32_t>(value.size()));
  o.WriteString(value);
  o.Trim();
  return out;
}

// Every length-delimited field `field` of `bytes` (top level).
std::vector<std::string> Fields(const std::string& bytes, int field) {
  std::vector<std::string> out;
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()),
                                            static_cast<int>(bytes.size()));
  for (uint32_t tag = in.ReadTag(); tag != 0; tag = in.ReadTag()) {
    if ((tag & 7) == 2) {
      uint32_t n = 0;
      REQUIRE(in.ReadVarint32(&n));
      std::string v;
      REQUIRE(in.ReadString(&v, static_cast<int>(n)));
      if (static_cast<int>(tag >> 3) == field) out.push_back(v);
    } else {
      REQUIRE(google::protobuf::internal::WireFormatLite::SkipField(&in, tag));
    }
  }
  return out;
}

std::string Flatten(const grpc::ByteBuffer& b) {
  std::vector<grpc::Slice> slices;
  REQUIRE(b.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices)
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

// The full names of every method of every service `address` lists, except grpc.* ones.
std::vector<std::string> MethodsByReflection(const std::string& address) {
  grpc::GenericStub stub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto call =
      stub.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  int tag = 0;
  call->StartCall(&tag);
  Await(cq, &tag);
  auto ask = [&](int field, const std::string& value) {
    grpc::Slice slice(FieldBytes(field, value));
    grpc::ByteBuffer request(&slice, 1);
    call->Write(request, &tag);
    Await(cq, &tag);
    grpc::ByteBuffer response;
    call->Read(&response, &tag);
    Await(cq, &tag);
    return Flatten(response);
  };
  // ServerReflectionRequest.list_services = 7 -> ServerReflectionResponse.list_services_response
  // = 6 -> ListServiceResponse.service = 1 -> ServiceResponse.name = 1.
  std::vector<std::string> services;
  for (const std::string& list : Fields(ask(7, ""), 6)) {
    for (const std::string& service : Fields(list, 1)) {
      for (const std::string& name : Fields(service, 1)) {
        if (name.rfind("grpc.", 0) != 0) services.push_back(name);
      }
    }
  }
  std::vector<std::string> methods;
  for (const std::string& service : services) {
    // file_containing_symbol = 4 -> file_descriptor_response = 4 -> file_descriptor_proto = 1.
    for (const std::string& response : Fields(ask(4, service), 4)) {
      for (const std::string& file : Fields(response, 1)) {
        google::protobuf::FileDescriptorProto fd;
        REQUIRE(fd.ParseFromString(file));
        for (const auto& s : fd.service()) {
          if (fd.package() + "." + s.name() != service) continue;
          for (const auto& m : s.method()) {
            methods.push_back(absl::StrCat("/", service, "/", m.name()));
          }
        }
      }
    }
  }
  call->WritesDone(&tag);
  Await(cq, &tag);
  grpc::Status status;
  call->Finish(&status, &tag);
  Await(cq, &tag);
  cq.Shutdown();
  void* ignored;
  bool ok;
  while (cq.Next(&ignored, &ok)) {
  }
  return methods;
}

// A unary call of `method` with `body` (raw bytes) and, unless empty, `token`.
grpc::Status Call(const std::string& address, const std::string& method, const std::string& body,
                  const std::string& token) {
  grpc::GenericStub stub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
  grpc::Slice slice(body);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  absl::Notification done;
  grpc::Status status;
  stub.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &response, [&](grpc::Status s) {
    status = std::move(s);
    done.Notify();
  });
  done.WaitForNotification();
  return status;
}

// What the cluster holds, as its admin sees it: the map's epoch, the members, the table and
// its rows.
struct Snapshot {
  uint64_t epoch = 0;
  std::string status;
  std::vector<float> rows;
  bool operator==(const Snapshot&) const = default;
};
Snapshot Take(LocalCluster& cluster, Client& admin_and_worker) {
  Snapshot s;
  absl::StatusOr<uint64_t> e = cluster.Epoch();
  REQUIRE(e.ok());
  s.epoch = *e;
  absl::StatusOr<std::vector<int>> r0 = cluster.ReplicasOf(0);
  REQUIRE(r0.ok());
  for (int i : *r0) s.status += absl::StrCat(i, ",");
  s.rows.resize(3 * 4);
  TESSERA_REQUIRE_OK(
      admin_and_worker.PullSparse("emb", std::vector<uint64_t>{1, 2, 3}, absl::MakeSpan(s.rows)));
  return s;
}

TEST_CASE("every RPC of every service is refused without a token and with a wrong role",
          "[process][security]") {
  const std::string file = TokenFile(AllRoles() + "admin " + kWorker + "\n");
  auto cluster = StartSecure(file);
  auto client = ConnectAs(*cluster, kWorker);  // (worker and admin: creates its table)
  TableConfig emb{.name = "emb", .kind = TableKind::kSparse, .dim = 4};
  emb.optimizer.kind = OptimizerKind::kAdd;
  REQUIRE(client->CreateTable(emb).ok());
  TESSERA_REQUIRE_OK(
      client->PushSparse("emb", std::vector<uint64_t>{1, 2, 3}, std::vector<float>(12, 1.0f)));
  const Snapshot before = Take(*cluster, *client);
  CHECK(before.rows == std::vector<float>(12, 1.0f));

  const std::vector<std::pair<std::string, std::string>> daemons = {
      {"coordinator", cluster->coordinator_address()},
      {"primary", cluster->addresses()[0]},
      {"backup", cluster->addresses()[1]}};
  std::set<std::string> covered;
  for (const auto& [who, address] : daemons) {
    const std::vector<std::string> methods = MethodsByReflection(address);
    REQUIRE(!methods.empty());
    for (const std::string& method : methods) {
      INFO(who << " " << method);
      covered.insert(method);
      const RoleSet allowed = RolesOfMethod(method);
      CHECK(allowed != 0);  // (every method has its roles in the table)
      // A body that would not parse and an empty one (a valid, empty request): refused first.
      for (const std::string& body : {std::string("\xff\xff\xff", 3), std::string()}) {
        const grpc::Status none = Call(address, method, body, "");
        CHECK(none.error_code() == grpc::StatusCode::UNAUTHENTICATED);
        CHECK(Call(address, method, body, "unknown-token-0123456789").error_code() ==
              grpc::StatusCode::UNAUTHENTICATED);
        for (const auto& [role, token] : kTokenOf) {
          if ((role & allowed) != 0 || token == kWorker) continue;  // (kWorker is also admin)
          const grpc::Status denied = Call(address, method, body, token);
          CHECK(denied.error_code() == grpc::StatusCode::PERMISSION_DENIED);
          CHECK(denied.error_message().find(token) == std::string::npos);
        }
      }
    }
  }
  // The three services, all their methods (one daemon serves each).
  CHECK(covered.count("/tessera.v1.ParameterServer/DropTable") == 1);
  CHECK(covered.count("/tessera.v1.Coordinator/Heartbeat") == 1);
  CHECK(covered.count("/tessera.v1.Replication/InstallSnapshot") == 1);
  CHECK(covered.count("/tessera.v1.ParameterServer/RemoveRows") == 1);
  CHECK(covered.size() == 14 + 10 + 2);

  // Real requests with wrong roles change nothing either: a reader's push and drop, a
  // worker-only client's create.
  auto reader = ConnectAs(*cluster, kReader);
  std::vector<float> seen(12);
  TESSERA_REQUIRE_OK(
      reader->PullSparse("emb", std::vector<uint64_t>{1, 2, 3}, absl::MakeSpan(seen)));
  CHECK(seen == before.rows);
  CHECK(reader->PushSparse("emb", std::vector<uint64_t>{1}, std::vector<float>(4, 5.0f)).code() ==
        absl::StatusCode::kPermissionDenied);
  CHECK(reader->DropTable("emb").code() == absl::StatusCode::kPermissionDenied);
  CHECK(Take(*cluster, *client) == before);

  // The refusals are counted.
  CHECK(Metric(cluster->metrics_ports()[0], "tessera_auth_refusals_total",
               {{"code", "PERMISSION_DENIED"}}) > 0);
}

TEST_CASE("a stranger cannot register with the coordinator or replicate to a backup",
          "[process][security]") {
  const std::string file = TokenFile(AllRoles());
  auto cluster = StartSecure(file);
  absl::StatusOr<std::vector<int>> before = cluster->ReplicasOf(0);
  REQUIRE(before.ok());
  absl::StatusOr<uint64_t> epoch = cluster->Epoch();
  REQUIRE(epoch.ok());
  // Heartbeats (how a server registers) and batches from anything but a server token.
  const grpc::Status heartbeat =
      Call(cluster->coordinator_address(), "/tessera.v1.Coordinator/Heartbeat", "", kWorker);
  CHECK(heartbeat.error_code() == grpc::StatusCode::PERMISSION_DENIED);
  CHECK(Call(cluster->coordinator_address(), "/tessera.v1.Coordinator/Heartbeat", "", "")
            .error_code() == grpc::StatusCode::UNAUTHENTICATED);
  for (const char* m :
       {"/tessera.v1.Replication/Replicate", "/tessera.v1.Replication/InstallSnapshot"}) {
    CHECK(Call(cluster->addresses()[1], m, "", kAdmin).error_code() ==
          grpc::StatusCode::PERMISSION_DENIED);
  }
  absl::StatusOr<std::vector<int>> after = cluster->ReplicasOf(0);
  REQUIRE(after.ok());
  CHECK(*after == *before);
  CHECK(*cluster->Epoch() == *epoch);
  // A real tessera-server started with a worker's token file only cannot present a server
  // token: the coordinator refuses its heartbeats and never places it.
  const std::string stranger_file = TokenFile("worker " + kWorker + "\n");
  LocalClusterOptions so;
  so.server_binary = TESSERA_SERVER_BINARY;
  so.coordinator_binary = TESSERA_COORDINATOR_BINARY;
  so.num_servers = 1;
  so.replication = 1;
  so.auth_token_file = stranger_file;
  so.start_timeout = absl::Seconds(20);
  so.replicas_timeout = absl::Seconds(3);
  absl::StatusOr<std::unique_ptr<LocalCluster>> stranger = LocalCluster::Start(so);
  CHECK_FALSE(stranger.ok());  // (its own coordinator refuses it as well: never placed)
}

TEST_CASE("the data plane checks the token of its handshake and the role of every frame",
          "[process][security]") {
  const std::string file = TokenFile(AllRoles() + "admin " + kWorker + "\n");
  auto cluster = StartSecure(file, 1, 1);
  const int metrics = cluster->metrics_ports()[0];
  auto count = [&](const std::string& name) { return Metric(metrics, name); };
  auto worker = ConnectAs(*cluster, kWorker);
  TableConfig emb{.name = "emb", .kind = TableKind::kSparse, .dim = 4};
  REQUIRE(worker->CreateTable(emb).ok());
  // The worker's connections (8 for one server) are accepted: its frames travel on the data
  // plane.
  WaitUntil([&] { return count("tessera_data_plane_connections") >= 8; });
  const double frames = count("tessera_data_plane_frames_total");
  TESSERA_REQUIRE_OK(
      worker->PushSparse("emb", std::vector<uint64_t>{7}, std::vector<float>(4, 1.0f)));
  CHECK(count("tessera_data_plane_frames_total") > frames);
  // A reader's push is refused (on either transport) and changes nothing.
  auto reader = ConnectAs(*cluster, kReader);
  std::vector<float> row(4);
  TESSERA_REQUIRE_OK(reader->PullSparse("emb", std::vector<uint64_t>{7}, absl::MakeSpan(row)));
  const std::vector<float> pushed = row;
  CHECK(reader->PushSparse("emb", std::vector<uint64_t>{7}, std::vector<float>(4, 9.0f)).code() ==
        absl::StatusCode::kPermissionDenied);
  TESSERA_REQUIRE_OK(worker->PullSparse("emb", std::vector<uint64_t>{7}, absl::MakeSpan(row)));
  CHECK(row == pushed);
  // Without a token a client's calls fail UNAUTHENTICATED (it cannot even learn the data
  // port), and a raw connection's handshake without one is refused and counted.
  ClientOptions anonymous;
  anonymous.servers = cluster->addresses();
  absl::StatusOr<std::unique_ptr<Client>> a = Client::Connect(anonymous);
  REQUIRE(a.ok());  // (static shards: nothing is called at connect)
  CHECK((*a)->PullSparse("emb", std::vector<uint64_t>{7}, absl::MakeSpan(row)).code() ==
        absl::StatusCode::kUnauthenticated);
  const double refused = count("tessera_data_plane_refused_connections_total");
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer " + kReader);
  v1::GetDataPlaneResponse dp;
  REQUIRE(v1::ParameterServer::NewStub(
              grpc::CreateChannel(cluster->addresses()[0], grpc::InsecureChannelCredentials()))
              ->GetDataPlane(&ctx, {}, &dp)
              .ok());
  // A reader's own connection: a push frame is refused PERMISSION_DENIED (its bytes skipped),
  // a pull frame on the same connection answered.
  {
    absl::StatusOr<int> fd = ConnectTcp("127.0.0.1", static_cast<int>(dp.port()), 5000);
    REQUIRE(fd.ok());
    auto frame = [](uint32_t id, data_frame::BulkMethod m, const std::string& payload) {
      char h[data_frame::kRequestHeaderBytes];
      data_frame::Put(data_frame::RequestHeader{id, static_cast<uint16_t>(m), 0,
                                                static_cast<uint32_t>(payload.size())},
                      h);
      return std::string(h, sizeof(h)) + payload;
    };
    auto request = [](auto r) {  // key 7 of "emb" (dim 4)
      r.mutable_header()->set_shard_map_epoch(1);
      r.set_table("emb");
      r.set_key_type(v1::KEY_TYPE_UINT64);
      r.set_dtype(v1::DTYPE_FLOAT32);
      r.set_dim(4);
      r.set_num_keys(1);
      const uint64_t key = 7;
      r.set_keys(std::string(reinterpret_cast<const char*>(&key), 8));
      return r;
    };
    v1::PushSparseRequest push = request(v1::PushSparseRequest());
    push.set_values(std::string(16, '\0'));
    push.mutable_id()->set_client_id(5);
    push.mutable_id()->set_sequence(1);
    push.mutable_id()->set_floor(1);
    const v1::PullSparseRequest pull = request(v1::PullSparseRequest());
    std::string stream = data_frame::ClientHello(kReader) +
                         frame(1, data_frame::BulkMethod::kPushSparse, push.SerializeAsString()) +
                         frame(2, data_frame::BulkMethod::kPullSparse, pull.SerializeAsString());
    std::vector<iovec> iov = {{stream.data(), stream.size()}};
    REQUIRE(WriteAll(*fd, iov));
    char answer[data_frame::kHandshakeBytes];
    REQUIRE(ReadFull(*fd, answer, sizeof(answer)));
    for (uint32_t id : {1u, 2u}) {
      char raw[data_frame::kResponseHeaderBytes];
      REQUIRE(ReadFull(*fd, raw, sizeof(raw)));
      const data_frame::ResponseHeader h = data_frame::GetResponse(raw);
      CHECK(h.call_id == id);
      CHECK(h.code == static_cast<uint16_t>(id == 1 ? grpc::StatusCode::PERMISSION_DENIED
                                                    : grpc::StatusCode::OK));
      REQUIRE(Discard(*fd, size_t{h.message_length} + h.payload_length));
    }
    ::close(*fd);
  }
  TESSERA_REQUIRE_OK(worker->PullSparse("emb", std::vector<uint64_t>{7}, absl::MakeSpan(row)));
  CHECK(row == pushed);
  for (const std::string& token : {std::string(), kAdmin, std::string("unknown-0123456789abcd")}) {
    INFO("token '" << token << "'");
    absl::StatusOr<int> fd = ConnectTcp("127.0.0.1", static_cast<int>(dp.port()), 5000);
    REQUIRE(fd.ok());
    std::string hello = data_frame::ClientHello(token);
    std::vector<iovec> iov = {{hello.data(), hello.size()}};
    (void)WriteAll(*fd, iov);
    char answer[data_frame::kHandshakeBytes];
    CHECK_FALSE(ReadFull(*fd, answer, sizeof(answer)));  // closed, not answered
    ::close(*fd);
  }
  WaitUntil([&] { return count("tessera_data_plane_refused_connections_total") >= refused + 3; });
}

TEST_CASE("tokens rotate by SIGHUP while a client pushes, without a failed push",
          "[process][security]") {
  const std::string old_worker = "old-worker-0123456789";
  const std::string new_worker = "new-worker-0123456789";
  const std::string new_server = "new-server-0123456789";
  auto write = [&](const std::string& path, const std::string& text) {
    const std::string tmp = path + ".tmp";
    std::ofstream(tmp) << text;
    REQUIRE(std::rename(tmp.c_str(), path.c_str()) == 0);
  };
  const std::string base = absl::StrCat("admin ", kAdmin, "\n");
  const std::string file = TokenFile(base + "worker " + old_worker + "\nadmin " + old_worker +
                                     "\nserver " + kServer + "\n");
  auto cluster = StartSecure(file);
  auto hup_all = [&] {
    REQUIRE(kill(cluster->coordinator_pid(), SIGHUP) == 0);
    for (size_t i = 0; i < cluster->addresses().size(); ++i) {
      REQUIRE(kill(cluster->pid(static_cast<int>(i)), SIGHUP) == 0);
    }
    // (the reloads are counted: wait until every daemon did it)
  };
  auto wait_reloads = [&](double n, const char* outcome = "succeeded") {
    std::vector<int> ports = cluster->metrics_ports();
    ports.push_back(cluster->coordinator_metrics_port());
    for (int p : ports) {
      WaitUntil([&] {
        return Metric(p, "tessera_auth_reloads_total", {{"outcome", outcome}}) >= n;
      });
    }
  };
  auto old_client = ConnectAs(*cluster, old_worker);
  TableConfig emb{.name = "emb", .kind = TableKind::kSparse, .dim = 4};
  emb.optimizer.kind = OptimizerKind::kAdd;
  REQUIRE(old_client->CreateTable(emb).ok());

  // A job pushes all along, first with the old token, then (after the switch) the new one.
  std::atomic<bool> stop{false};
  std::atomic<int> pushes{0}, failures{0};
  std::atomic<Client*> current{old_client.get()};
  std::string first_failure;
  std::thread job([&] {
    for (uint64_t k = 0; !stop && k < 100000; ++k) {
      absl::Status s = current.load()->PushSparse("emb", std::vector<uint64_t>{k % 64},
                                                  std::vector<float>(4, 1.0f));
      if (s.ok()) {
        ++pushes;
      } else if (failures++ == 0) {
        first_failure = s.ToString();
      }
    }
  });
  auto wait_pushes = [&](int more) {
    const int target = pushes + more;
    WaitUntil([&] { return pushes >= target; }, absl::Seconds(30));
  };
  wait_pushes(50);
  // 1. The new tokens are added (after the old ones: daemons still present the old server one).
  write(file, base + "worker " + old_worker + "\nadmin " + old_worker + "\nserver " + kServer +
                  "\nworker " + new_worker + "\nadmin " + new_worker + "\nserver " + new_server +
                  "\n");
  hup_all();
  wait_reloads(1);
  wait_pushes(50);
  // 2. The job moves to its new token.
  auto new_client = ConnectAs(*cluster, new_worker);
  current = new_client.get();
  wait_pushes(50);
  // 3. The new server token goes first (every daemon accepts both), 4. the old ones go.
  write(file, base + "server " + new_server + "\nworker " + new_worker + "\nadmin " + new_worker +
                  "\nworker " + old_worker + "\nserver " + kServer + "\n");
  hup_all();
  wait_reloads(2);
  wait_pushes(50);
  write(file,
        base + "server " + new_server + "\nworker " + new_worker + "\nadmin " + new_worker + "\n");
  hup_all();
  wait_reloads(3);
  wait_pushes(50);
  stop = true;
  job.join();
  INFO(first_failure);
  CHECK(failures == 0);
  // The old token is refused now; the replicas stayed (servers kept talking to each other).
  CHECK(
      old_client->PushSparse("emb", std::vector<uint64_t>{1}, std::vector<float>(4, 1.0f)).code() ==
      absl::StatusCode::kUnauthenticated);
  TESSERA_REQUIRE_OK(cluster->WaitForReplicas(absl::Seconds(20)));
  // A file that does not parse keeps the tokens in use.
  write(file, "bogus\n");
  hup_all();
  wait_reloads(1, "failed");
  TESSERA_REQUIRE_OK(
      new_client->PushSparse("emb", std::vector<uint64_t>{1}, std::vector<float>(4, 1.0f)));
}

std::string TempDir() {
  char dir[] = "/tmp/tessera_security_test_XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  return dir;
}

LocalPki Pki(const std::string& dir, const std::string& name = "tessera") {
  absl::StatusOr<LocalPki> pki = MakeLocalPki(dir, name);
  INFO(pki.status().ToString());
  REQUIRE(pki.ok());
  return *pki;
}

// A client of `cluster` presenting `credentials` (the cluster's address filled in).
absl::StatusOr<std::unique_ptr<Client>> TryConnect(const LocalCluster& cluster,
                                                   Credentials credentials) {
  ClientOptions o;
  o.servers = {cluster.addresses()[0]};  // (static: nothing is called at connect)
  o.credentials = std::move(credentials);
  o.rpc_timeout_ms = 2000;
  o.retry_timeout_ms = 2000;
  return Client::Connect(o);
}

// The certificate (PEM) the daemon at `address` presents in a new TLS connection.
std::string PresentedCertificate(const std::string& address, const Credentials& c) {
  auto stub = v1::ParameterServer::NewStub(MakeChannel(address, c));
  grpc::ClientContext ctx;
  v1::ListTablesResponse resp;
  const grpc::Status s = stub->ListTables(&ctx, {}, &resp);
  INFO(s.error_message());
  REQUIRE(s.ok());
  const std::vector<grpc::string_ref> pem = ctx.auth_context()->FindPropertyValues("x509_pem_cert");
  REQUIRE(pem.size() == 1);
  return std::string(pem[0].data(), pem[0].size());
}

TEST_CASE("under mutual TLS only clients with a certificate from the CA get in",
          "[process][security][tls]") {
  const LocalPki pki = Pki(TempDir());
  const LocalPki other = Pki(TempDir(), "other");
  const std::string file = TokenFile(AllRoles() + "admin " + kWorker + "\n");
  auto cluster = StartSecure(file, 2, 2, &pki);  // (R=2: servers replicate over TLS too)
  const Credentials good = cluster->ClientCredentials(kRoleAdmin | kRoleWorker);
  REQUIRE(!good.tls_ca_file.empty());
  absl::StatusOr<std::unique_ptr<Client>> client = TryConnect(*cluster, good);
  REQUIRE(client.ok());
  TableConfig emb{.name = "emb", .kind = TableKind::kSparse, .dim = 4};
  emb.optimizer.kind = OptimizerKind::kAdd;
  REQUIRE((*client)->CreateTable(emb).ok());
  TESSERA_REQUIRE_OK(
      (*client)->PushSparse("emb", std::vector<uint64_t>{1}, std::vector<float>(4, 1.0f)));
  TESSERA_REQUIRE_OK(cluster->WaitForReplicas(absl::Seconds(20)));
  // The bulk calls travel on the data plane, over TLS too (8 connections to each primary; the
  // push goes to its shard's primary, whichever server the coordinator made that).
  const auto on_every_server = [&](const std::string& name) {
    double sum = 0;
    for (int port : cluster->metrics_ports()) sum += Metric(port, name);
    return sum;
  };
  // (Until the connections to that primary are up a push goes over gRPC: pushes are repeated
  // until one is seen on a data plane, within WaitUntil's bound.)
  const double frames = on_every_server("tessera_data_plane_frames_total");
  WaitUntil([&] {
    TESSERA_REQUIRE_OK(
        (*client)->PushSparse("emb", std::vector<uint64_t>{2}, std::vector<float>(4, 1.0f)));
    return on_every_server("tessera_data_plane_frames_total") > frames;
  });
  CHECK(on_every_server("tessera_data_plane_connections") >= 8);

  struct Case {
    const char* what;
    Credentials credentials;
  };
  Credentials plaintext;
  plaintext.auth_token = kWorker;
  Credentials no_certificate = good;
  no_certificate.tls_cert_file.clear();
  no_certificate.tls_key_file.clear();
  Credentials other_certificate = good;
  other_certificate.tls_cert_file = other.cert_file;
  other_certificate.tls_key_file = other.key_file;
  Credentials other_ca = good;  // (cannot verify the daemons' certificate)
  other_ca.tls_ca_file = other.ca_file;
  other_ca.tls_cert_file = other.cert_file;
  other_ca.tls_key_file = other.key_file;
  for (const Case& c :
       {Case{"a plaintext client", plaintext}, Case{"no client certificate", no_certificate},
        Case{"a client certificate from another CA", other_certificate},
        Case{"a client trusting another CA", other_ca}}) {
    INFO(c.what);
    absl::StatusOr<std::unique_ptr<Client>> stranger = TryConnect(*cluster, c.credentials);
    REQUIRE(stranger.ok());
    std::vector<float> row(4);
    const absl::Status s =
        (*stranger)->PullSparse("emb", std::vector<uint64_t>{1}, absl::MakeSpan(row));
    CHECK(s.code() == absl::StatusCode::kUnavailable);
    CHECK((*stranger)
              ->PushSparse("emb", std::vector<uint64_t>{1}, std::vector<float>(4, 5.0f))
              .code() == absl::StatusCode::kUnavailable);
  }
  std::vector<float> row(4);
  TESSERA_REQUIRE_OK((*client)->PullSparse("emb", std::vector<uint64_t>{1}, absl::MakeSpan(row)));
  CHECK(row == std::vector<float>(4, 1.0f));
  // Unusable files are refused at once, naming the file.
  Credentials missing = good;
  missing.tls_ca_file = "/nonexistent/ca.pem";
  absl::StatusOr<std::unique_ptr<Client>> refused = TryConnect(*cluster, missing);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.status().message().find("/nonexistent/ca.pem") != std::string::npos);
}

TEST_CASE("certificates rotate by SIGHUP while a client pushes, without a failed push",
          "[process][security][tls]") {
  const std::string dir = TempDir();
  const LocalPki pki = Pki(dir);
  const std::string file = TokenFile(AllRoles() + "admin " + kWorker + "\n");
  auto cluster = StartSecure(file, 2, 2, &pki);
  const Credentials creds = cluster->ClientCredentials(kRoleAdmin | kRoleWorker);
  absl::StatusOr<std::unique_ptr<Client>> client = TryConnect(*cluster, creds);
  REQUIRE(client.ok());
  TableConfig emb{.name = "emb", .kind = TableKind::kSparse, .dim = 4};
  emb.optimizer.kind = OptimizerKind::kAdd;
  REQUIRE((*client)->CreateTable(emb).ok());
  const std::string before = PresentedCertificate(cluster->addresses()[0], creds);

  std::atomic<bool> stop{false};
  std::atomic<int> pushes{0}, failures{0};
  std::thread job([&] {
    for (uint64_t k = 0; !stop && k < 100000; ++k) {
      if ((*client)
              ->PushSparse("emb", std::vector<uint64_t>{k % 64}, std::vector<float>(4, 1.0f))
              .ok()) {
        ++pushes;
      } else {
        ++failures;
      }
    }
  });
  WaitUntil([&] { return pushes >= 50; });
  // A new certificate from the same CA, in place; every daemon re-reads it on SIGHUP.
  REQUIRE(MakeLocalPki(dir).ok());
  REQUIRE(kill(cluster->coordinator_pid(), SIGHUP) == 0);
  for (size_t i = 0; i < cluster->addresses().size(); ++i) {
    REQUIRE(kill(cluster->pid(static_cast<int>(i)), SIGHUP) == 0);
  }
  // New connections get it within about a second (gRPC reads the daemon's copies every second).
  WaitUntil([&] { return PresentedCertificate(cluster->addresses()[0], creds) != before; });
  const int at_switch = pushes;
  WaitUntil([&] { return pushes >= at_switch + 50; });
  stop = true;
  job.join();
  CHECK(failures == 0);
  TESSERA_REQUIRE_OK(cluster->WaitForReplicas(absl::Seconds(20)));
}

TEST_CASE("over a call limit a call is refused with a retry hint and clients wait and retry",
          "[process][security]") {
  const std::string file = TokenFile(AllRoles() + "admin " + kWorker + "\n");
  LocalClusterOptions o;
  o.server_binary = TESSERA_SERVER_BINARY;
  o.num_servers = 1;
  o.auth_token_file = file;
  o.extra_args = {"--max_calls_per_second_per_token=20"};
  absl::StatusOr<std::unique_ptr<LocalCluster>> cluster = LocalCluster::Start(o);
  REQUIRE(cluster.ok());
  const std::string address = (*cluster)->addresses()[0];
  // Raw calls: a burst of a second's worth passes, the next is refused with the hint.
  grpc::Status refused;
  std::string hint;
  for (int i = 0; i < 40 && refused.ok(); ++i) {
    auto stub = v1::ParameterServer::NewStub(MakeChannel(address, {.auth_token = kReader}));
    grpc::ClientContext ctx;
    v1::ListTablesRequest req;
    req.mutable_header()->set_shard_map_epoch(1);
    v1::ListTablesResponse resp;
    refused = stub->ListTables(&ctx, req, &resp);
    const auto& md = ctx.GetServerTrailingMetadata();
    auto it = md.find("tessera-retry-after-ms");
    if (it != md.end()) hint.assign(it->second.data(), it->second.size());
  }
  CHECK(refused.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED);
  CHECK(refused.error_message().find("20 calls per second per token") != std::string::npos);
  CHECK(refused.error_message().find(kReader) == std::string::npos);
  CHECK(std::atoi(hint.c_str()) >= 1);
  // Another token has its own budget.
  {
    auto stub = v1::ParameterServer::NewStub(MakeChannel(address, {.auth_token = kAdmin}));
    grpc::ClientContext ctx;
    v1::ListTablesRequest req;
    req.mutable_header()->set_shard_map_epoch(1);
    v1::ListTablesResponse resp;
    CHECK(stub->ListTables(&ctx, req, &resp).ok());
  }
  // A client over the limit waits as told and retries: every push lands, none fails.
  ClientOptions co;
  co.servers = {address};
  co.credentials.auth_token = kWorker;
  co.retry_timeout_ms = 60000;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(co);
  REQUIRE(client.ok());
  TableConfig emb{.name = "emb", .kind = TableKind::kSparse, .dim = 4};
  emb.optimizer.kind = OptimizerKind::kAdd;
  REQUIRE((*client)->CreateTable(emb).ok());
  for (int i = 0; i < 60; ++i) {
    TESSERA_REQUIRE_OK(
        (*client)->PushSparse("emb", std::vector<uint64_t>{7}, std::vector<float>(4, 1.0f)));
  }
  std::vector<float> row(4);
  TESSERA_REQUIRE_OK((*client)->PullSparse("emb", std::vector<uint64_t>{7}, absl::MakeSpan(row)));
  CHECK(row == std::vector<float>(4, 60.0f));  // (each exactly once)
  CHECK(Metric((*cluster)->metrics_ports()[0], "tessera_call_limit_refusals_total",
               {{"limit", "token_rate"}}) > 0);
}

TEST_CASE("/metrics over HTTPS with basic authentication answers only who knows the password",
          "[process][security][tls]") {
  const std::string dir = TempDir();
  const LocalPki pki = Pki(dir);
  const std::string users = dir + "/metrics-users";
  std::ofstream(users) << "# scrapers\nprometheus s3cret-pw\n";
  LocalClusterOptions o;
  o.server_binary = TESSERA_SERVER_BINARY;
  o.num_servers = 1;
  o.tls_cert_file = pki.cert_file;
  o.tls_key_file = pki.key_file;
  o.tls_ca_file = pki.ca_file;
  o.extra_args = {"--metrics_tls", "--metrics_basic_auth_file=" + users};
  absl::StatusOr<std::unique_ptr<LocalCluster>> cluster = LocalCluster::Start(o);
  INFO(cluster.status().ToString());
  REQUIRE(cluster.ok());
  const int port = (*cluster)->metrics_ports()[0];
  auto get = [&](const HttpGetSecurity& s) {
    return HttpGet("127.0.0.1", port, "/metrics", absl::Seconds(5), s);
  };
  CHECK_FALSE(get({}).ok());                                 // plain HTTP
  CHECK_FALSE(get({pki.ca_file, ""}).ok());                  // no password
  CHECK_FALSE(get({pki.ca_file, "prometheus:wrong"}).ok());  // a wrong one
  const LocalPki other = Pki(TempDir(), "other");
  CHECK_FALSE(get({other.ca_file, "prometheus:s3cret-pw"}).ok());  // an unverified server
  absl::StatusOr<std::string> text = get({pki.ca_file, "prometheus:s3cret-pw"});
  INFO(text.status().ToString());
  REQUIRE(text.ok());
  CHECK(text->find("tessera_server_requests_total") != std::string::npos);
  CHECK(ReadBasicAuthUser(users).value_or("") == "prometheus:s3cret-pw");

  // A real Prometheus scrapes it with the scrape configuration docs/security.md shows.
  const std::string pdir = TempDir();
  absl::StatusOr<std::unique_ptr<LocalPrometheus>> prometheus =
      LocalPrometheus::Start(pdir, {{"secured", {absl::StrCat("127.0.0.1:", port)}}},
                             absl::Milliseconds(200), {}, {pki.ca_file, "prometheus", "s3cret-pw"});
  if (!prometheus.ok() && prometheus.status().code() == absl::StatusCode::kFailedPrecondition) {
    WARN(prometheus.status().ToString());  // (no Prometheus installed: the HTTP checks stand)
    return;
  }
  REQUIRE(prometheus.ok());
  CHECK((*prometheus)->AwaitValue("up{job=\"secured\"}", 1, absl::Seconds(20)) == 1);
  CHECK((*prometheus)->Query("process_start_time_seconds{job=\"secured\"}") > 0);
}

}  // namespace
}  // namespace tessera
