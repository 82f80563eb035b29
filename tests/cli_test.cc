// End to end through the `tessera` binary: the demo trains to within 2 points of the planted
// model, and the benchmark prints one JSON object per workload.
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "testing/local_cluster.h"
#include "tests/test_cluster.h"
#include "worker/models/lr_kernels.h"

namespace {

using tessera::testing::RunCommand;

TEST_CASE("tessera local runs its default job: two worker processes train Fashion-MNIST",
          "[cli][worker]") {
  auto [code, out] = RunCommand(std::string(TESSERA_CLI_BINARY) + " local 2>&1");
  INFO(out);
  CHECK(code == 0);
  CHECK(out.find("starting 2 tessera-worker processes") != std::string::npos);
  CHECK(out.find("[worker 0]   step") != std::string::npos);  // progress lines
  CHECK(out.find("meets the 0.85 bar") != std::string::npos);
  CHECK(out.find("fmnist.w0") != std::string::npos);  // the cluster's tables at the end
  CHECK(out.find("checkpoint 4 (incremental on 3) at step 702") != std::string::npos);
  CHECK(out.find("last part written") != std::string::npos);  // and their checkpoints
  CHECK(out.find("all drained and exited cleanly") != std::string::npos);
}

TEST_CASE("tessera local --secure runs the CTR job asynchronously on a replicated cluster",
          "[cli][worker][replication][security]") {
  // Every daemon checks tokens: servers register and replicate with theirs, the workers train
  // and checkpoint with the job's, the status lists the tables with the admin's.
  auto [code, out] = RunCommand(std::string(TESSERA_CLI_BINARY) +
                                " local --secure --job=ctr --mode=async --replicas=2 --epochs=1 "
                                "2>&1");
  INFO(out);
  CHECK(code == 0);
  CHECK(out.find("--secure: mutual TLS with a throwaway CA") != std::string::npos);
  CHECK(out.find("unknown token") == std::string::npos);
  CHECK(out.find("2 shards x 2 replicas") != std::string::npos);
  CHECK(out.find("test AUC") != std::string::npos);
  CHECK(out.find("ctr.emb") != std::string::npos);
  CHECK(out.find("all drained and exited cleanly") != std::string::npos);
}

TEST_CASE("tessera local --prometheus starts a Prometheus that scrapes every daemon",
          "[cli][metrics][prometheus]") {
  auto [code, out] =
      RunCommand(std::string(TESSERA_CLI_BINARY) + " local --prometheus --job=lr --epochs=1 2>&1");
  INFO(out);
  CHECK(code == 0);
  CHECK(out.find("scrapes the coordinator, 2 servers and 2 workers") != std::string::npos);
  CHECK(out.find("3 of 3 server and coordinator targets up") != std::string::npos);
  CHECK(out.find(" 0 pushes answered OK") == std::string::npos);
}

TEST_CASE("tessera local trains to within 2 points of the planted model", "[cli]") {
  auto [code, out] =
      RunCommand(std::string(TESSERA_CLI_BINARY) +
                 " local --job=planted-lr --servers=3 --threads=3 --train_samples=600000 "
                 "--epochs=2");
  INFO(out);
  CHECK(code == 0);
  CHECK(out.find("within 2 points") != std::string::npos);
  CHECK(out.find("NOT within") == std::string::npos);
  CHECK(out.find("all drained and exited cleanly") != std::string::npos);
  CHECK(out.find("server 2 (127.0.0.1:") != std::string::npos);  // metrics of every server
}

TEST_CASE("tessera local --replicas=2 trains on a replicated cluster and shows its status",
          "[cli][replication]") {
  auto [code, out] = RunCommand(std::string(TESSERA_CLI_BINARY) +
                                " local --job=planted-lr --servers=2 --replicas=2 --threads=3 "
                                "--train_samples=600000 --epochs=2");
  INFO(out);
  CHECK(code == 0);
  CHECK(out.find("2 shards x 2 replicas") != std::string::npos);
  CHECK(out.find("within 2 points") != std::string::npos);
  CHECK(out.find("NOT within") == std::string::npos);
  CHECK(out.find("shard 0: ok") != std::string::npos);  // `tessera status` at the end
  CHECK(out.find("shard 1: ok") != std::string::npos);
  CHECK(out.find("all drained and exited cleanly") != std::string::npos);
}

TEST_CASE("tessera bench --suite=replication reports throughput ratios and failover pauses",
          "[cli][replication]") {
  auto [code, out] = RunCommand(std::string(TESSERA_CLI_BINARY) +
                                " bench --suite=replication --json --seconds=0.3 "
                                "--sparse_keys=5000 --dense_bytes=262144 --push_threads=2");
  INFO(out);
  REQUIRE(code == 0);
  for (const char* w : {"sparse_push_adagrad_r2_over_r1", "dense_push_r2_over_r1",
                        "failover_pause_primary_killed", "failover_pause_primary_stalled"}) {
    CHECK(out.find(absl::StrCat("\"workload\":\"", w, "\"")) != std::string::npos);
  }
}

TEST_CASE("tessera bench --json prints one object per workload", "[cli]") {
  auto [code, out] = RunCommand(std::string(TESSERA_CLI_BINARY) +
                                " bench --json --seconds=0.3 --sparse_keys=20000 --iperf3=false");
  INFO(out);
  REQUIRE(code == 0);
  std::vector<std::string> lines = absl::StrSplit(out, '\n', absl::SkipEmpty());
  REQUIRE(lines.size() == 3);
  for (const std::string& line : lines) {
    CHECK(line.front() == '{');
    CHECK(line.back() == '}');
    for (const char* key : {"\"workload\":", "\"value\":", "\"unit\":"}) {
      CHECK(line.find(key) != std::string::npos);
    }
  }
  CHECK(lines[0].find("dense_push_pull_4096KiB") != std::string::npos);
  CHECK(lines[1].find("sparse_pull_20000x16") != std::string::npos);
  CHECK(lines[2].find("sparse_push_adagrad_20000x16") != std::string::npos);
}

TEST_CASE("tessera bench --suite=checkpoint reports every figure beside dd", "[cli]") {
  auto [code, out] = RunCommand(std::string(TESSERA_CLI_BINARY) +
                                " bench --suite=checkpoint --table_mb=16 --json");
  INFO(out);
  REQUIRE(code == 0);
  for (const char* w :
       {"dd_direct_sequential_write", "push_max_latency_during_checkpoint", "checkpoint_full_write",
        "checkpoint_incremental_1pct", "checkpoint_restore_live", "checkpoint_restore_startup"}) {
    CHECK(out.find(absl::StrCat("\"workload\":\"", w, "\"")) != std::string::npos);
  }
  CHECK(out.find("\"ratio_to_dd\":") != std::string::npos);
  CHECK(out.find("\"ratio_to_full\":") != std::string::npos);
}

TEST_CASE("the Kubernetes Secrets script's files run a secured server that tessera health probes",
          "[cli][security]") {
  char dir[] = "/tmp/tessera_cli_test_secrets_XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  auto [made, out] = RunCommand(
      absl::StrCat(TESSERA_SOURCE_DIR, "/deploy/k8s/make-secrets.sh --out ", dir, " 2>&1"));
  INFO(out);
  REQUIRE(made == 0);
  const std::string d = dir;
  tessera::LocalClusterOptions o;
  o.server_binary = TESSERA_SERVER_BINARY;
  o.num_servers = 1;
  o.tls_cert_file = d + "/node.pem";
  o.tls_key_file = d + "/node.key";
  o.tls_ca_file = d + "/ca.pem";
  o.auth_token_file = d + "/tokens";
  absl::StatusOr<std::unique_ptr<tessera::LocalCluster>> cluster = tessera::LocalCluster::Start(o);
  INFO(cluster.status().ToString());
  REQUIRE(cluster.ok());
  const std::string health =
      absl::StrCat(TESSERA_CLI_BINARY, " health --address=", (*cluster)->addresses()[0]);
  const std::string tls = absl::StrCat(" --tls_ca_file=", d, "/ca.pem --tls_cert_file=", d,
                                       "/node.pem --tls_key_file=", d, "/node.key");
  auto [ok, serving] = RunCommand(health + tls + " 2>&1");
  INFO(serving);
  CHECK(ok == 0);
  CHECK(serving.find("SERVING") != std::string::npos);
  auto [plain, refused] = RunCommand(health + " 2>&1");  // no TLS: cannot even ask
  CHECK(plain == 1);
  // The job's token (admin and worker) creates a table through the CLI's bench connection.
  auto [benched, bench_out] = RunCommand(absl::StrCat(
      TESSERA_CLI_BINARY, " bench --connect=", (*cluster)->addresses()[0], tls,
      " --auth_token_file=", d, "/tokens --iperf3=false --seconds=0.2 --workloads=pull 2>&1"));
  INFO(bench_out);
  CHECK(benched == 0);
}

TEST_CASE("tessera rejects unknown commands and bad flags clearly", "[cli]") {
  auto [code, out] = RunCommand(std::string(TESSERA_CLI_BINARY) + " frobnicate 2>&1");
  CHECK(code == 2);
  CHECK(out.find("unknown command 'frobnicate'") != std::string::npos);
  auto [code2, out2] =
      RunCommand(std::string(TESSERA_CLI_BINARY) + " local --optimizer=rmsprop 2>&1");
  CHECK(code2 == 2);
  CHECK(out2.find("unknown optimizer 'rmsprop'") != std::string::npos);
  auto [code3, out3] = RunCommand(std::string(TESSERA_CLI_BINARY) + " local --job=mnist 2>&1");
  CHECK(code3 == 2);
  CHECK(out3.find("--job must be fmnist, ctr, lr, planted-lr or a job config file") !=
        std::string::npos);
  if (tessera::CudaDeviceCount() == 0) {  // (where there is a GPU, --device=gpu is fine)
    auto [code5, out5] =
        RunCommand(std::string(TESSERA_CLI_BINARY) + " local --job=lr --device=gpu 2>&1");
    CHECK(code5 == 2);
    CHECK(out5.find("--device=gpu but") != std::string::npos);
  }
  auto [code4, out4] = RunCommand(std::string(TESSERA_CLI_BINARY) + " local --mode=hogwild 2>&1");
  CHECK(code4 == 2);
  CHECK(out4.find("--mode must be bsp, ssp or async") != std::string::npos);
}

}  // namespace
