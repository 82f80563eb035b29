// tessera-serving: a read-only replica of the trainers' tables at versions, for inference
// (docs/online_serving.md).
//
// Prints one line "TESSERA_READY port=<grpc> metrics_port=<metrics>" to --ready_fd (when set)
// once both endpoints listen. SIGTERM or SIGINT stops it; SIGHUP re-reads tokens and TLS files.
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_split.h"
#include "common/logging.h"
#include "common/process_setup.h"
#include "serving/serving_server.h"

ABSL_FLAG(std::string, address, "127.0.0.1", "Address to serve gRPC on.");
ABSL_FLAG(int, port, 0, "gRPC port; 0 picks a free one.");
ABSL_FLAG(std::string, metrics_address, "127.0.0.1", "Address of the /metrics endpoint.");
ABSL_FLAG(int, metrics_port, 0, "Port of the /metrics endpoint; 0 picks a free one, -1 disables.");
ABSL_FLAG(std::string, checkpoint_dir, "",
          "Source: the trainers' checkpoint directory; every complete checkpoint is a version "
          "(a root relay). Exactly one of --checkpoint_dir and --upstream.");
ABSL_FLAG(int, poll_ms, 1000, "With --checkpoint_dir: how often to look for a new checkpoint.");
ABSL_FLAG(std::string, upstream, "",
          "Source: serving replicas to subscribe to, host:port[,host:port...], tried in turn.");
ABSL_FLAG(int, upstream_timeout_ms, 5000,
          "With --upstream: a stream silent this long (no version, no heartbeat) is dropped and "
          "the next upstream dialled.");
ABSL_FLAG(uint32_t, keep_versions, 3,
          "Versions whose changes are kept: lookups at a version, rollback and relaying reach "
          "this far back.");
ABSL_FLAG(int, apply_nice, 10,
          "Nice value of the thread that reads and applies versions: on a busy replica lookups "
          "run first and versions wait (0: the same priority).");
ABSL_FLAG(uint64_t, max_memory_bytes, 0,
          "Most bytes the tables (two copies) and the kept changes may hold; a version that "
          "would not fit is refused (the replica stays at its version). 0: no limit.");
ABSL_FLAG(int, max_request_bytes, 64 << 20, "Largest request message accepted.");
ABSL_FLAG(uint64_t, max_response_bytes, uint64_t{64} << 20,
          "Largest lookup answer (keys x dim x 4 bytes, or a dense table's size x 4): a lookup "
          "over it is RESOURCE_EXHAUSTED before anything is allocated.");
ABSL_FLAG(std::string, tls_cert_file, "",
          "TLS (docs/security.md): this daemon's certificate (chain), PEM; with --tls_key_file.");
ABSL_FLAG(std::string, tls_key_file, "", "TLS: this daemon's private key, PEM.");
ABSL_FLAG(std::string, tls_ca_file, "",
          "TLS: the CA whose certificates peers must present (mutual TLS); upstreams are "
          "verified with it.");
ABSL_FLAG(bool, metrics_tls, false, "Serve /metrics over HTTPS with the TLS files.");
ABSL_FLAG(std::string, metrics_basic_auth_file, "",
          "/metrics requires HTTP basic authentication: lines 'USER PASSWORD'.");
ABSL_FLAG(std::string, auth_token_file, "",
          "Tokens and their roles, 'ROLE TOKEN' per line (docs/security.md): lookups need "
          "reader or worker, Subscribe server or reader, rollback admin; this replica presents "
          "its first 'server' token upstream. Empty: no authentication.");
ABSL_FLAG(int, ready_fd, -1, "File descriptor to write the ready line to, then close.");

int main(int argc, char** argv) {
  tessera::SetUpProcess();
  absl::SetProgramUsageMessage("tessera-serving: a read-only serving replica of Tessera tables");
  absl::ParseCommandLine(argc, argv);
  tessera::BlockStopSignals();
  tessera::SetLogTag("serving");

  tessera::serving::ServingServerOptions o;
  o.address = absl::GetFlag(FLAGS_address);
  o.port = absl::GetFlag(FLAGS_port);
  o.metrics_address = absl::GetFlag(FLAGS_metrics_address);
  o.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  o.checkpoint_dir = absl::GetFlag(FLAGS_checkpoint_dir);
  o.poll_ms = absl::GetFlag(FLAGS_poll_ms);
  for (absl::string_view a :
       absl::StrSplit(absl::GetFlag(FLAGS_upstream), ',', absl::SkipWhitespace())) {
    o.upstream.emplace_back(a);
  }
  o.upstream_timeout_ms = absl::GetFlag(FLAGS_upstream_timeout_ms);
  o.keep_versions = absl::GetFlag(FLAGS_keep_versions);
  o.apply_nice = absl::GetFlag(FLAGS_apply_nice);
  o.max_memory_bytes = absl::GetFlag(FLAGS_max_memory_bytes);
  o.max_request_bytes = absl::GetFlag(FLAGS_max_request_bytes);
  o.max_response_bytes = absl::GetFlag(FLAGS_max_response_bytes);
  o.tls = {absl::GetFlag(FLAGS_tls_cert_file), absl::GetFlag(FLAGS_tls_key_file),
           absl::GetFlag(FLAGS_tls_ca_file)};
  if (absl::GetFlag(FLAGS_metrics_tls)) {
    o.metrics_security.tls_cert_file = o.tls.cert_file;
    o.metrics_security.tls_key_file = o.tls.key_file;
  }
  o.metrics_security.basic_auth_file = absl::GetFlag(FLAGS_metrics_basic_auth_file);
  o.auth_token_file = absl::GetFlag(FLAGS_auth_token_file);

  auto server = tessera::serving::ServingServer::Start(o);
  if (!server.ok()) {
    tessera::LogError("cannot start: %s", server.status().ToString());
    return 1;
  }
  tessera::WriteReadyLine(absl::GetFlag(FLAGS_ready_fd), (*server)->port(),
                          (*server)->metrics_port());
  tessera::LogInfo("received %s; stopping",
                   tessera::WaitForStopSignal([&] { return (*server)->ReloadCredentials(); }));
  (*server)->Shutdown();
  server->reset();
  return 0;
}
