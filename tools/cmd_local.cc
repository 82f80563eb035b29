// `tessera local`: a whole cluster on this machine and a training job that visibly learns.
#include <stdlib.h>

#include <cmath>
#include <cstdio>
#include <memory>

#include "absl/strings/str_format.h"
#include "client/client.h"
#include "tools/commands.h"
#include "tools/local_cluster.h"
#include "tools/prom_text.h"
#include "worker/logreg_trainer.h"
#include "worker/lr_kernels.h"
#include "worker/synthetic.h"

namespace tessera {
namespace {

std::string Si(double v) {
  if (v >= 1e9) return absl::StrFormat("%.2fG", v / 1e9);
  if (v >= 1e6) return absl::StrFormat("%.2fM", v / 1e6);
  if (v >= 1e3) return absl::StrFormat("%.1fk", v / 1e3);
  return absl::StrFormat("%.0f", v);
}

void PrintServerMetrics(const LocalCluster& cluster, const std::string& table) {
  std::printf("\nserver metrics (scraped from each /metrics endpoint):\n");
  for (size_t i = 0; i < cluster.metrics_ports().size(); ++i) {
    absl::StatusOr<std::string> text = HttpGet(cluster.metrics_ports()[i], "/metrics");
    if (!text.ok()) {
      std::printf("  server %zu: cannot scrape: %s\n", i, text.status().ToString().c_str());
      continue;
    }
    const std::vector<PromSample> s = ParsePromText(*text);
    auto requests = [&](const char* method) {
      return SumSamples(s, "tessera_server_requests_total", {{"method", method}});
    };
    const double errors = SumSamples(s, "tessera_server_requests_total") -
                          SumSamples(s, "tessera_server_requests_total", {{"code", "OK"}});
    const double pull_count =
        SumSamples(s, "tessera_server_request_duration_seconds_count", {{"method", "PullSparse"}});
    const double pull_sum =
        SumSamples(s, "tessera_server_request_duration_seconds_sum", {{"method", "PullSparse"}});
    std::printf(
        "  server %zu (127.0.0.1:%d/metrics): %s pulls, %s pushes, %.0f errors; keys pulled %s, "
        "pushed %s; bytes in %s, out %s; mean pull %.0f us; rows of '%s': %.0f\n",
        i, cluster.metrics_ports()[i], Si(requests("PullSparse")).c_str(),
        Si(requests("PushSparse")).c_str(), errors,
        Si(SumSamples(s, "tessera_server_keys_total", {{"method", "PullSparse"}})).c_str(),
        Si(SumSamples(s, "tessera_server_keys_total", {{"method", "PushSparse"}})).c_str(),
        Si(SumSamples(s, "tessera_server_received_bytes_total")).c_str(),
        Si(SumSamples(s, "tessera_server_sent_bytes_total")).c_str(),
        pull_count > 0 ? 1e6 * pull_sum / pull_count : 0.0, table.c_str(),
        SumSamples(s, "tessera_table_rows", {{"table", table}}));
  }
}

}  // namespace

int RunLocal(const LocalCommandOptions& o) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
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

  std::string log_dir = o.log_dir;
  if (log_dir.empty()) {
    char tmpl[] = "/tmp/tessera-local-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) {
      std::perror("tessera local: mkdtemp");
      return 1;
    }
    log_dir = tmpl;
  }
  if (o.replicas < 1 || o.replicas > 3 || o.num_servers < 1) {
    std::fprintf(stderr, "tessera local: --replicas must be 1, 2 or 3 and --servers >= 1\n");
    return 2;
  }
  LocalClusterOptions co;
  co.server_binary = LocalCluster::DefaultServerBinary();
  co.num_servers = static_cast<uint32_t>(o.num_servers * o.replicas);
  co.log_dir = log_dir;
  if (o.replicas > 1) {
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
  if (!cluster.ok()) {
    std::fprintf(stderr, "tessera local: %s\n", cluster.status().ToString().c_str());
    return 1;
  }
  if (o.replicas > 1) {
    std::printf("  coordinator: grpc %s, metrics http://127.0.0.1:%d/metrics\n",
                (*cluster)->coordinator_address().c_str(), (*cluster)->coordinator_metrics_port());
  }
  for (size_t i = 0; i < (*cluster)->addresses().size(); ++i) {
    std::printf("  server %zu: grpc %s, metrics http://127.0.0.1:%d/metrics\n", i,
                (*cluster)->addresses()[i].c_str(), (*cluster)->metrics_ports()[i]);
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
  to.optimizer = o.optimizer;
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
  PrintServerMetrics(**cluster, to.table);
  if (o.replicas > 1) {
    absl::StatusOr<std::string> status =
        FormatClusterStatus((*cluster)->coordinator_address(), /*json=*/false);
    std::printf("\n%s", status.ok() ? status->c_str() : status.status().ToString().c_str());
  }

  client->reset();
  const absl::Status stopped = (*cluster)->Stop();
  std::printf("\nstopping servers: %s\n",
              stopped.ok() ? "all drained and exited cleanly" : stopped.ToString().c_str());
  if (!stopped.ok()) return 1;
  return close ? 0 : 1;
}

}  // namespace tessera
