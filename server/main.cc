// tessera-server: holds shards of tables, applies optimizers, serves /metrics.
//
// Prints one line "TESSERA_READY port=<grpc> metrics_port=<metrics>" to --ready_fd (when set)
// once both endpoints listen. SIGTERM or SIGINT drains in-flight requests and exits 0.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "common/process_setup.h"
#include "server/server.h"

ABSL_FLAG(std::string, address, "127.0.0.1", "Address to serve gRPC on.");
ABSL_FLAG(int, port, 0, "gRPC port; 0 picks a free one.");
ABSL_FLAG(std::string, metrics_address, "127.0.0.1", "Address of the /metrics endpoint.");
ABSL_FLAG(int, metrics_port, 0, "Port of the /metrics endpoint; 0 picks a free one, -1 disables.");
ABSL_FLAG(int, data_port, 0,
          "Port of the data plane (bulk pulls and pushes on framed TCP beside gRPC, "
          "docs/data_plane.md), on --address; 0 picks a free one, -1 disables it.");
ABSL_FLAG(std::string, tls_cert_file, "",
          "TLS (docs/security.md): this daemon's certificate (chain), PEM; with --tls_key_file. "
          "Re-read on SIGHUP. Empty: plaintext.");
ABSL_FLAG(std::string, tls_key_file, "", "TLS: this daemon's private key, PEM.");
ABSL_FLAG(std::string, tls_ca_file, "",
          "TLS: the CA whose certificates peers must present (mutual TLS); a server also "
          "verifies its coordinator and backups with it.");
ABSL_FLAG(bool, metrics_tls, false,
          "Serve /metrics over HTTPS with --tls_cert_file and --tls_key_file (docs/security.md).");
ABSL_FLAG(std::string, metrics_basic_auth_file, "",
          "/metrics requires HTTP basic authentication: lines 'USER PASSWORD'. Empty: none.");
ABSL_FLAG(int, max_calls_in_flight_per_token, 16384,
          "Data calls (pulls, pushes, table calls; gRPC and the data plane) in flight at once "
          "per token; more are refused RESOURCE_EXHAUSTED with a retry hint (docs/security.md). "
          "0: no limit.");
ABSL_FLAG(double, max_calls_per_second_per_token, 0,
          "Data calls per second per token (bursts of one second's worth); 0: no limit.");
ABSL_FLAG(int, max_calls_in_flight_per_connection, 1024,
          "Data calls in flight at once per connection; 0: no limit.");
ABSL_FLAG(double, max_calls_per_second_per_connection, 0,
          "Data calls per second per connection; 0: no limit.");
ABSL_FLAG(std::string, auth_token_file, "",
          "Tokens and their roles, 'ROLE TOKEN' per line (docs/security.md); every call then "
          "needs one, and this server presents its first 'server' token to its peers. Re-read "
          "on SIGHUP. Empty: no authentication.");
ABSL_FLAG(int, max_data_connections, 1024,
          "Data-plane connections open at once (two threads each); more are refused and their "
          "clients use gRPC.");
ABSL_FLAG(uint32_t, shard_index, 0, "This server's shard, in [0, num_shards).");
ABSL_FLAG(uint32_t, num_shards, 1, "Number of shards (servers) in the cluster.");
ABSL_FLAG(uint32_t, num_vshards, 1024, "Number of virtual shards; the same on every server.");
ABSL_FLAG(uint64_t, shard_map_epoch, 1, "Epoch of the shard map.");
ABSL_FLAG(std::string, coordinator, "",
          "host:port of tessera-coordinator. With it the server joins a replicated cluster and "
          "the coordinator places it; --shard_index, --num_shards and --shard_map_epoch are "
          "then ignored.");
ABSL_FLAG(std::string, advertise_address, "",
          "How clients and peers reach this server (its identity); default address:port.");
ABSL_FLAG(int, heartbeat_ms, 250, "With --coordinator: heartbeat interval.");
ABSL_FLAG(int, max_request_bytes, 256 << 20, "Largest request message accepted.");
ABSL_FLAG(uint64_t, max_keys_per_request, uint64_t{1} << 20, "Most keys in one sparse request.");
ABSL_FLAG(uint64_t, max_dense_elems_per_request, uint64_t{16} << 20,
          "Most elements in one dense request.");
ABSL_FLAG(uint64_t, max_table_bytes, uint64_t{16} << 30,
          "Most bytes one table (rows or blocks, slots, bookkeeping) may hold on this server.");
ABSL_FLAG(uint64_t, max_dense_table_bytes, 0,
          "Older name of --max_table_bytes (when set, it is the limit).");
ABSL_FLAG(uint64_t, max_memory_bytes, 0,
          "Most bytes this server holds for tables, requests and responses; 0: 80% of the "
          "machine's physical memory.");
ABSL_FLAG(uint64_t, max_response_bytes, uint64_t{256} << 20, "Largest pull response.");
ABSL_FLAG(uint32_t, apply_threads, 0,
          "Threads that apply changes (per vshard, in parallel); 0: one per core, at most 16.");
ABSL_FLAG(int64_t, dedup_client_ttl_s, 3600,
          "Forget the push sequence state of a client silent for this long.");
ABSL_FLAG(int64_t, drain_timeout_ms, 10000, "On SIGTERM, how long in-flight requests may run.");
ABSL_FLAG(std::string, checkpoint_dir, "",
          "Checkpoint directory shared by all servers and `tessera checkpoint`; empty: none.");
ABSL_FLAG(std::string, tier_dir, "",
          "The disk tier's RocksDB directory (sparse tables with lifecycle.tier_*; cleared at "
          "start: not durable); empty: a private directory under $TMPDIR, removed at exit.");
ABSL_FLAG(uint64_t, tier_cache_bytes, uint64_t{32} << 20, "The disk tier's block cache.");
ABSL_FLAG(uint32_t, checkpoint_write_threads, 4,
          "Threads (and files) per table when writing or restoring a checkpoint.");
ABSL_FLAG(bool, restore, false, "Before serving, restore the newest complete checkpoint.");
ABSL_FLAG(uint64_t, restore_checkpoint, 0,
          "Before serving, restore this checkpoint (implies --restore).");
ABSL_FLAG(uint32_t, testing_crash_in_checkpoint, 0,
          "TESTING ONLY: SIGKILL this server at a point of its next checkpoint write (1-3).");
ABSL_FLAG(int, ready_fd, -1, "File descriptor to write the ready line to, then close.");
ABSL_FLAG(uint32_t, testing_fail_push_after_apply_every, 0,
          "TESTING ONLY: answer every N-th applied push UNAVAILABLE, as if the reply were lost.");
ABSL_FLAG(uint32_t, testing_push_delay_ms, 0,
          "TESTING ONLY: hold every push this long before applying it.");

int main(int argc, char** argv) {
  tessera::SetUpProcess();
  absl::SetProgramUsageMessage("tessera-server: a Tessera parameter server shard");
  absl::ParseCommandLine(argc, argv);

  tessera::BlockStopSignals();  // before any thread starts

  tessera::ServerOptions options;
  options.address = absl::GetFlag(FLAGS_address);
  options.port = absl::GetFlag(FLAGS_port);
  options.metrics_address = absl::GetFlag(FLAGS_metrics_address);
  options.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  options.max_request_bytes = absl::GetFlag(FLAGS_max_request_bytes);
  options.data_port = absl::GetFlag(FLAGS_data_port);
  options.auth_token_file = absl::GetFlag(FLAGS_auth_token_file);
  options.call_limits = {
      .max_in_flight_per_token = absl::GetFlag(FLAGS_max_calls_in_flight_per_token),
      .max_per_second_per_token = absl::GetFlag(FLAGS_max_calls_per_second_per_token),
      .max_in_flight_per_connection = absl::GetFlag(FLAGS_max_calls_in_flight_per_connection),
      .max_per_second_per_connection = absl::GetFlag(FLAGS_max_calls_per_second_per_connection)};
  options.tls = {absl::GetFlag(FLAGS_tls_cert_file), absl::GetFlag(FLAGS_tls_key_file),
                 absl::GetFlag(FLAGS_tls_ca_file)};
  if (absl::GetFlag(FLAGS_metrics_tls)) {
    options.metrics_security.tls_cert_file = options.tls.cert_file;
    options.metrics_security.tls_key_file = options.tls.key_file;
  }
  options.metrics_security.basic_auth_file = absl::GetFlag(FLAGS_metrics_basic_auth_file);
  options.max_data_connections = absl::GetFlag(FLAGS_max_data_connections);
  options.drain_timeout_ms = absl::GetFlag(FLAGS_drain_timeout_ms);
  options.coordinator = absl::GetFlag(FLAGS_coordinator);
  options.advertise_address = absl::GetFlag(FLAGS_advertise_address);
  options.heartbeat_ms = absl::GetFlag(FLAGS_heartbeat_ms);
  tessera::ServerCoreOptions& core = options.core;
  core.shard_index = absl::GetFlag(FLAGS_shard_index);
  core.num_shards = absl::GetFlag(FLAGS_num_shards);
  core.num_vshards = absl::GetFlag(FLAGS_num_vshards);
  core.shard_map_epoch = absl::GetFlag(FLAGS_shard_map_epoch);
  core.max_keys_per_request = absl::GetFlag(FLAGS_max_keys_per_request);
  core.max_dense_elems_per_request = absl::GetFlag(FLAGS_max_dense_elems_per_request);
  core.max_table_bytes = absl::GetFlag(FLAGS_max_dense_table_bytes) != 0
                             ? absl::GetFlag(FLAGS_max_dense_table_bytes)
                             : absl::GetFlag(FLAGS_max_table_bytes);
  core.max_memory_bytes = absl::GetFlag(FLAGS_max_memory_bytes);
  core.max_response_bytes = absl::GetFlag(FLAGS_max_response_bytes);
  core.apply_threads = absl::GetFlag(FLAGS_apply_threads);
  core.dedup_client_ttl_s = absl::GetFlag(FLAGS_dedup_client_ttl_s);
  core.testing_fail_push_after_apply_every =
      absl::GetFlag(FLAGS_testing_fail_push_after_apply_every);
  core.testing_push_delay_ms = absl::GetFlag(FLAGS_testing_push_delay_ms);
  core.testing_crash_in_checkpoint = absl::GetFlag(FLAGS_testing_crash_in_checkpoint);
  core.checkpoint_dir = absl::GetFlag(FLAGS_checkpoint_dir);
  core.tier_dir = absl::GetFlag(FLAGS_tier_dir);
  core.tier_cache_bytes = absl::GetFlag(FLAGS_tier_cache_bytes);
  core.checkpoint_write_threads = absl::GetFlag(FLAGS_checkpoint_write_threads);
  if (const uint64_t id = absl::GetFlag(FLAGS_restore_checkpoint); id != 0) {
    options.restore_checkpoint = static_cast<int64_t>(id);
  } else if (absl::GetFlag(FLAGS_restore)) {
    options.restore_checkpoint = 0;
  }
  tessera::SetLogTag(options.coordinator.empty() ? absl::StrFormat("server/%u", core.shard_index)
                                                 : std::string("server"));

  absl::StatusOr<std::unique_ptr<tessera::Server>> server = tessera::Server::Start(options);
  if (!server.ok()) {
    tessera::LogError("cannot start: %s", server.status().ToString());
    return 1;
  }
  if (!options.coordinator.empty()) {
    tessera::SetLogTag(absl::StrFormat("server:%d", (*server)->port()));
  }
  tessera::WriteReadyLine(absl::GetFlag(FLAGS_ready_fd), (*server)->port(),
                          (*server)->metrics_port());
  tessera::LogInfo("received %s; draining",
                   tessera::WaitForStopSignal([&] { return (*server)->ReloadCredentials(); }));
  (*server)->Shutdown();
  server->reset();
  return 0;
}
