// tessera-worker: runs one worker of a training job described in a config file (a
// tessera.v1.JobConfig in protobuf text format, proto/job.proto; docs/worker.md).
//
//   tessera-worker --config=job.textproto --coordinator=host:port --worker=i --num_workers=n
//
// Prints a progress line every second (step, samples/s, loss, time split, staleness) and, on
// worker 0, the test accuracy at the end; serves /metrics. Exit codes: 0 done, 1 the job failed
// (the message says why, e.g. which worker died), 2 bad flags or config. The work is
// worker/worker.h's Worker.
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "common/auth.h"
#include "common/logging.h"
#include "common/process_setup.h"
#include "worker/worker.h"

ABSL_FLAG(std::string, config, "", "The job: a tessera.v1.JobConfig in text format. Required.");
ABSL_FLAG(std::string, coordinator, "", "host:port of tessera-coordinator. Required.");
ABSL_FLAG(uint32_t, worker, 0, "This worker's index in [0, num_workers).");
ABSL_FLAG(uint32_t, num_workers, 1, "Workers in the job.");
ABSL_FLAG(std::string, metrics_address, "127.0.0.1", "Address of the /metrics endpoint.");
ABSL_FLAG(int, metrics_port, 0, "Port of /metrics; 0 picks a free one, -1 disables.");
ABSL_FLAG(int, health_port, -1,
          "Port of a gRPC health service (tessera.v1.Worker: SERVING while the worker trains); "
          "0 picks a free one (printed), -1: none.");
ABSL_FLAG(double, report_every_s, 1.0, "Seconds between progress lines.");
ABSL_FLAG(std::string, tls_ca_file, "",
          "TLS (docs/security.md): verify the daemons with this CA; with --tls_cert_file and "
          "--tls_key_file also present that certificate (mutual TLS) and serve --health_port "
          "over TLS with it. Empty: plaintext.");
ABSL_FLAG(std::string, tls_cert_file, "", "This worker's certificate (chain), PEM.");
ABSL_FLAG(std::string, tls_key_file, "", "Its private key, PEM.");
ABSL_FLAG(bool, metrics_tls, false,
          "Serve /metrics over HTTPS with --tls_cert_file and --tls_key_file (docs/security.md).");
ABSL_FLAG(std::string, metrics_basic_auth_file, "",
          "/metrics requires HTTP basic authentication: lines 'USER PASSWORD'. Empty: none.");
ABSL_FLAG(std::string, auth_token_file, "",
          "The token to present (docs/security.md): a file with the token alone, or the "
          "daemons' 'ROLE TOKEN' file (the first token with the admin and worker roles, else "
          "the first worker token). Empty: none.");

int main(int argc, char** argv) {
  tessera::SetUpProcess();
  absl::SetProgramUsageMessage("tessera-worker: one worker of a Tessera training job");
  absl::ParseCommandLine(argc, argv);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  tessera::Credentials credentials;
  credentials.tls_ca_file = absl::GetFlag(FLAGS_tls_ca_file);
  credentials.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  credentials.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  if (const std::string path = absl::GetFlag(FLAGS_auth_token_file); !path.empty()) {
    absl::StatusOr<std::string> token =
        tessera::ReadClientToken(path, tessera::kRoleAdmin | tessera::kRoleWorker);
    if (!token.ok()) token = tessera::ReadClientToken(path, tessera::kRoleWorker);
    if (!token.ok()) {
      std::fprintf(stderr, "tessera-worker: %s\n", token.status().ToString().c_str());
      return 2;
    }
    credentials.auth_token = *token;
  }
  const tessera::WorkerOptions options{
      .config_path = absl::GetFlag(FLAGS_config),
      .coordinator = absl::GetFlag(FLAGS_coordinator),
      .worker = absl::GetFlag(FLAGS_worker),
      .num_workers = absl::GetFlag(FLAGS_num_workers),
      .metrics_address = absl::GetFlag(FLAGS_metrics_address),
      .metrics_port = absl::GetFlag(FLAGS_metrics_port),
      .health_port = absl::GetFlag(FLAGS_health_port),
      .report_every_s = absl::GetFlag(FLAGS_report_every_s),
      .metrics_security = {absl::GetFlag(FLAGS_metrics_tls) ? credentials.tls_cert_file : "",
                           absl::GetFlag(FLAGS_metrics_tls) ? credentials.tls_key_file : "",
                           absl::GetFlag(FLAGS_metrics_basic_auth_file)},
      .credentials = credentials,
  };
  tessera::SetLogTag(absl::StrFormat("worker/%u", options.worker));
  absl::StatusOr<std::unique_ptr<tessera::Worker>> worker = tessera::Worker::Create(options);
  if (!worker.ok()) {
    std::fprintf(stderr, "tessera-worker: %s\n", worker.status().ToString().c_str());
    return 2;
  }
  if (absl::Status s = (*worker)->Run(); !s.ok()) {
    std::fprintf(stderr, "tessera-worker: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
