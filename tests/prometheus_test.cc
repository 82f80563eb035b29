// Metrics as Prometheus sees them: every daemon's /metrics passes `promtool check metrics`, and a
// real Prometheus (Debian's, on loopback) scrapes a local cluster: every target is up, and the
// series hold what the test did (keys pushed, rows held, process metrics).
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/http_get.h"
#include "testing/local_prometheus.h"
#include "tests/test_cluster.h"
#include "worker/data/idx.h"

namespace tessera {
namespace {

int FreePort() {
  absl::StatusOr<int> port = FreeLoopbackPort();
  REQUIRE(port.ok());
  return *port;
}

// `promtool check metrics` on one endpoint's text: its complaints (empty when clean).
std::string PromtoolComplaints(int port) {
  absl::StatusOr<std::string> text = HttpGet(port, "/metrics");
  if (!text.ok()) return text.status().ToString();
  char path[] = "/tmp/tessera-metrics-XXXXXX";
  const int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  REQUIRE(write(fd, text->data(), text->size()) == static_cast<ssize_t>(text->size()));
  close(fd);
  auto [code, out] = testing::RunCommand(absl::StrCat("promtool check metrics < ", path, " 2>&1"));
  std::remove(path);
  return code == 0 && out.empty() ? "" : absl::StrCat("exit ", code, ": ", out);
}

TEST_CASE("a real Prometheus scrapes every daemon and sees what the test pushed",
          "[metrics][prometheus]") {
  if (!std::filesystem::exists("/usr/bin/prometheus")) {
    FAIL("Debian's prometheus is not installed (tools/setup.sh installs it)");
  }
  auto cluster = testing::StartCoordinated(2, 1, 2);
  auto client = testing::ConnectCoordinated(*cluster);
  TableConfig t{.name = "prom", .kind = TableKind::kSparse, .dim = 4};
  t.optimizer = {.kind = OptimizerKind::kAdagrad, .learning_rate = 0.1f};
  TESSERA_REQUIRE_OK(client->CreateTable(t).status());
  // 40 pushes of 500 distinct keys from a pool of 5,000.
  std::mt19937_64 rng(5);
  std::set<uint64_t> distinct;
  uint64_t pushed = 0;
  for (int p = 0; p < 40; ++p) {
    std::set<uint64_t> batch;
    while (batch.size() < 500) batch.insert(rng() % 5000);
    std::vector<uint64_t> keys(batch.begin(), batch.end());
    std::vector<float> grads(keys.size() * 4, 0.5f);
    TESSERA_REQUIRE_OK(client->PushSparse("prom", keys, grads));
    pushed += keys.size();
    distinct.insert(keys.begin(), keys.end());
  }

  // A worker process training (long enough to be scraped) with its /metrics on a known port.
  char worker_tmpl[] = "/tmp/tessera-prom-worker-XXXXXX";
  const std::string worker_dir = mkdtemp(worker_tmpl);
  // (A dense model: its pushes leave the sparse-key counts below to what this test pushed.)
  const std::string d = kFashionMnistDir;
  std::ofstream(worker_dir + "/job.textproto")
      << absl::StrCat("name: \"prom-mlp\"\nmlp { hidden: 16 }\nidx {\n  train_images: \"", d,
                      "/train-images-idx3-ubyte.gz\"\n  train_labels: \"", d,
                      "/train-labels-idx1-ubyte.gz\"\n  max_train_examples: 2000\n}\n",
                      "mode: CONSISTENCY_MODE_ASYNC\nepochs: 100000\nbatch_size: 64\n");
  const int worker_port = FreePort();
  const int health_port = FreePort();
  const int worker_log =
      open((worker_dir + "/worker.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  REQUIRE(worker_log >= 0);
  const pid_t worker = SpawnChild(
      {TESSERA_WORKER_BINARY, "--config=" + worker_dir + "/job.textproto",
       "--coordinator=" + cluster->coordinator_address(),
       absl::StrCat("--metrics_port=", worker_port), absl::StrCat("--health_port=", health_port)},
      worker_log);
  close(worker_log);
  REQUIRE(worker > 0);
  struct KillWorker {
    pid_t pid;
    ~KillWorker() {
      kill(pid, SIGKILL);
      WaitChild(pid, absl::Seconds(10));
    }
  } kill_worker{worker};
  {  // (bounded) until it trains: its steps counter moves
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    absl::StatusOr<std::string> m;
    while (absl::Now() < deadline) {
      m = HttpGet(worker_port, "/metrics");
      if (m.ok() && m->find("tessera_worker_steps_total ") != std::string::npos &&
          m->find("tessera_worker_steps_total 0") == std::string::npos) {
        break;
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
    INFO("worker log: " << worker_dir << "/worker.log; " << m.status().ToString());
    REQUIRE(m.ok());
  }
  CHECK(PromtoolComplaints(worker_port).empty());
  // Its health service says it trains.
  absl::StatusOr<bool> training =
      CheckHealth(absl::StrCat("127.0.0.1:", health_port), absl::Seconds(5), "tessera.v1.Worker");
  TESSERA_REQUIRE_OK(training.status());
  CHECK(*training);

  // Every endpoint is clean for promtool.
  std::vector<std::string> servers;
  for (int port : cluster->metrics_ports()) {
    INFO("server metrics on port " << port);
    CHECK(PromtoolComplaints(port).empty());
    servers.push_back(absl::StrCat("127.0.0.1:", port));
  }
  CHECK(PromtoolComplaints(cluster->coordinator_metrics_port()).empty());

  char tmpl[] = "/tmp/tessera-prometheus-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  {
    absl::StatusOr<std::unique_ptr<LocalPrometheus>> started = LocalPrometheus::Start(
        dir,
        {{"tessera-server", servers},
         {"tessera-coordinator", {absl::StrCat("127.0.0.1:", cluster->coordinator_metrics_port())}},
         {"tessera-worker", {absl::StrCat("127.0.0.1:", worker_port)}}},
        absl::Milliseconds(500));
    TESSERA_REQUIRE_OK(started.status());
    const LocalPrometheus& prometheus = **started;
    INFO("prometheus log: " << dir << "/prometheus.log");
    // Every target up.
    CHECK(prometheus.AwaitValue("count(up == 1)", 4, absl::Seconds(60)) == 4);
    CHECK(prometheus.Query("count(up)") == 4);
    // What the test did, as Prometheus recorded it.
    CHECK(prometheus.AwaitValue("sum(tessera_server_keys_total{method=\"PushSparse\"})",
                                static_cast<double>(pushed), absl::Seconds(30)) == pushed);
    CHECK(prometheus.AwaitValue("sum(tessera_table_rows{table=\"prom\"})",
                                static_cast<double>(distinct.size()),
                                absl::Seconds(30)) == distinct.size());
    // Every push answered OK (table creation may be refused and retried while the servers
    // take their places).
    CHECK(prometheus.Query("sum(tessera_server_requests_total{method=\"PushSparse\",code!=\"OK\"}) "
                           "or vector(0)") == 0);
    CHECK(prometheus.Query(
              "sum(tessera_server_requests_total{method=\"PushSparse\",code=\"OK\"})") >= 40);
    CHECK(prometheus.Query("tessera_coordinator_shards_degraded") == 0);
    // Process metrics from every daemon.
    CHECK(prometheus.Query("count(process_resident_memory_bytes > 1e6)") == 4);
    CHECK(prometheus.Query("count(process_open_fds > 0)") == 4);
    // The worker trains: its samples counter grows between scrapes.
    CHECK(prometheus.AwaitValue("count(increase(tessera_worker_samples_total[5s]) > 0)", 1,
                                absl::Seconds(30)) == 1);
    CHECK(prometheus.Query("count(tessera_worker_step_phase_seconds_total)") == 4);
  }
  std::filesystem::remove_all(dir);
  std::filesystem::remove_all(worker_dir);
}

}  // namespace
}  // namespace tessera
