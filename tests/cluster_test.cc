// Multi-process correctness: real tessera-server processes on random loopback ports, driven
// through the client library and compared with a single in-process reference table.
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "common/http_get.h"
#include "common/prom_text.h"
#include "common/shard_map.h"
#include "server/dense_table.h"
#include "server/sparse_table.h"
#include "tests/test_cluster.h"

namespace tessera {
namespace {

using testing::Connect;
using testing::StartCluster;

// Creates a sparse and a dense table whose optimizer adds the pushed values.
void CreateAddTables(Client& client, TableConfig sparse, TableConfig dense) {
  for (TableConfig* t : {&sparse, &dense}) {
    t->optimizer.kind = OptimizerKind::kAdd;
    REQUIRE(client.CreateTable(*t).ok());
  }
}

TableConfig Resolve(const TableConfig& c) {
  absl::StatusOr<TableConfig> r = ResolveTableConfig(c);
  REQUIRE(r.ok());
  return *r;
}

TEST_CASE("three servers behave exactly like one reference table", "[cluster]") {
  auto cluster = StartCluster(3);
  ClientOptions options;
  options.chunk_bytes = 4096;  // many chunks per call, to exercise splitting and reassembly
  auto client = Connect(*cluster, options);

  TableConfig emb{.name = "emb", .kind = TableKind::kSparse, .dim = 5};
  emb.optimizer = {.kind = OptimizerKind::kAdagrad, .learning_rate = 0.05f};
  emb.initializer = {.kind = InitializerKind::kNormal, .seed = 11};
  TableConfig dense{
      .name = "dense", .kind = TableKind::kDense, .dense_size = 100003, .dense_block_elems = 4099};
  dense.optimizer = {.kind = OptimizerKind::kMomentum, .learning_rate = 0.1f};
  dense.initializer = {.kind = InitializerKind::kUniform, .seed = 12};
  REQUIRE(client->CreateTable(emb).ok());
  REQUIRE(client->CreateTable(dense).ok());

  const std::vector<bool> all(kDefaultNumVshards, true);
  SparseTable ref_emb(Resolve(emb), all);
  DenseTable ref_dense(Resolve(dense), all);

  std::mt19937_64 rng(5);
  for (int round = 0; round < 6; ++round) {
    // Sparse: distinct keys for the push, a pull with repeats.
    std::vector<uint64_t> keys;
    for (int i = 0; i < 3000; ++i)
      keys.push_back(rng() % 20000 + (static_cast<uint64_t>(round) << 40));
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
    std::shuffle(keys.begin(), keys.end(), rng);
    std::vector<float> grads(keys.size() * 5);
    for (float& g : grads) g = std::uniform_real_distribution<float>(-1, 1)(rng);
    TESSERA_REQUIRE_OK(client->PushSparse("emb", keys, grads));
    VshardGrouping groups;
    GroupByVshard(keys, kDefaultNumVshards, &groups);
    ref_emb.Push(keys, groups, grads.data(), 1);

    std::vector<uint64_t> pull_keys(keys.begin(), keys.begin() + 1000);
    pull_keys.insert(pull_keys.end(), keys.begin(), keys.begin() + 10);  // repeats
    pull_keys.push_back(999999999);                                      // never touched
    std::vector<float> got(pull_keys.size() * 5), want(pull_keys.size() * 5);
    TESSERA_REQUIRE_OK(client->PullSparse("emb", pull_keys, absl::MakeSpan(got)));
    GroupByVshard(pull_keys, kDefaultNumVshards, &groups);
    ref_emb.Pull(pull_keys, groups, want.data(), 1);
    REQUIRE(got == want);

    // Dense: a random sub-range (odd offsets) and the whole tensor.
    const uint64_t off = rng() % 50000, len = 1 + rng() % 50000;
    std::vector<float> dg(len);
    for (float& g : dg) g = std::uniform_real_distribution<float>(-1, 1)(rng);
    TESSERA_REQUIRE_OK(client->PushDense("dense", off, dg));
    ref_dense.Push(off, len, dg.data(), 1);
    std::vector<float> dgot(100003), dwant(100003);
    TESSERA_REQUIRE_OK(client->PullDense("dense", 0, absl::MakeSpan(dgot)));
    ref_dense.Pull(0, 100003, dwant.data());
    REQUIRE(dgot == dwant);
  }

  // Rows are spread over the three servers and add up to the reference.
  absl::StatusOr<TableStatus> status = client->DescribeTable("emb");
  REQUIRE(status.ok());
  CHECK(status->rows == ref_emb.num_rows());
  CHECK(*status->config.optimizer.epsilon == 1e-10f);
  absl::StatusOr<std::vector<TableStatus>> tables = client->ListTables();
  REQUIRE(tables.ok());
  REQUIRE(tables->size() == 2);
  CHECK((*tables)[1].rows == ref_emb.num_rows());
  CHECK((*tables)[0].rows == 100003);

  TESSERA_REQUIRE_OK(client->DropTable("emb"));
  std::vector<float> out(5);
  const uint64_t k = 1;
  absl::Status s = client->PullSparse("emb", absl::MakeConstSpan(&k, 1), absl::MakeSpan(out));
  CHECK(s.code() == absl::StatusCode::kNotFound);
  CHECK(cluster->Stop().ok());
}

TEST_CASE("four clients pushing concurrently with add sum exactly", "[cluster]") {
  auto cluster = StartCluster(2);
  auto admin = Connect(*cluster);
  CreateAddTables(*admin, {.name = "counts", .kind = TableKind::kSparse, .dim = 4},
                  {.name = "total",
                   .kind = TableKind::kDense,
                   .dense_size = 300001,
                   .dense_block_elems = 10007});

  constexpr int kClients = 4, kRounds = 25, kKeys = 2000;
  std::vector<uint64_t> keys(kKeys);
  for (int i = 0; i < kKeys; ++i) keys[i] = static_cast<uint64_t>(i) * 1000003;
  std::vector<std::thread> threads;
  std::vector<absl::Status> results(kClients);
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      ClientOptions o;
      o.chunk_bytes = 8192;
      auto client = Connect(*cluster, o);
      // Client c adds (c + 1) to every element, kRounds times; several pushes in flight.
      std::vector<float> grads(kKeys * 4, static_cast<float>(c + 1));
      std::vector<float> dgrads(300001, static_cast<float>(c + 1));
      for (int r = 0; r < kRounds && results[c].ok(); ++r) {
        absl::Notification a, b;
        absl::Status sa, sb;
        client->PushSparseAsync("counts", keys, grads, [&](absl::Status s) {
          sa = s;
          a.Notify();
        });
        client->PushDenseAsync("total", 0, dgrads, [&](absl::Status s) {
          sb = s;
          b.Notify();
        });
        a.WaitForNotification();
        b.WaitForNotification();
        results[c] = sa.ok() ? sb : sa;
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const absl::Status& s : results) TESSERA_REQUIRE_OK(s);

  const float want = kRounds * (1 + 2 + 3 + 4);  // 250
  std::vector<float> got(kKeys * 4);
  TESSERA_REQUIRE_OK(admin->PullSparse("counts", keys, absl::MakeSpan(got)));
  for (float v : got) REQUIRE(v == want);
  std::vector<float> dgot(300001);
  TESSERA_REQUIRE_OK(admin->PullDense("total", 0, absl::MakeSpan(dgot)));
  for (float v : dgot) REQUIRE(v == want);
  CHECK(cluster->Stop().ok());
}

TEST_CASE("a push retried after a lost reply is applied exactly once", "[cluster]") {
  // Every 3rd applied push is answered UNAVAILABLE as if the reply were lost; the client
  // retries with the same sequence number and the server acknowledges without re-applying.
  auto cluster = StartCluster(2, {"--testing_fail_push_after_apply_every=3"});
  ClientOptions o;
  o.chunk_bytes = 2048;
  auto client = Connect(*cluster, o);
  CreateAddTables(
      *client, {.name = "s", .kind = TableKind::kSparse, .dim = 2},
      {.name = "d", .kind = TableKind::kDense, .dense_size = 5000, .dense_block_elems = 700});

  std::vector<uint64_t> keys(1500);
  for (size_t i = 0; i < keys.size(); ++i) keys[i] = i * 7 + 1;
  std::vector<float> ones(keys.size() * 2, 1.0f), dones(5000, 1.0f);
  constexpr int kRounds = 10;
  for (int r = 0; r < kRounds; ++r) {
    TESSERA_REQUIRE_OK(client->PushSparse("s", keys, ones));
    TESSERA_REQUIRE_OK(client->PushDense("d", 0, dones));
  }
  CHECK(client->retries() > 0);
  CHECK(client->duplicate_acks() == client->retries());

  std::vector<float> got(keys.size() * 2), dgot(5000);
  TESSERA_REQUIRE_OK(client->PullSparse("s", keys, absl::MakeSpan(got)));
  TESSERA_REQUIRE_OK(client->PullDense("d", 0, absl::MakeSpan(dgot)));
  for (float v : got) REQUIRE(v == kRounds);
  for (float v : dgot) REQUIRE(v == kRounds);

  // The servers counted the duplicates they acknowledged.
  double dups = 0;
  for (int port : cluster->metrics_ports()) {
    absl::StatusOr<std::string> metrics = HttpGet(port, "/metrics");
    REQUIRE(metrics.ok());
    dups += SumSamples(ParsePromText(*metrics), "tessera_server_duplicate_pushes_total");
  }
  CHECK(dups == static_cast<double>(client->duplicate_acks()));
  CHECK(cluster->Stop().ok());
}

TEST_CASE("UNAVAILABLE is retried until the server comes up", "[cluster]") {
  // Reserve a port, start the client against it, and start the server only afterwards.
  auto probe = StartCluster(1);
  const std::string address = probe->addresses()[0];
  const std::string port = address.substr(address.find(':') + 1);
  REQUIRE(probe->Stop().ok());

  ClientOptions o;
  o.servers = {address};
  o.max_attempts = 100;
  o.max_backoff_ms = 100;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(o);
  REQUIRE(client.ok());
  const uint64_t key = 42;
  float value = 0;
  absl::Notification done;
  absl::Status result;
  (*client)->PullSparseAsync("t", absl::MakeConstSpan(&key, 1), absl::MakeSpan(&value, 1),
                             [&](absl::Status s) {
                               result = s;
                               done.Notify();
                             });
  LocalClusterOptions lo;
  lo.server_binary = TESSERA_SERVER_BINARY;
  lo.num_servers = 1;
  lo.extra_args = {"--port=" + port};  // the later flag wins
  absl::StatusOr<std::unique_ptr<LocalCluster>> late = LocalCluster::Start(lo);
  REQUIRE(late.ok());
  done.WaitForNotification();
  // The server came up without the table: the retried call reached it and got NOT_FOUND.
  CHECK(result.code() == absl::StatusCode::kNotFound);
  CHECK((*client)->retries() > 0);
}

}  // namespace
}  // namespace tessera

namespace tessera {
namespace {

TEST_CASE("handles and owned buffers: calls compose, own what they are given, refuse bad ranges",
          "[cluster]") {
  auto cluster = StartCluster(2);
  ClientOptions options;
  options.chunk_bytes = 4096;  // several RPCs per call
  auto client = Connect(*cluster, options);
  TableConfig emb{.name = "emb", .kind = TableKind::kSparse, .dim = 3};
  emb.optimizer.kind = OptimizerKind::kAssign;
  TableConfig w{
      .name = "w", .kind = TableKind::kDense, .dense_size = 5000, .dense_block_elems = 512};
  w.optimizer = {.kind = OptimizerKind::kSgd, .learning_rate = 1.0f};
  REQUIRE(client->CreateTable(emb).ok());
  REQUIRE(client->CreateTable(w).ok());

  // Owned pushes: the vectors are moved in and gone from the caller before the calls finish.
  std::vector<uint64_t> keys(2000);
  std::vector<float> rows(keys.size() * 3);
  for (size_t i = 0; i < keys.size(); ++i) {
    keys[i] = i * 7919 + 1;
    for (int d = 0; d < 3; ++d) rows[i * 3 + d] = static_cast<float>(i) + d * 0.25f;
  }
  const std::vector<uint64_t> keys_copy = keys;
  const std::vector<float> rows_copy = rows;
  Call sparse = client->PushSparseAsync("emb", std::move(keys), std::move(rows));
  Call dense = client->PushDenseAsync("w", 100, std::vector<float>(1000, 2.0f));
  TESSERA_REQUIRE_OK(Call::All({sparse, dense}).Wait());

  // Owned pulls: the client allocates the rows and hands them over.
  Result<std::vector<float>> pulled = client->PullSparseAsync("emb", keys_copy);
  Result<std::vector<float>> tensor = client->PullDenseAsync("w", 0, 5000);
  absl::StatusOr<std::vector<float>> got_rows = pulled.Take();
  absl::StatusOr<std::vector<float>> got_w = tensor.Take();
  TESSERA_REQUIRE_OK(got_rows.status());
  TESSERA_REQUIRE_OK(got_w.status());
  CHECK(*got_rows == rows_copy);
  REQUIRE(got_w->size() == 5000);
  for (size_t i = 0; i < 5000; ++i) {
    INFO("element " << i);
    REQUIRE((*got_w)[i] == (i >= 100 && i < 1100 ? -2.0f : 0.0f));  // SGD: 0 - 1.0 x 2
  }

  // Borrowing handles, the same rows.
  std::vector<float> out(keys_copy.size() * 3);
  TESSERA_REQUIRE_OK(client->PullSparseAsync("emb", keys_copy, absl::MakeSpan(out)).Wait());
  CHECK(out == rows_copy);

  // Bad calls fail through the handle with a precise status, and change nothing.
  Result<std::vector<float>> outside = client->PullDenseAsync("w", 4990, 11);
  CHECK(outside.done());
  CHECK(outside.Take().status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(client->PullDenseAsync("w", 0, std::numeric_limits<size_t>::max()).Take().status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(client->PullDenseAsync("emb", 0, 4).Take().status().code() ==
        absl::StatusCode::kFailedPrecondition);
  CHECK(client->PullSparseAsync("w", {1, 2}).Take().status().code() ==
        absl::StatusCode::kFailedPrecondition);
  CHECK(client->PullSparseAsync("nope", {1}).Take().status().code() == absl::StatusCode::kNotFound);
  Call repeated =
      client->PushSparseAsync("emb", std::vector<uint64_t>{5, 5}, std::vector<float>(6, 9.0f));
  CHECK(repeated.Wait().code() == absl::StatusCode::kInvalidArgument);
  std::vector<float> w_after(5000);
  TESSERA_REQUIRE_OK(client->PullDense("w", 0, absl::MakeSpan(w_after)));
  CHECK(w_after == *got_w);
  CHECK(cluster->Stop().ok());
}

}  // namespace
}  // namespace tessera
