// The Tessera client library: what training code links to pull parameters and push updates.
//
//   ClientOptions options;
//   options.servers = {"127.0.0.1:7400", "127.0.0.1:7401"};
//   absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
//   TableConfig emb{.name = "emb", .kind = TableKind::kSparse, .dim = 16};
//   emb.optimizer.kind = OptimizerKind::kAdagrad;
//   (*client)->CreateTable(emb);
//   (*client)->PullSparse("emb", keys, absl::MakeSpan(weights));
//   Call push = (*client)->PushSparseAsync("emb", keys, grads);   // a handle (client/call.h)
//   ... push.Wait();
#ifndef TESSERA_CLIENT_CLIENT_H_
#define TESSERA_CLIENT_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "client/call.h"
#include "common/credentials.h"
#include "common/export.h"
#include "common/shard_map.h"
#include "common/table_config.h"

namespace tessera {

// Per-process client options. The defaults are tuned for loopback and LAN (docs/design.md,
// "Performance").
struct ClientOptions {
  // "host:port" of tessera-coordinator: the client fetches the shard map from it and follows
  // failovers (docs/replication.md). When set, `servers` and `shard_map_epoch` are ignored.
  std::string coordinator;
  // Without a coordinator: "host:port" of each shard's server, in shard order.
  std::vector<std::string> servers;
  // Without a coordinator: the static shard map's epoch; must match the servers' flags.
  uint64_t shard_map_epoch = 1;
  uint32_t num_vshards = kDefaultNumVshards;
  // Separate TCP connections per server; RPCs are spread over them. Default 4.
  int channels_per_server = 4;
  // Target bulk payload of one RPC; larger calls are split into chunks sent in parallel.
  // Default 512 KiB.
  size_t chunk_bytes = 512 * 1024;
  // Attempts per RPC when a server answers UNAVAILABLE (pushes keep their sequence number, so
  // a retry is never applied twice). Default 10.
  int max_attempts = 10;
  // Backoff between attempts: doubles from initial to max, with jitter. Defaults 5 ms, 1 s.
  int initial_backoff_ms = 5;
  int max_backoff_ms = 1000;
  // Deadline of one attempt. Default 60 s.
  int64_t rpc_timeout_ms = 60000;
  // With a coordinator: a call is retried (re-routed after a failover) for at least this long,
  // whatever max_attempts says; the backoff between attempts is then at most 250 ms, and one
  // attempt lasts at most coordinated_attempt_timeout_ms (a stalled primary is replaced within
  // a lease). Defaults 30 s and 5 s.
  int64_t retry_timeout_ms = 30000;
  int64_t coordinated_attempt_timeout_ms = 5000;
  // With a coordinator: how long Connect waits for every shard to have a primary. Default 30 s.
  int64_t connect_timeout_ms = 30000;
  // Bulk calls (pulls and pushes) travel on each server's data plane, a framed TCP connection
  // beside gRPC (docs/data_plane.md), whenever the server offers one and it is connected;
  // otherwise on gRPC. Same results either way. false: gRPC only. Default true.
  bool data_plane = true;
  // Data-plane connections per server; calls are spread over them and the server runs each
  // connection's calls on a thread of its own, so chunks of one call travel and run in
  // parallel. 0 (default): 16 / number of servers, between 1 and 8 (docs/data_plane.md).
  int data_connections_per_server = 0;
  // What this client presents to the daemons (docs/security.md): a token with the roles its
  // calls need (worker for pulls and pushes, admin for creating tables).
  Credentials credentials;
  // Identifies this client's pushes for exactly-once application. 0 (default) picks a random
  // id; reusing the id of a live client breaks exactly-once.
  uint64_t client_id = 0;
};

// A table as the whole cluster holds it.
struct TableStatus {
  TableConfig config;  // resolved: every default filled in
  uint64_t rows = 0;   // sparse rows / dense elements, summed over servers
  uint64_t bytes = 0;  // memory for weights and slots, summed over servers
  // Rows the table's lifecycle removed (by TTL, by capacity) and a dry run would have removed,
  // summed over the primaries (docs/embedding_lifecycle.md).
  uint64_t evicted_ttl = 0;
  uint64_t evicted_capacity = 0;
  uint64_t evicted_memory = 0;  // near a server's memory limit
  uint64_t would_evict = 0;
  // The disk tier (tables with one), summed over servers: rows moved to disk and back, and
  // rows and bytes on disk now (`rows` counts the RAM's).
  uint64_t demoted = 0;
  uint64_t promoted = 0;
  uint64_t disk_rows = 0;
  uint64_t disk_bytes = 0;
  // With DescribeTable(name, /*digests=*/true): each shard's primary's state digest of the
  // table, by shard (replicas that applied the same entries agree).
  std::vector<uint64_t> digests;
  // Seconds since the rows were last updated, quantiles 0.5, 0.9, 0.99 of a sample: the
  // oldest of the shards' (empty without a lifecycle).
  std::vector<uint64_t> update_age_quantiles_s;
};

// Options of one push.
struct PushOptions {
  // Non-zero: the servers add the gradients to step `accumulate_step`'s sums instead of
  // applying them; Client::ApplyStep applies the step (BSP aggregation, docs/worker.md).
  uint64_t accumulate_step = 0;
  // true: the values replace the weights (sparse rows are created as needed); the optimizer
  // does not run and its slots are kept. For loading weights. Not with accumulate_step.
  bool assign = false;
  // The worker's training step (its global step): sparse tables whose TTL counts steps
  // (LifecycleConfig::ttl_steps) keep it as the rows' last update, and need it (or
  // accumulate_step) on every push; other tables ignore it.
  uint64_t step = 0;
};

// Thread-safe: any number of threads may issue calls concurrently. Each call is split by shard
// (and into chunks of about chunk_bytes) and the pieces run in parallel; results land in the
// caller's order.
//
// Asynchronous calls borrow their buffers, except the owned-buffer overloads: keys, values and
// out must stay valid (and keys and values unchanged) until `done` runs or the returned Call
// completes. `done` (and a Call's OnDone continuation) runs on a gRPC thread: it must not block.
// The first dense call on a table fetches the table's layout with a blocking RPC on the calling
// thread. Errors carry the failing server's address; when one piece of a call fails, the
// call's other pieces still complete (pushes to other shards stay applied). With a
// coordinator, a piece for a shard that is LOST or RESTORING fails at once with UNAVAILABLE
// naming the shard and its state (docs/replication.md); the other shards serve on.
//
// The destructor waits for calls in flight to finish.
class TESSERA_EXPORT Client {
 public:
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ClientOptions& options);
  ~Client();

  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Table management, broadcast to every server (blocking). CreateTable succeeds when the table
  // exists with the same spec (so it is safe to retry) and returns the resolved config.
  absl::StatusOr<TableConfig> CreateTable(const TableConfig& config);
  absl::Status DropTable(absl::string_view name);
  // `digests`: also each shard's state digest of the table (reads every row: for tests and
  // audits, not for monitoring).
  absl::StatusOr<TableStatus> DescribeTable(absl::string_view name, bool digests = false);
  absl::StatusOr<std::vector<TableStatus>> ListTables();
  // The resolved config of table `name` (cached once known), asked of any shard that serves:
  // works while other shards are LOST. Errors: NOT_FOUND, UNAVAILABLE (no shard answered).
  absl::StatusOr<TableConfig> GetTableConfig(absl::string_view name);

  // Sparse tables. out/values hold keys.size() rows of the table's dim, in key order.
  // Pull: keys may repeat. Push: keys must be distinct (sum the gradients of a repeated key
  // first; a repeat fails the push with INVALID_ARGUMENT before anything is sent); values are
  // gradients (or new values for the `assign` optimizer).
  void PullSparseAsync(absl::string_view table, absl::Span<const uint64_t> keys,
                       absl::Span<float> out, StatusCallback done);
  void PushSparseAsync(absl::string_view table, absl::Span<const uint64_t> keys,
                       absl::Span<const float> values, StatusCallback done,
                       const PushOptions& options = {});

  // Dense tables: elements [offset, offset + size) of the tensor.
  void PullDenseAsync(absl::string_view table, uint64_t offset, absl::Span<float> out,
                      StatusCallback done);
  void PushDenseAsync(absl::string_view table, uint64_t offset, absl::Span<const float> values,
                      StatusCallback done, const PushOptions& options = {});

  // The same calls returning a handle (client/call.h) instead of taking a callback; they
  // borrow keys, values and out the same way: wait for the Call before reusing or freeing them.
  Call PullSparseAsync(absl::string_view table, absl::Span<const uint64_t> keys,
                       absl::Span<float> out);
  Call PushSparseAsync(absl::string_view table, absl::Span<const uint64_t> keys,
                       absl::Span<const float> values, const PushOptions& options = {});
  Call PullDenseAsync(absl::string_view table, uint64_t offset, absl::Span<float> out);
  Call PushDenseAsync(absl::string_view table, uint64_t offset, absl::Span<const float> values,
                      const PushOptions& options = {});

  // Owned buffers: the call keeps the keys and values it is given (moved in) and the rows it
  // pulls until it completes, so nothing of the caller's needs to outlive it. A pull's rows
  // come back through Result::Take(). The sparse pull learns the table's dim with
  // GetTableConfig (a blocking RPC the first time per table); the dense pull checks the range
  // against the table before it allocates.
  Result<std::vector<float>> PullSparseAsync(absl::string_view table, std::vector<uint64_t> keys);
  Result<std::vector<float>> PullDenseAsync(absl::string_view table, uint64_t offset, size_t size);
  Call PushSparseAsync(absl::string_view table, std::vector<uint64_t>&& keys,
                       std::vector<float>&& values, const PushOptions& options = {});
  Call PushDenseAsync(absl::string_view table, uint64_t offset, std::vector<float>&& values,
                      const PushOptions& options = {});
  // A push that would borrow one temporary and own the other is refused at compile time:
  // move both in, or keep both alive and pass spans.
  Call PushSparseAsync(absl::string_view table, absl::Span<const uint64_t> keys,
                       std::vector<float>&& values, const PushOptions& options = {}) = delete;
  Call PushSparseAsync(absl::string_view table, std::vector<uint64_t>&& keys,
                       absl::Span<const float> values, const PushOptions& options = {}) = delete;

  // Blocking versions of the calls above.
  absl::Status PullSparse(absl::string_view table, absl::Span<const uint64_t> keys,
                          absl::Span<float> out);
  absl::Status PushSparse(absl::string_view table, absl::Span<const uint64_t> keys,
                          absl::Span<const float> values, const PushOptions& options = {});
  absl::Status PullDense(absl::string_view table, uint64_t offset, absl::Span<float> out);
  absl::Status PushDense(absl::string_view table, uint64_t offset, absl::Span<const float> values,
                         const PushOptions& options = {});

  // BSP: applies the gradients accumulated for `step` on every shard, each row or block once
  // with sum x scale (e.g. 1 / workers). Retried like pushes; a step already applied is fine.
  absl::Status ApplyStep(absl::string_view table, uint64_t step, float scale);

  // Removes the rows of `keys` from a sparse table on every replica (docs/embedding_lifecycle.md):
  // each is afterwards as if never seen, and absent from the next checkpoint. Keys without a
  // row are skipped; returns the rows removed. Needs the admin role. Safe to retry.
  absl::StatusOr<uint64_t> RemoveRows(absl::string_view table, absl::Span<const uint64_t> keys);
  // Moves the rows of `keys` of a sparse table with a disk tier to disk on every replica (as
  // its policy does; a push brings one back): returns the rows moved. Needs the admin role.
  absl::StatusOr<uint64_t> DemoteRows(absl::string_view table, absl::Span<const uint64_t> keys);

  uint64_t client_id() const;
  const ShardMap& shard_map() const;

  // Pushes acknowledged as duplicates by a server (a retry of a push that had been applied).
  uint64_t duplicate_acks() const;
  // RPC attempts retried after UNAVAILABLE.
  uint64_t retries() const;

  // Implementation detail (client/internal/client_impl.h), named here so that the internal
  // RPC machinery can reach it; not part of the API.
  struct Impl;

 private:
  explicit Client(std::unique_ptr<Impl> impl);
  // RemoveRows with a v1::RemoveReason.
  absl::StatusOr<uint64_t> RemoveRowsFor(absl::string_view table, absl::Span<const uint64_t> keys,
                                         int reason);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera

#endif  // TESSERA_CLIENT_CLIENT_H_
