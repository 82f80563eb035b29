// Metrics as Prometheus sees them: every daemon's /metrics passes `promtool check metrics`, and a
// real Prometheus (Debian's, on loopback) scrapes a local cluster: every target is up, and the
// series hold what the test did (keys pushed, rows held, process metrics).
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
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
#include "tests/test_cluster.h"
#include "worker/idx.h"

namespace tessera {
namespace {

// A loopback port nobody listens on now (bound, then released for the child to take).
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  socklen_t len = sizeof(a);
  REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  close(fd);
  return ntohs(a.sin_port);
}

std::string UrlEncode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '_' || c == '-' || c == '.') {
      out.push_back(static_cast<char>(c));
    } else {
      out += absl::StrFormat("%%%02X", c);
    }
  }
  return out;
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

// The single value of an instant-vector query's first result ("value":[<time>,"<v>"]), or
// NaN when the answer has none.
double QueryValue(int port, const std::string& query) {
  absl::StatusOr<std::string> body = HttpGet(port, "/api/v1/query?query=" + UrlEncode(query));
  if (!body.ok()) return NAN;
  const size_t at = body->find("\"value\":[");
  if (at == std::string::npos) return NAN;
  const size_t quote = body->find('"', body->find(',', at) + 1);
  return quote == std::string::npos ? NAN : std::atof(body->c_str() + quote + 1);
}

class Prometheus {
 public:
  // Starts Debian's prometheus on 127.0.0.1 scraping `targets` (job -> host:port list) every
  // 500 ms.
  Prometheus(const std::string& dir,
             const std::vector<std::pair<std::string, std::vector<std::string>>>& targets)
      : port_(FreePort()) {
    std::string config =
        "global:\n  scrape_interval: 500ms\n  evaluation_interval: 500ms\n"
        "scrape_configs:\n";
    for (const auto& [job, hosts] : targets) {
      absl::StrAppend(&config, "  - job_name: ", job, "\n    static_configs:\n      - targets: ['",
                      absl::StrJoin(hosts, "', '"), "']\n");
    }
    std::ofstream(dir + "/prometheus.yml") << config;
    std::vector<std::string> args = {
        "/usr/bin/prometheus", "--config.file=" + dir + "/prometheus.yml",
        "--storage.tsdb.path=" + dir + "/data",
        absl::StrCat("--web.listen-address=127.0.0.1:", port_), "--log.level=warn"};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string log = dir + "/prometheus.log";
    const pid_t parent = getpid();
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
      const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      execv(argv[0], argv.data());
      _exit(127);
    }
    REQUIRE(pid_ > 0);
  }
  ~Prometheus() {
    kill(pid_, SIGTERM);
    int status;
    for (int i = 0; i < 200 && waitpid(pid_, &status, WNOHANG) == 0; ++i) {
      absl::SleepFor(absl::Milliseconds(50));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, &status, 0);
  }
  int port() const { return port_; }

 private:
  int port_;
  pid_t pid_ = -1;
};

// Polls `query` until its value is `want` (bounded); returns the last value seen.
double AwaitValue(int port, const std::string& query, double want, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  double v = NAN;
  while (absl::Now() < deadline) {
    v = QueryValue(port, query);
    if (v == want) break;
    absl::SleepFor(absl::Milliseconds(200));
  }
  return v;
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
  const pid_t worker = fork();
  if (worker == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    const int fd = open((worker_dir + "/worker.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    execl(TESSERA_WORKER_BINARY, TESSERA_WORKER_BINARY,
          ("--config=" + worker_dir + "/job.textproto").c_str(),
          ("--coordinator=" + cluster->coordinator_address()).c_str(),
          absl::StrCat("--metrics_port=", worker_port).c_str(), nullptr);
    _exit(127);
  }
  REQUIRE(worker > 0);
  struct KillWorker {
    pid_t pid;
    ~KillWorker() {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
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
    Prometheus prometheus(dir, {{"tessera-server", servers},
                                {"tessera-coordinator",
                                 {absl::StrCat("127.0.0.1:", cluster->coordinator_metrics_port())}},
                                {"tessera-worker", {absl::StrCat("127.0.0.1:", worker_port)}}});
    INFO("prometheus log: " << dir << "/prometheus.log");
    // Every target up.
    CHECK(AwaitValue(prometheus.port(), "count(up == 1)", 4, absl::Seconds(60)) == 4);
    CHECK(QueryValue(prometheus.port(), "count(up)") == 4);
    // What the test did, as Prometheus recorded it.
    CHECK(AwaitValue(prometheus.port(), "sum(tessera_server_keys_total{method=\"PushSparse\"})",
                     static_cast<double>(pushed), absl::Seconds(30)) == pushed);
    CHECK(AwaitValue(prometheus.port(), "sum(tessera_table_rows{table=\"prom\"})",
                     static_cast<double>(distinct.size()), absl::Seconds(30)) == distinct.size());
    // Every push answered OK (table creation may be refused and retried while the servers
    // take their places).
    CHECK(QueryValue(prometheus.port(),
                     "sum(tessera_server_requests_total{method=\"PushSparse\",code!=\"OK\"}) "
                     "or vector(0)") == 0);
    CHECK(QueryValue(prometheus.port(),
                     "sum(tessera_server_requests_total{method=\"PushSparse\",code=\"OK\"})") >=
          40);
    CHECK(QueryValue(prometheus.port(), "tessera_coordinator_shards_degraded") == 0);
    // Process metrics from every daemon.
    CHECK(QueryValue(prometheus.port(), "count(process_resident_memory_bytes > 1e6)") == 4);
    CHECK(QueryValue(prometheus.port(), "count(process_open_fds > 0)") == 4);
    // The worker trains: its samples counter grows between scrapes.
    CHECK(AwaitValue(prometheus.port(), "count(increase(tessera_worker_samples_total[5s]) > 0)", 1,
                     absl::Seconds(30)) == 1);
    CHECK(QueryValue(prometheus.port(), "count(tessera_worker_step_phase_seconds_total)") == 4);
  }
  std::filesystem::remove_all(dir);
  std::filesystem::remove_all(worker_dir);
}

}  // namespace
}  // namespace tessera
