// tessera-worker processes on a real cluster: a job runs to the end with its progress lines and
// evaluation, and a worker killed with SIGKILL under SSP does not block the others (or fails
// the job with a clear message, by policy).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "storage/checkpoint_store.h"
#include "tests/test_cluster.h"
#include "worker/data/idx.h"
#include "worker/models/lr_kernels.h"

namespace tessera {
namespace {

class Dir {
 public:
  Dir() {
    char tmpl[] = "/tmp/tessera-worker-test-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~Dir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Starts `args` with stdout and stderr into `log`; returns its pid.
pid_t Spawn(std::vector<std::string> args, const std::string& log) {
  const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  REQUIRE(fd >= 0);
  const pid_t pid = SpawnChild(std::move(args), fd);
  close(fd);
  REQUIRE(pid > 0);
  return pid;
}

// Waits (bounded) until `log` contains `text`.
bool WaitForText(const std::string& log, const std::string& text, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (ReadAll(log).find(text) != std::string::npos) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return false;
}

std::string Config(const std::string& name, const std::string& mode, const std::string& policy) {
  const std::string d = kFashionMnistDir;
  return absl::StrCat("name: \"", name, "\"\n", "mlp { hidden: 64 }\n", "idx {\n",
                      "  train_images: \"", d, "/train-images-idx3-ubyte.gz\"\n",
                      "  train_labels: \"", d, "/train-labels-idx1-ubyte.gz\"\n",
                      "  test_images: \"", d, "/t10k-images-idx3-ubyte.gz\"\n", "  test_labels: \"",
                      d, "/t10k-labels-idx1-ubyte.gz\"\n", "  max_train_examples: 24000\n}\n",
                      "batch_size: 64\n", "epochs: 3\n", "mode: ", mode, "\n", "staleness: 2\n",
                      "worker_lease_ms: 1000\n", "on_worker_death: ", policy, "\n");
}

TEST_CASE("three tessera-worker processes: one killed under SSP, the others finish",
          "[worker][fault]") {
  auto cluster = testing::StartCoordinated(2, 1, 2);
  for (const char* policy : {"WORKER_DEATH_POLICY_CONTINUE", "WORKER_DEATH_POLICY_FAIL"}) {
    INFO(policy);
    const bool fail = std::string(policy).find("FAIL") != std::string::npos;
    Dir dir;
    const std::string config = dir.path() + "/job.textproto";
    std::ofstream(config) << Config(fail ? "ssp-fail" : "ssp-continue", "CONSISTENCY_MODE_SSP",
                                    policy);
    std::vector<pid_t> pids;
    for (int w = 0; w < 3; ++w) {
      pids.push_back(
          Spawn({TESSERA_WORKER_BINARY, "--config=" + config,
                 "--coordinator=" + cluster->coordinator_address(), absl::StrCat("--worker=", w),
                 "--num_workers=3", "--metrics_port=-1", "--report_every_s=0.2"},
                absl::StrCat(dir.path(), "/worker-", w, ".log")));
    }
    const std::string victim_log = dir.path() + "/worker-2.log";
    REQUIRE(WaitForText(victim_log, "samples/s", absl::Seconds(60)));  // mid-job
    kill(pids[2], SIGKILL);
    WaitChild(pids[2], absl::Seconds(10));
    const int code0 = WaitChild(pids[0], absl::Seconds(120));
    const int code1 = WaitChild(pids[1], absl::Seconds(120));
    const std::string log0 = ReadAll(dir.path() + "/worker-0.log");
    INFO(log0);
    if (!fail) {
      CHECK(code0 == 0);
      CHECK(code1 == 0);
      CHECK(log0.find("test accuracy") != std::string::npos);
    } else {
      CHECK(code0 == 1);
      CHECK(code1 == 1);
      CHECK(log0.find("worker 2 of job 'ssp-fail' died") != std::string::npos);
    }
  }
}

TEST_CASE("tessera-worker refuses a bad config with the line and the reason", "[worker]") {
  Dir dir;
  const std::string config = dir.path() + "/bad.textproto";
  std::ofstream(config) << "name: \"x\"\nmlp { hidden: 64 }\nepochz: 3\n";
  const std::string log = dir.path() + "/out.log";
  const pid_t pid = Spawn({TESSERA_WORKER_BINARY, "--config=" + config, "--coordinator=127.0.0.1:1",
                           "--metrics_port=-1"},
                          log);
  CHECK(WaitChild(pid, absl::Seconds(30)) == 2);
  const std::string out = ReadAll(log);
  INFO(out);
  CHECK(out.find("line 3") != std::string::npos);
  CHECK(out.find("epochz") != std::string::npos);
}

// Runs `config` on two worker processes against `cluster`; returns worker 0's output.
std::string RunTwoWorkers(const LocalCluster& cluster, const std::string& config_text) {
  Dir dir;
  const std::string config = dir.path() + "/job.textproto";
  std::ofstream(config) << config_text;
  std::vector<pid_t> pids;
  for (int w = 0; w < 2; ++w) {
    pids.push_back(Spawn({TESSERA_WORKER_BINARY, "--config=" + config,
                          "--coordinator=" + cluster.coordinator_address(),
                          absl::StrCat("--worker=", w), "--num_workers=2", "--metrics_port=0"},
                         absl::StrCat(dir.path(), "/worker-", w, ".log")));
  }
  const int code0 = WaitChild(pids[0], absl::Seconds(120));
  const int code1 = WaitChild(pids[1], absl::Seconds(120));
  const std::string log0 = ReadAll(dir.path() + "/worker-0.log");
  INFO(log0 << "\nworker 1:\n" << ReadAll(dir.path() + "/worker-1.log"));
  CHECK(code0 == 0);
  CHECK(code1 == 0);
  CHECK(log0.find("metrics: http://127.0.0.1:") != std::string::npos);  // /metrics served
  return log0;
}

// The AUC in a "test AUC 0.9123 (...)" line, -1 without one.
double AucIn(const std::string& log) {
  const size_t at = log.rfind("test AUC ");  // (the last: the planted one is logged first)
  return at == std::string::npos ? -1 : std::atof(log.c_str() + at + 9);
}

TEST_CASE("tessera-worker runs the CTR and logistic-regression models on synthetic CTR data",
          "[worker]") {
  Dir checkpoints;
  auto cluster = testing::StartCoordinated(2, 1, 2, {}, {"--checkpoint_dir=" + checkpoints.path()});
  const std::string data =
      "synthetic_ctr { train_examples: 60000 test_examples: 10000 }\n"
      "mode: CONSISTENCY_MODE_ASYNC\nprefetch: true\nepochs: 2\n";
  // 117 steps per epoch and worker: checkpoints at steps 100 and 200 and at the end (234),
  // keeping the newest two.
  const std::string ctr = RunTwoWorkers(
      *cluster, absl::StrCat("name: \"ctr\"\nctr {}\n", data, "checkpoint { dir: \"",
                             checkpoints.path(), "\" every_steps: 100 keep_last: 2 }\n"));
  INFO(ctr);
  CHECK(ctr.find("CTR embedding+MLP: 8 fields x dim 8") != std::string::npos);
  CHECK(ctr.find(CudaDeviceCount() > 0 ? "backend gpu" : "backend cpu") != std::string::npos);
  CHECK(ctr.find("checkpoint 1 (full) at step 100") != std::string::npos);
  CHECK(ctr.find("checkpoint 2 (incremental on 1) at step 200") != std::string::npos);
  CHECK(ctr.find("checkpoint 3 (incremental on 2) at step 234") != std::string::npos);
  absl::StatusOr<std::unique_ptr<storage::CheckpointStore>> store =
      storage::CheckpointStore::Open(checkpoints.path());
  TESSERA_REQUIRE_OK(store.status());
  absl::StatusOr<std::vector<uint64_t>> ids = (*store)->List();
  TESSERA_REQUIRE_OK(ids.status());
  CHECK(ids->size() >= 2);  // retention keeps what the newest needs (its chain) and one more
  CHECK(ids->back() == 3);
  const std::string lr = RunTwoWorkers(*cluster, "name: \"lr\"\nlr {}\n" + data);
  INFO(lr);
  CHECK(lr.find("sparse logistic regression") != std::string::npos);
  // The embedding model captures the planted pairwise interactions; a linear model cannot.
  const double ctr_auc = AucIn(ctr), lr_auc = AucIn(lr);
  CHECK(lr_auc > 0.6);
  CHECK(ctr_auc > lr_auc + 0.02);
}

// A Criteo file whose clicks follow the first categorical column (a or b: 90%, else 10%);
// line `bad_line` (1-based, 0: none) is broken.
std::string WriteCriteo(const std::string& path, int lines, uint32_t seed, int bad_line = 0) {
  std::mt19937 rng(seed);
  std::string text;
  for (int i = 1; i <= lines; ++i) {
    if (i == bad_line) {
      text += "0\tbroken\n";
      continue;
    }
    const char c0 = "abcd"[rng() % 4];
    const bool click = (rng() % 10 < 9) == (c0 == 'a' || c0 == 'b');
    std::string line = click ? "1" : "0";
    for (int k = 0; k < 13; ++k) absl::StrAppend(&line, "\t", rng() % 10);
    absl::StrAppend(&line, "\t", std::string(1, c0));
    for (int k = 1; k < 26; ++k) absl::StrAppend(&line, "\t", absl::Hex(rng() % 16));
    text += line + "\n";
  }
  std::ofstream(path) << text;
  return path;
}

TEST_CASE("tessera-worker trains on a Criteo file while it is still being parsed", "[worker]") {
  auto cluster = testing::StartCoordinated(2, 1, 2);
  Dir dir;
  const std::string train = WriteCriteo(dir.path() + "/train.tsv", 20000, 1);
  const std::string test = WriteCriteo(dir.path() + "/test.tsv", 2000, 2);
  const std::string out = RunTwoWorkers(
      *cluster, absl::StrCat("name: \"criteo\"\n",
                             "ctr { hidden: 16 embedding_optimizer { kind: OPTIMIZER_KIND_ADAGRAD "
                             "learning_rate: 0.05 } }\n",
                             "optimizer { kind: OPTIMIZER_KIND_ADAM learning_rate: 0.002 }\n",
                             "criteo { train: \"", train, "\" test: \"", test,
                             "\" }\nbatch_size: 128\nepochs: 2\n"));
  INFO(out);
  // Each table has the optimizer the config gave it.
  std::unique_ptr<Client> client = testing::ConnectCoordinated(*cluster);
  absl::StatusOr<TableStatus> emb = client->DescribeTable("criteo.emb");
  absl::StatusOr<TableStatus> w0 = client->DescribeTable("criteo.w0");
  TESSERA_REQUIRE_OK(emb.status());
  TESSERA_REQUIRE_OK(w0.status());
  CHECK(emb->config.optimizer.kind == OptimizerKind::kAdagrad);
  CHECK(w0->config.optimizer.kind == OptimizerKind::kAdam);
  CHECK(*w0->config.optimizer.learning_rate == 0.002f);
  CHECK(out.find("CTR embedding+MLP: 26 fields x dim 8, 13 dense") != std::string::npos);
  // The planted rule's AUC is about 0.9: learned from column 0 alone.
  CHECK(AucIn(out) > 0.8);

  // A broken line deep in the file stops the job with its file and line.
  const std::string broken = WriteCriteo(dir.path() + "/broken.tsv", 20000, 3, 15000);
  const std::string config = dir.path() + "/broken.textproto";
  std::ofstream(config) << absl::StrCat("name: \"broken\"\nlr {}\ncriteo { train: \"", broken,
                                        "\" }\nbatch_size: 128\n");
  const pid_t pid = Spawn({TESSERA_WORKER_BINARY, "--config=" + config,
                           "--coordinator=" + cluster->coordinator_address(), "--metrics_port=-1"},
                          dir.path() + "/broken.log");
  CHECK(WaitChild(pid, absl::Seconds(60)) == 1);
  const std::string log = ReadAll(dir.path() + "/broken.log");
  INFO(log);
  CHECK(log.find("the job stopped") != std::string::npos);
  CHECK(log.find(broken + ":15000: 2 columns") != std::string::npos);
}

TEST_CASE("tessera-worker refuses a model on data it cannot read, and a GPU it does not have",
          "[worker]") {
  std::vector<std::pair<std::string, std::string>> cases = {
      {"name: \"x\"\nmlp {}\nsynthetic_ctr {}\n", "the mlp model reads idx data"},
      {"name: \"x\"\nctr {}\nlibsvm { train: \"/nonexistent\" }\n",
       "the ctr model reads synthetic_ctr or criteo data"},
      {"name: \"x\"\nlr {}\nlibsvm { train: \"/nonexistent/a.svm\" }\n", "/nonexistent/a.svm"},
      {"name: \"x\"\nlr {}\nsynthetic_ctr {}\nfinal_gradient_scale: 2\n",
       "final_gradient_scale must be in [0, 1]"}};
  if (CudaDeviceCount() == 0) {  // (where there is a device, BACKEND_GPU is fine)
    cases.push_back({"name: \"x\"\nctr {}\nsynthetic_ctr {}\nbackend: BACKEND_GPU\n", "no GPU: "});
  }
  for (const auto& [text, expected] : cases) {
    Dir dir;
    const std::string config = dir.path() + "/bad.textproto";
    std::ofstream(config) << text;
    const std::string log = dir.path() + "/out.log";
    const pid_t pid = Spawn({TESSERA_WORKER_BINARY, "--config=" + config,
                             "--coordinator=127.0.0.1:1", "--metrics_port=-1"},
                            log);
    CHECK(WaitChild(pid, absl::Seconds(30)) == 2);
    const std::string out = ReadAll(log);
    INFO(text << "\n->\n" << out);
    CHECK(out.find(expected) != std::string::npos);
  }
}

}  // namespace
}  // namespace tessera
