// `tessera local`: a whole cluster on this machine and a training job that visibly learns: by
// default tessera-worker processes training the Fashion-MNIST MLP (docs/worker.md).
#include <fcntl.h>
#include <google/protobuf/text_format.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "client/admin.h"
#include "client/client.h"
#include "common/auth.h"
#include "common/http_get.h"
#include "common/prom_text.h"
#include "common/wire.h"
#include "proto/job.pb.h"
#include "proto/tessera.pb.h"
#include "testing/local_cluster.h"
#include "testing/local_pki.h"
#include "testing/local_prometheus.h"
#include "tools/commands.h"
#include "worker/data/synthetic.h"
#include "worker/job.h"
#include "worker/logreg_trainer.h"
#include "worker/models/lr_kernels.h"

namespace tessera {
namespace {

std::string Si(double v) {
  if (v >= 1e9) return absl::StrFormat("%.2fG", v / 1e9);
  if (v >= 1e6) return absl::StrFormat("%.2fM", v / 1e6);
  if (v >= 1e3) return absl::StrFormat("%.1fk", v / 1e3);
  return absl::StrFormat("%.0f", v);
}

void PrintServerMetrics(const LocalCluster& cluster) {
  std::printf("\nserver metrics (scraped from each /metrics endpoint):\n");
  for (size_t i = 0; i < cluster.metrics_ports().size(); ++i) {
    absl::StatusOr<std::string> text = HttpGet(cluster.metrics_ports()[i], "/metrics");
    if (!text.ok()) {
      std::printf("  server %zu: cannot scrape: %s\n", i, text.status().ToString().c_str());
      continue;
    }
    const std::vector<PromSample> s = ParsePromText(*text);
    // Requests per method, in the order the server lists them.
    std::vector<std::string> methods;
    for (const PromSample& x : s) {
      if (x.name != "tessera_server_requests_total") continue;
      const std::string& m = x.labels.count("method") ? x.labels.at("method") : "";
      if (std::find(methods.begin(), methods.end(), m) == methods.end()) methods.push_back(m);
    }
    std::string requests;
    for (const std::string& m : methods) {
      const double n = SumSamples(s, "tessera_server_requests_total", {{"method", m}});
      if (n > 0) absl::StrAppend(&requests, requests.empty() ? "" : ", ", m, " ", Si(n));
    }
    const double errors = SumSamples(s, "tessera_server_requests_total") -
                          SumSamples(s, "tessera_server_requests_total", {{"code", "OK"}});
    std::printf(
        "  server %zu (127.0.0.1:%d/metrics): %s; %.0f errors; keys pulled %s, pushed %s; bytes "
        "in %s, out %s; %s table rows, %sB of tables\n",
        i, cluster.metrics_ports()[i], requests.empty() ? "no requests" : requests.c_str(), errors,
        Si(SumSamples(s, "tessera_server_keys_total", {{"method", "PullSparse"}})).c_str(),
        Si(SumSamples(s, "tessera_server_keys_total", {{"method", "PushSparse"}})).c_str(),
        Si(SumSamples(s, "tessera_server_received_bytes_total")).c_str(),
        Si(SumSamples(s, "tessera_server_sent_bytes_total")).c_str(),
        Si(SumSamples(s, "tessera_table_rows")).c_str(),
        Si(SumSamples(s, "tessera_table_memory_bytes")).c_str());
  }
}

}  // namespace

// A fresh token file for `tessera local --secure` (docs/security.md): a random token per role,
// the job's with both admin (its tables) and worker; readable by this user only.
absl::StatusOr<std::string> WriteTokenFile(const std::string& dir) {
  std::random_device rd;
  auto token = [&] {
    std::string t;
    for (int i = 0; i < 8; ++i) t += absl::StrFormat("%08x", rd());
    return t;
  };
  const std::string job = token();
  const std::string text = absl::StrCat("admin ", token(), "\nadmin ", job, "\nworker ", job,
                                        "\nreader ", token(), "\nserver ", token(), "\n");
  const std::string path = dir + "/tokens";
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
    if (fd >= 0) close(fd);
    return absl::InternalError(absl::StrCat("cannot write ", path));
  }
  close(fd);
  return path;
}

// Starts the servers (and, with `coordinator`, tessera-coordinator) and prints where they are.
absl::StatusOr<std::unique_ptr<LocalCluster>> StartCluster(const LocalCommandOptions& o,
                                                           const std::string& log_dir,
                                                           bool coordinator,
                                                           const std::string& checkpoint_dir = "") {
  LocalClusterOptions co;
  co.server_binary = LocalCluster::DefaultServerBinary();
  co.num_servers = static_cast<uint32_t>(o.num_servers * o.replicas);
  co.log_dir = log_dir;
  if (!checkpoint_dir.empty()) co.extra_args.push_back("--checkpoint_dir=" + checkpoint_dir);
  if (o.secure) {
    absl::StatusOr<std::string> tokens = WriteTokenFile(log_dir);
    if (!tokens.ok()) return tokens.status();
    co.auth_token_file = *tokens;
    absl::StatusOr<LocalPki> pki = MakeLocalPki(log_dir);
    if (!pki.ok()) return pki.status();
    co.tls_ca_file = pki->ca_file;
    co.tls_cert_file = pki->cert_file;
    co.tls_key_file = pki->key_file;
    std::printf(
        "tessera local: --secure: mutual TLS with a throwaway CA (%s) and tokens (%s) on "
        "every daemon (docs/security.md)\n",
        pki->ca_file.c_str(), tokens->c_str());
  }
  if (coordinator) {
    co.replication = static_cast<uint32_t>(o.replicas);
    co.num_shards = static_cast<uint32_t>(o.num_servers);
    std::printf(
        "tessera local: starting a coordinator and %d servers: %d shards x %d replicas (%s; "
        "logs in %s)\n",
        o.num_servers * o.replicas, o.num_servers, o.replicas, co.server_binary.c_str(),
        log_dir.c_str());
  } else {
    std::printf("tessera local: starting %d servers (%s; logs in %s)\n", o.num_servers,
                co.server_binary.c_str(), log_dir.c_str());
  }
  absl::StatusOr<std::unique_ptr<LocalCluster>> cluster = LocalCluster::Start(co);
  if (!cluster.ok()) return cluster.status();
  if (coordinator) {
    std::printf("  coordinator: grpc %s, metrics http://127.0.0.1:%d/metrics\n",
                (*cluster)->coordinator_address().c_str(), (*cluster)->coordinator_metrics_port());
  }
  for (size_t i = 0; i < (*cluster)->addresses().size(); ++i) {
    std::printf("  server %zu: grpc %s, metrics http://127.0.0.1:%d/metrics\n", i,
                (*cluster)->addresses()[i].c_str(), (*cluster)->metrics_ports()[i]);
  }
  return cluster;
}

// The end of every job: server metrics, the coordinator's view, a clean stop.
bool FinishCluster(std::unique_ptr<LocalCluster> cluster) {
  PrintServerMetrics(*cluster);
  if (!cluster->coordinator_address().empty()) {
    absl::StatusOr<std::string> status = FormatClusterStatus(
        cluster->coordinator_address(), /*json=*/false, cluster->ClientCredentials(kRoleAdmin));
    std::printf("\n%s", status.ok() ? status->c_str() : status.status().ToString().c_str());
  }
  const absl::Status stopped = cluster->Stop();
  std::printf("\nstopping servers: %s\n",
              stopped.ok() ? "all drained and exited cleanly" : stopped.ToString().c_str());
  return stopped.ok();
}

// The in-process demo: sparse logistic regression on a planted problem, trained by threads.
int RunPlantedLr(const LocalCommandOptions& in, const std::string& log_dir) {
  LocalCommandOptions o = in;  // the demo's defaults where the command line has none
  if (o.epochs <= 0) o.epochs = 2;
  if (o.batch_size <= 0) o.batch_size = 512;
  if (!o.optimizer.has_value())
    o.optimizer = OptimizerConfig{.kind = OptimizerKind::kAdagrad, .learning_rate = 0.1f};
  // Device first: asking for a GPU that is not there is a usage error, before any work.
  std::string why;
  const bool have_gpu = CudaDeviceCount(&why) > 0;
  bool use_gpu = false;
  if (o.device == "gpu") {
    if (!have_gpu) {
      std::fprintf(stderr, "tessera local: --device=gpu but %s\n", why.c_str());
      return 2;
    }
    use_gpu = true;
  } else if (o.device == "auto") {
    use_gpu = have_gpu;
  } else if (o.device != "cpu") {
    std::fprintf(stderr, "tessera local: --device must be cpu, gpu or auto\n");
    return 2;
  }

  absl::StatusOr<std::unique_ptr<LocalCluster>> cluster =
      StartCluster(o, log_dir, /*coordinator=*/o.replicas > 1);
  if (!cluster.ok()) {
    std::fprintf(stderr, "tessera local: %s\n", cluster.status().ToString().c_str());
    return 1;
  }
  PlantedLrOptions po;
  po.num_features = o.features;
  po.train_samples = o.train_samples;
  po.test_samples = std::max<uint64_t>(10000, o.train_samples / 8);
  const PlantedLrProblem problem = MakePlantedLrProblem(po);
  std::printf(
      "data: %llu training and %llu test samples, %llu features (%u active each), labels "
      "drawn from a planted logistic model\n",
      static_cast<unsigned long long>(problem.train.size()),
      static_cast<unsigned long long>(problem.test.size()),
      static_cast<unsigned long long>(po.num_features), po.features_per_sample);

  ClientOptions client_options;
  client_options.credentials = (*cluster)->ClientCredentials(kRoleAdmin | kRoleWorker);
  if (o.replicas > 1) {
    client_options.coordinator = (*cluster)->coordinator_address();
  } else {
    client_options.servers = (*cluster)->addresses();
  }
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(client_options);
  if (!client.ok()) {
    std::fprintf(stderr, "tessera local: %s\n", client.status().ToString().c_str());
    return 1;
  }
  LrTrainOptions to;
  to.threads = o.threads;
  to.epochs = o.epochs;
  to.batch_size = static_cast<uint32_t>(o.batch_size);
  to.use_gpu = use_gpu;
  to.optimizer = *o.optimizer;
  const std::string device =
      use_gpu ? "GPU" : (o.device == "cpu" ? "CPU" : "CPU (no GPU: " + why + ")");
  std::printf(
      "training: %d worker threads, batch %d, %d epochs, %s (learning rate %g), "
      "forward/backward on %s\n",
      to.threads, o.batch_size, to.epochs,
      std::string(OptimizerKindName(to.optimizer.kind)).c_str(),
      to.optimizer.learning_rate.value_or(0), device.c_str());
  std::printf("  %8s %10s %11s %10s %8s\n", "step", "samples", "train loss", "keys/s", "time");
  absl::StatusOr<LrTrainResult> result =
      TrainLogisticRegression(**client, problem, to, [](const LrProgress& p) {
        std::printf("  %8llu %10llu %11.4f %10s %7.1fs\n", static_cast<unsigned long long>(p.steps),
                    static_cast<unsigned long long>(p.samples), p.train_loss,
                    Si(p.keys_per_s).c_str(), p.elapsed_s);
      });
  if (!result.ok()) {
    std::fprintf(stderr, "tessera local: training failed: %s\n",
                 result.status().ToString().c_str());
    return 1;
  }
  const double gap_points = 100.0 * (result->planted.accuracy - result->after.accuracy);
  const bool close = std::fabs(gap_points) <= 2.0;
  std::printf("\nsummary:\n");
  std::printf("  test log-loss  %.4f -> %.4f  (drop %.4f; planted model %.4f)\n",
              result->before.logloss, result->after.logloss,
              result->before.logloss - result->after.logloss, result->planted.logloss);
  std::printf("  test accuracy  %.4f -> %.4f  (planted model %.4f: %.2f points %s, %s)\n",
              result->before.accuracy, result->after.accuracy, result->planted.accuracy,
              std::fabs(gap_points), gap_points >= 0 ? "below" : "above",
              close ? "within 2 points" : "NOT within 2 points");
  std::printf("  %llu steps in %.1f s: %s samples/s, %s keys/s pulled+pushed\n",
              static_cast<unsigned long long>(result->steps), result->seconds,
              Si(problem.train.size() * o.epochs / result->seconds).c_str(),
              Si(result->keys_moved / result->seconds).c_str());
  client->reset();
  if (!FinishCluster(*std::move(cluster))) return 1;
  return close ? 0 : 1;
}

// The binary `name` beside this one, or in ../<subdir>/ (the build tree), or on PATH.
std::string SiblingBinary(const std::string& name, const std::string& subdir) {
  std::error_code ec;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (const auto& candidate :
         {self.parent_path() / name, self.parent_path().parent_path() / subdir / name}) {
      if (std::filesystem::exists(candidate, ec)) return candidate.string();
    }
  }
  return name;
}

// The built-in jobs, or a config file; then the command line's overrides.
absl::StatusOr<v1::JobConfig> LocalJob(const LocalCommandOptions& o) {
  v1::JobConfig c;
  if (o.job == "fmnist") {
    const std::string dir = "/usr/share/datasets/fashion-mnist";
    c.set_name("fmnist");
    c.mutable_mlp()->add_hidden(256);
    v1::IdxData* d = c.mutable_idx();
    d->set_train_images(dir + "/train-images-idx3-ubyte.gz");
    d->set_train_labels(dir + "/train-labels-idx1-ubyte.gz");
    d->set_test_images(dir + "/t10k-images-idx3-ubyte.gz");
    d->set_test_labels(dir + "/t10k-labels-idx1-ubyte.gz");
    if (!std::filesystem::exists(d->train_images())) {
      return absl::FailedPreconditionError(
          absl::StrCat("the fmnist job reads Fashion-MNIST from ", dir,
                       ", which is missing: install Debian's dataset-fashion-mnist "
                       "(tools/setup.sh does), or pick another --job"));
    }
    c.set_epochs(3);
  } else if (o.job == "ctr" || o.job == "lr") {
    c.set_name(o.job);
    if (o.job == "ctr") {
      c.mutable_ctr();
    } else {
      c.mutable_lr();
    }
    c.mutable_synthetic_ctr();
    c.set_epochs(3);
  } else if (absl::EndsWith(o.job, ".textproto") || absl::StrContains(o.job, '/')) {
    absl::StatusOr<std::unique_ptr<v1::JobConfig>> loaded = LoadJobConfig(o.job);
    if (!loaded.ok()) return loaded.status();
    c = **loaded;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "--job must be fmnist, ctr, lr, planted-lr or a job config file (*.textproto); got '",
        o.job, "'"));
  }
  if (!o.mode.empty()) {
    if (o.mode == "bsp") {
      c.set_mode(v1::CONSISTENCY_MODE_BSP);
    } else if (o.mode == "ssp") {
      c.set_mode(v1::CONSISTENCY_MODE_SSP);
      c.set_staleness(static_cast<uint32_t>(o.staleness));
    } else if (o.mode == "async") {
      c.set_mode(v1::CONSISTENCY_MODE_ASYNC);
    } else {
      return absl::InvalidArgumentError("--mode must be bsp, ssp or async");
    }
  }
  if (o.epochs > 0) c.set_epochs(static_cast<uint32_t>(o.epochs));
  if (o.batch_size > 0) c.set_batch_size(static_cast<uint32_t>(o.batch_size));
  if (o.optimizer.has_value()) {
    v1::TableSpec spec;
    TableConfigToProto(TableConfig{.name = "x", .optimizer = *o.optimizer}, &spec);
    *c.mutable_optimizer() = spec.optimizer();
  }
  c.set_backend(o.device == "gpu"   ? v1::BACKEND_GPU
                : o.device == "cpu" ? v1::BACKEND_CPU
                                    : v1::BACKEND_AUTO);
  return c;
}

// `tessera local`'s main job: tessera-worker processes train the job against the cluster.
int RunWorkerJob(const LocalCommandOptions& o, const std::string& log_dir) {
  absl::StatusOr<v1::JobConfig> job = LocalJob(o);
  if (!job.ok()) {
    std::fprintf(stderr, "tessera local: %s\n", std::string(job.status().message()).c_str());
    return 2;
  }
  if (std::string why; o.device == "gpu" && CudaDeviceCount(&why) == 0) {
    // (Before any process starts: the workers would each fail the same way.)
    std::fprintf(stderr, "tessera local: --device=gpu but %s\n", why.c_str());
    return 2;
  }
  // Checkpoints: where the job says, else beside the logs; the built-in jobs take one every
  // 200 steps (worker 0 runs the rounds) and keep the newest two.
  if (!job->has_checkpoint() && o.job.find('/') == std::string::npos &&
      !absl::EndsWith(o.job, ".textproto")) {
    job->mutable_checkpoint()->set_every_steps(200);
    job->mutable_checkpoint()->set_keep_last(2);
  }
  if (o.serve && o.publish_interval_s > 0) {
    // This process publishes the versions (on time, not on steps; worker 0 still takes one
    // at the end).
    job->mutable_checkpoint()->set_every_steps(0);
    job->mutable_checkpoint()->set_keep_last(3);
  }
  if (job->has_checkpoint() && job->checkpoint().dir().empty()) {
    job->mutable_checkpoint()->set_dir(log_dir + "/checkpoints");
  }
  const std::string checkpoint_dir = job->has_checkpoint() ? job->checkpoint().dir() : "";
  std::string text;
  google::protobuf::TextFormat::PrintToString(*job, &text);
  const std::string config_path = log_dir + "/job.textproto";
  if (!(std::ofstream(config_path) << text)) {
    std::fprintf(stderr, "tessera local: cannot write %s\n", config_path.c_str());
    return 1;
  }
  absl::StatusOr<std::unique_ptr<LocalCluster>> cluster =
      StartCluster(o, log_dir, /*coordinator=*/true, checkpoint_dir);
  if (!cluster.ok()) {
    std::fprintf(stderr, "tessera local: %s\n", cluster.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<LocalServing, LocalServingDeleter> serving;
  if (o.serve) {
    if (checkpoint_dir.empty()) {
      std::fprintf(stderr, "tessera local --serve: the job takes no checkpoints (its versions)\n");
      return 2;
    }
    absl::StatusOr<std::unique_ptr<LocalServing, LocalServingDeleter>> started =
        StartLocalServing(checkpoint_dir, log_dir, **cluster, o.publish_interval_s);
    if (!started.ok()) {
      std::fprintf(stderr, "tessera local --serve: %s\n", started.status().ToString().c_str());
      return 1;
    }
    serving = *std::move(started);
  }
  const std::string binary = SiblingBinary("tessera-worker", "worker");
  // Known /metrics ports for the workers, so that Prometheus can be told where they are.
  std::vector<int> worker_ports;
  for (int w = 0; w < o.workers; ++w) {
    absl::StatusOr<int> port = FreeLoopbackPort();
    if (!port.ok()) {
      std::fprintf(stderr, "tessera local: no free port for worker metrics: %s\n",
                   port.status().ToString().c_str());
      return 1;
    }
    worker_ports.push_back(*port);
  }
  std::unique_ptr<LocalPrometheus> prometheus;
  if (o.prometheus) {
    LocalPrometheus::Targets targets = {
        {"tessera-coordinator",
         {absl::StrCat("127.0.0.1:", (*cluster)->coordinator_metrics_port())}},
        {"tessera-server", {}},
        {"tessera-worker", {}}};
    for (int port : (*cluster)->metrics_ports()) {
      targets[1].second.push_back(absl::StrCat("127.0.0.1:", port));
    }
    for (int port : worker_ports) targets[2].second.push_back(absl::StrCat("127.0.0.1:", port));
    // The alert rules of deploy/, where this binary runs from a build tree beside them.
    std::vector<std::string> rules;
    std::error_code ec;
    const std::filesystem::path alerts =
        std::filesystem::read_symlink("/proc/self/exe", ec).parent_path() /
        "../../deploy/prometheus/alerts.yml";
    if (!ec && std::filesystem::exists(alerts)) {
      rules.push_back(std::filesystem::canonical(alerts));
    }
    absl::StatusOr<std::unique_ptr<LocalPrometheus>> started =
        LocalPrometheus::Start(log_dir, targets, absl::Seconds(1), rules);
    if (!started.ok()) {
      std::fprintf(stderr, "tessera local: --prometheus: %s\n",
                   std::string(started.status().message()).c_str());
      return 1;
    }
    prometheus = *std::move(started);
    std::printf(
        "Prometheus: %s scrapes the coordinator, %zu servers and %d workers every second%s\n",
        prometheus->url().c_str(), (*cluster)->metrics_ports().size(), o.workers,
        rules.empty() ? "" : absl::StrCat(", with the alert rules of ", rules[0]).c_str());
  }
  std::printf("job '%s' (%s):\n%s", job->name().c_str(), config_path.c_str(), text.c_str());
  std::printf(
      "starting %d tessera-worker processes (%s); worker 0's output follows, the others' "
      "is in %s/worker-<i>.log\n",
      o.workers, binary.c_str(), log_dir.c_str());
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
    std::perror("tessera local: pipe2");
    return 1;
  }
  std::vector<pid_t> pids;
  for (int w = 0; w < o.workers; ++w) {
    int out_fd = pipe_fds[1];
    if (w > 0) {
      out_fd = open(absl::StrCat(log_dir, "/worker-", w, ".log").c_str(),
                    O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    }
    std::vector<std::string> args = {binary,
                                     "--config=" + config_path,
                                     "--coordinator=" + (*cluster)->coordinator_address(),
                                     absl::StrCat("--worker=", w),
                                     absl::StrCat("--num_workers=", o.workers),
                                     absl::StrCat("--metrics_port=", worker_ports[w])};
    const Credentials c = (*cluster)->ClientCredentials(kRoleAdmin | kRoleWorker);
    if (!(*cluster)->auth_token_file().empty()) {
      args.push_back("--auth_token_file=" + (*cluster)->auth_token_file());
    }
    if (!c.tls_ca_file.empty()) {
      args.push_back("--tls_ca_file=" + c.tls_ca_file);
      args.push_back("--tls_cert_file=" + c.tls_cert_file);
      args.push_back("--tls_key_file=" + c.tls_key_file);
    }
    pids.push_back(SpawnChild(std::move(args), out_fd));
    if (w > 0 && out_fd >= 0) close(out_fd);
  }
  close(pipe_fds[1]);
  // Worker 0's lines, to the terminal and to its log, until it exits (its pipe closes).
  std::ofstream log0(log_dir + "/worker-0.log");
  std::string line, evaluation;
  char buf[4096];
  while (true) {
    const ssize_t n = read(pipe_fds[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    for (ssize_t i = 0; i < n; ++i) {
      if (buf[i] != '\n') {
        line.push_back(buf[i]);
        continue;
      }
      std::printf("  [worker 0] %s\n", line.c_str());
      log0 << line << '\n';
      if (absl::StartsWith(line, "test ")) evaluation = line;
      line.clear();
    }
  }
  close(pipe_fds[0]);
  bool ok = true;
  for (int w = 0; w < o.workers; ++w) {
    const int code = pids[w] < 0 ? -1 : WaitChild(pids[w], absl::Seconds(w == 0 ? 10 : 120));
    if (code != 0) {
      ok = false;
      std::printf("worker %d failed (exit code %d); see %s/worker-%d.log\n", w, code,
                  log_dir.c_str(), w);
    }
  }
  std::printf("\nsummary: %d workers %s; %s\n", o.workers, ok ? "finished" : "did NOT all finish",
              evaluation.empty() ? "no evaluation" : evaluation.c_str());
  if (!checkpoint_dir.empty()) {
    std::printf("  checkpoints in %s (see: tessera checkpoint list --checkpoint_dir=%s)\n",
                checkpoint_dir.c_str(), checkpoint_dir.c_str());
  }
  bool bar_met = true;
  if (job->name() == "fmnist" && o.job == "fmnist") {
    const double accuracy =
        evaluation.empty() ? 0 : std::atof(evaluation.c_str() + strlen("test accuracy "));
    bar_met = accuracy >= 0.85;
    std::printf("  Fashion-MNIST test accuracy %.4f: %s the 0.85 bar\n", accuracy,
                bar_met ? "meets" : "does NOT meet");
  }
  if (serving != nullptr && ok) {
    ok = FinishLocalServing(*serving, *job, **cluster);
  }
  serving.reset();
  if (prometheus != nullptr) {
    // What Prometheus recorded, once it has scraped every server after the job (the workers
    // have exited: their series end with their last scrape).
    const double targets = static_cast<double>((*cluster)->metrics_ports().size() + 1);
    const double up = prometheus->AwaitValue("count(up{job!=\"tessera-worker\"} == 1)", targets,
                                             absl::Seconds(10));
    const double samples =
        prometheus->Query("sum(max_over_time(tessera_worker_samples_total[10m]))");
    std::printf(
        "  Prometheus (%s): %.0f of %.0f server and coordinator targets up; %.0f pushes answered "
        "OK; %s\n",
        prometheus->url().c_str(), std::isnan(up) ? 0 : up, targets,
        prometheus->Query(
            "sum(tessera_server_requests_total{method=~\"Push.*\",code=\"OK\"}) or vector(0)"),
        std::isnan(samples)
            ? "the workers ended before their first scrape"
            : absl::StrFormat("%.0f training samples scraped from the workers", samples).c_str());
  }
  if (o.linger_s > 0) {
    std::printf("\nthe cluster%s stays up for %.0f s (Ctrl-C stops everything)\n",
                prometheus != nullptr
                    ? absl::StrCat(" and Prometheus (", prometheus->url(), ")").c_str()
                    : "",
                o.linger_s);
    absl::SleepFor(absl::Seconds(o.linger_s));
  }
  prometheus.reset();
  if (!FinishCluster(*std::move(cluster))) return 1;
  return ok && bar_met ? 0 : 1;
}

int RunLocal(const LocalCommandOptions& o) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (o.replicas < 1 || o.replicas > 3 || o.num_servers < 1 || o.workers < 1 || o.workers > 64) {
    std::fprintf(stderr,
                 "tessera local: --replicas must be 1, 2 or 3, --servers >= 1 and --workers in "
                 "1..64\n");
    return 2;
  }
  if (o.device != "auto" && o.device != "cpu" && o.device != "gpu") {
    std::fprintf(stderr, "tessera local: --device must be cpu, gpu or auto\n");
    return 2;
  }
  std::string log_dir = o.log_dir;
  if (log_dir.empty()) {
    char tmpl[] = "/tmp/tessera-local-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) {
      std::perror("tessera local: mkdtemp");
      return 1;
    }
    log_dir = tmpl;
  }
  if (o.job == "planted-lr") return RunPlantedLr(o, log_dir);
  return RunWorkerJob(o, log_dir);
}

}  // namespace tessera
