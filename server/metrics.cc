#include "server/metrics.h"

#include <prometheus/metric_family.h>

#include <algorithm>

#include "absl/strings/str_format.h"
#include "server/replicator.h"
#include "server/server_core.h"

namespace tessera {
namespace {

const char* CodeName(grpc::StatusCode code) {
  static constexpr const char* kNames[] = {"OK",
                                           "CANCELLED",
                                           "UNKNOWN",
                                           "INVALID_ARGUMENT",
                                           "DEADLINE_EXCEEDED",
                                           "NOT_FOUND",
                                           "ALREADY_EXISTS",
                                           "PERMISSION_DENIED",
                                           "RESOURCE_EXHAUSTED",
                                           "FAILED_PRECONDITION",
                                           "ABORTED",
                                           "OUT_OF_RANGE",
                                           "UNIMPLEMENTED",
                                           "INTERNAL",
                                           "UNAVAILABLE",
                                           "DATA_LOSS",
                                           "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return i >= 0 && i < 17 ? kNames[i] : "UNKNOWN";
}

prometheus::ClientMetric GaugeValue(double v) {
  prometheus::ClientMetric m;
  m.gauge.value = v;
  return m;
}

}  // namespace

const char* MethodName(Method m) {
  static constexpr const char* kNames[kNumMethods] = {
      "CreateTable",       "DropTable", "DescribeTable", "ListTables",      "PullSparse",
      "PushSparse",        "PullDense", "PushDense",     "WriteCheckpoint", "GetCheckpointState",
      "RestoreCheckpoint", "ApplyStep", "RemoveRows"};
  return kNames[static_cast<int>(m)];
}

ServerMetrics::ServerMetrics(prometheus::Registry* registry) {
  requests_family_ = &prometheus::BuildCounter()
                          .Name("tessera_server_requests_total")
                          .Help("Requests handled, by method and gRPC status code.")
                          .Register(*registry);
  latency_family_ = &prometheus::BuildHistogram()
                         .Name("tessera_server_request_duration_seconds")
                         .Help("Time from request receipt to response, by method and code.")
                         .Register(*registry);
  auto& keys = prometheus::BuildCounter()
                   .Name("tessera_server_keys_total")
                   .Help("Sparse keys or dense elements moved by successful requests.")
                   .Register(*registry);
  auto& bytes_in = prometheus::BuildCounter()
                       .Name("tessera_server_received_bytes_total")
                       .Help("Bulk payload bytes (keys and values) received.")
                       .Register(*registry);
  auto& bytes_out = prometheus::BuildCounter()
                        .Name("tessera_server_sent_bytes_total")
                        .Help("Bulk payload bytes (values) sent.")
                        .Register(*registry);
  for (int m = 0; m < kNumMethods; ++m) {
    const std::string name = MethodName(static_cast<Method>(m));
    keys_[m] = &keys.Add({{"method", name}});
    bytes_in_[m] = &bytes_in.Add({{"method", name}});
    bytes_out_[m] = &bytes_out.Add({{"method", name}});
  }
  in_flight_ = &prometheus::BuildGauge()
                    .Name("tessera_server_requests_in_flight")
                    .Help("Requests being handled now.")
                    .Register(*registry)
                    .Add({});
}

ServerMetrics::Series* ServerMetrics::GetSeries(Method method, grpc::StatusCode code) {
  const int m = static_cast<int>(method);
  int c = static_cast<int>(code);
  if (c < 0 || c >= kNumCodes) c = static_cast<int>(grpc::StatusCode::UNKNOWN);
  Series* s = series_[m][c].load(std::memory_order_acquire);
  if (s != nullptr) return s;
  absl::MutexLock lock(&mu_);
  s = series_[m][c].load(std::memory_order_relaxed);
  if (s != nullptr) return s;
  const prometheus::Labels labels = {{"method", MethodName(method)},
                                     {"code", CodeName(static_cast<grpc::StatusCode>(c))}};
  // 50 us .. ~13 s in factors of 2.
  prometheus::Histogram::BucketBoundaries bounds;
  for (double b = 50e-6; b < 15; b *= 2) bounds.push_back(b);
  auto owned = std::make_unique<Series>(
      Series{&requests_family_->Add(labels), &latency_family_->Add(labels, std::move(bounds))});
  s = owned.get();
  owned_series_.push_back(std::move(owned));
  series_[m][c].store(s, std::memory_order_release);
  return s;
}

void ServerMetrics::Record(Method method, grpc::StatusCode code, double seconds, uint64_t keys,
                           uint64_t bytes_in, uint64_t bytes_out) {
  Series* s = GetSeries(method, code);
  s->requests->Increment();
  s->latency->Observe(seconds);
  const int m = static_cast<int>(method);
  if (code == grpc::StatusCode::OK && keys > 0) keys_[m]->Increment(static_cast<double>(keys));
  if (bytes_in > 0) bytes_in_[m]->Increment(static_cast<double>(bytes_in));
  if (bytes_out > 0) bytes_out_[m]->Increment(static_cast<double>(bytes_out));
}

std::vector<prometheus::MetricFamily> TableCollector::Collect() const {
  prometheus::MetricFamily rows{"tessera_table_rows",
                                "Rows (sparse) or elements (dense) held by this server, per table.",
                                prometheus::MetricType::Gauge,
                                {}};
  prometheus::MetricFamily bytes{
      "tessera_table_memory_bytes",
      "Memory for weights and optimizer slots held by this server, per table.",
      prometheus::MetricType::Gauge,
      {}};
  prometheus::MetricFamily tables{
      "tessera_tables", "Tables on this server.", prometheus::MetricType::Gauge, {}};
  prometheus::MetricFamily dups{"tessera_server_duplicate_pushes_total",
                                "Pushes acknowledged without being applied because their "
                                "(client_id, sequence) was applied before.",
                                prometheus::MetricType::Counter,
                                {}};
  const std::vector<TableStats> stats = core_->GetTableStats();
  for (const TableStats& t : stats) {
    const std::string kind(TableKindName(t.kind));
    prometheus::ClientMetric r = GaugeValue(static_cast<double>(t.rows));
    r.label = {{"table", t.name}, {"kind", kind}};
    rows.metric.push_back(std::move(r));
    prometheus::ClientMetric b = GaugeValue(static_cast<double>(t.bytes));
    b.label = {{"table", t.name}, {"kind", kind}};
    bytes.metric.push_back(std::move(b));
  }
  tables.metric.push_back(GaugeValue(static_cast<double>(stats.size())));
  prometheus::ClientMetric d;
  d.counter.value = static_cast<double>(core_->duplicate_pushes());
  dups.metric.push_back(std::move(d));
  std::vector<prometheus::MetricFamily> out = {std::move(rows), std::move(bytes), std::move(tables),
                                               std::move(dups)};
  const CheckpointStats c = core_->GetCheckpointStats();
  auto family = [&](const char* name, const char* help, prometheus::MetricType type,
                    std::vector<std::pair<prometheus::ClientMetric, prometheus::Labels>> values) {
    prometheus::MetricFamily f{name, help, type, {}};
    for (auto& [m, labels] : values) {
      for (const auto& [k, v] : labels) m.label.push_back({k, v});
      f.metric.push_back(std::move(m));
    }
    out.push_back(std::move(f));
  };
  auto counter = [](double v) {
    prometheus::ClientMetric m;
    m.counter.value = v;
    return m;
  };
  using prometheus::MetricType;
  family("tessera_checkpoints_total", "Checkpoint parts written by this server, by result.",
         MetricType::Counter,
         {{counter(static_cast<double>(c.succeeded)), {{"result", "ok"}}},
          {counter(static_cast<double>(c.failed)), {{"result", "error"}}}});
  family("tessera_checkpoint_written_bytes_total", "Bytes of checkpoint files written.",
         MetricType::Counter, {{counter(static_cast<double>(c.bytes_total)), {}}});
  family("tessera_checkpoint_last_duration_seconds",
         "Duration of the last successful checkpoint write on this server.", MetricType::Gauge,
         {{GaugeValue(c.last_seconds), {}}});
  family("tessera_checkpoint_last_cut_seconds",
         "How long the last checkpoint's cut held the update gate (the pause pushes saw).",
         MetricType::Gauge, {{GaugeValue(c.last_cut_seconds), {}}});
  family("tessera_checkpoint_last_bytes", "Bytes written by the last successful checkpoint.",
         MetricType::Gauge, {{GaugeValue(static_cast<double>(c.last_bytes)), {}}});
  family("tessera_checkpoint_last_rows", "Rows (and dense blocks) in the last checkpoint.",
         MetricType::Gauge, {{GaugeValue(static_cast<double>(c.last_rows)), {}}});
  family("tessera_checkpoint_last_success_timestamp_seconds",
         "Unix time of the last successful checkpoint write.", MetricType::Gauge,
         {{GaugeValue(c.last_success_unix_s), {}}});
  family("tessera_restores_total", "Checkpoint restores completed by this server.",
         MetricType::Counter, {{counter(static_cast<double>(c.restores)), {}}});
  family("tessera_restore_last_duration_seconds", "Duration of the last restore.",
         MetricType::Gauge, {{GaugeValue(c.last_restore_seconds), {}}});
  family("tessera_server_memory_bytes",
         "Bytes this server holds for tables, requests and responses, as reserved against "
         "--max_memory_bytes (docs/state_machine.md).",
         MetricType::Gauge, {{GaugeValue(static_cast<double>(core_->budget().used())), {}}});
  family("tessera_server_memory_limit_bytes", "--max_memory_bytes as resolved.", MetricType::Gauge,
         {{GaugeValue(static_cast<double>(core_->budget().limit())), {}}});
  // The embedding lifecycle (docs/embedding_lifecycle.md), per sparse table that has one.
  std::vector<std::pair<prometheus::ClientMetric, prometheus::Labels>> evicted, would, kept,
      admitted, not_admitted, sketch, demoted, promoted, tier_rows, tier_bytes;
  for (const TableStats& t : stats) {
    if (!t.lifecycle) continue;
    if (t.tier) {
      demoted.push_back({counter(static_cast<double>(t.demoted)), {{"table", t.name}}});
      promoted.push_back({counter(static_cast<double>(t.promoted)), {{"table", t.name}}});
      tier_rows.push_back(
          {GaugeValue(static_cast<double>(t.rows)), {{"table", t.name}, {"tier", "ram"}}});
      tier_rows.push_back(
          {GaugeValue(static_cast<double>(t.disk_rows)), {{"table", t.name}, {"tier", "disk"}}});
      tier_bytes.push_back(
          {GaugeValue(static_cast<double>(t.bytes)), {{"table", t.name}, {"tier", "ram"}}});
      tier_bytes.push_back(
          {GaugeValue(static_cast<double>(t.disk_bytes)), {{"table", t.name}, {"tier", "disk"}}});
    }
    evicted.push_back(
        {counter(static_cast<double>(t.evicted_ttl)), {{"table", t.name}, {"reason", "ttl"}}});
    evicted.push_back({counter(static_cast<double>(t.evicted_capacity)),
                       {{"table", t.name}, {"reason", "capacity"}}});
    evicted.push_back({counter(static_cast<double>(t.evicted_memory)),
                       {{"table", t.name}, {"reason", "memory"}}});
    would.push_back({counter(static_cast<double>(t.would_evict)), {{"table", t.name}}});
    kept.push_back({counter(static_cast<double>(t.kept)), {{"table", t.name}}});
    if (t.sketch_bytes == 0) continue;
    admitted.push_back({counter(static_cast<double>(t.admitted)), {{"table", t.name}}});
    not_admitted.push_back({counter(static_cast<double>(t.not_admitted)), {{"table", t.name}}});
    sketch.push_back({GaugeValue(static_cast<double>(t.sketch_bytes)), {{"table", t.name}}});
  }
  family("tessera_lifecycle_evicted_total",
         "Rows removed by a table's lifecycle policy on this server (every replica counts the "
         "removals it applies), by reason.",
         MetricType::Counter, std::move(evicted));
  family("tessera_lifecycle_would_evict_total",
         "Rows a table's lifecycle policy in dry-run mode would have removed (counted by the "
         "primary).",
         MetricType::Counter, std::move(would));
  family("tessera_lifecycle_kept_total",
         "Rows chosen for removal but updated before the removal was applied: kept.",
         MetricType::Counter, std::move(kept));
  family("tessera_lifecycle_admitted_total",
         "Rows created by a push that was their key's admission_min_count-th sighting.",
         MetricType::Counter, std::move(admitted));
  family("tessera_lifecycle_not_admitted_total",
         "Pushed keys without a row below their admission count: counted, gradient dropped.",
         MetricType::Counter, std::move(not_admitted));
  family("tessera_lifecycle_sketch_bytes", "Memory of a table's admission sketches here.",
         MetricType::Gauge, std::move(sketch));
  family("tessera_lifecycle_demoted_total",
         "Rows a table with a disk tier moved from RAM to disk here (every replica counts the "
         "demotions it applies).",
         MetricType::Counter, std::move(demoted));
  family("tessera_lifecycle_promoted_total",
         "Rows brought back from the disk tier to RAM by a push that named them.",
         MetricType::Counter, std::move(promoted));
  family("tessera_tier_rows", "Rows of a table with a disk tier, by tier (ram, disk).",
         MetricType::Gauge, std::move(tier_rows));
  family("tessera_tier_bytes",
         "Bytes of a table with a disk tier, by tier: the memory it holds, the rows on disk "
         "(their size; the store's files: tessera_tier_store_bytes).",
         MetricType::Gauge, std::move(tier_bytes));
  if (const std::shared_ptr<TierStore> tier = core_->tier(); tier != nullptr) {
    const TierStore::ReadStats r = tier->read_stats();
    prometheus::ClientMetric m;
    m.histogram.sample_count = r.count;
    m.histogram.sample_sum = r.sum_seconds;
    uint64_t cumulative = 0;
    for (size_t b = 0; b < r.buckets.size(); ++b) {
      cumulative += r.buckets[b];
      m.histogram.bucket.push_back({cumulative, b < TierStore::kReadBuckets.size()
                                                    ? TierStore::kReadBuckets[b]
                                                    : std::numeric_limits<double>::infinity()});
    }
    out.push_back({"tessera_tier_read_seconds",
                   "Reads of the disk tier (a pull or push of a demoted row, a removal of one; "
                   "misses of new keys included).",
                   MetricType::Histogram,
                   {std::move(m)}});
    family("tessera_tier_store_bytes", "Bytes of the disk tier's RocksDB files and memtables.",
           MetricType::Gauge, {{GaugeValue(static_cast<double>(tier->DiskBytes())), {}}});
  }
  return out;
}

std::vector<prometheus::MetricFamily> ReplicationCollector::Collect() const {
  const ReplicationStats r = replicator_->Stats();
  using prometheus::MetricType;
  std::vector<prometheus::MetricFamily> out;
  auto add = [&](const char* name, const char* help, MetricType type, double value,
                 prometheus::Labels labels = {}) {
    if (out.empty() || out.back().name != name) out.push_back({name, help, type, {}});
    prometheus::ClientMetric m;
    if (type == MetricType::Counter) {
      m.counter.value = value;
    } else {
      m.gauge.value = value;
    }
    for (const auto& [k, v] : labels) m.label.push_back({k, v});
    out.back().metric.push_back(std::move(m));
  };
  add("tessera_server_shard_map_epoch", "Epoch of the shard map this server acts on.",
      MetricType::Gauge, static_cast<double>(r.epoch));
  add("tessera_server_shard", "The shard this server is bound to (-1: none yet).",
      MetricType::Gauge, r.shard);
  for (const char* role : {"primary", "backup", "joining", "restoring", "none"}) {
    add("tessera_server_replica_role", "1 for this server's role in its shard.", MetricType::Gauge,
        r.role == role ? 1 : 0, {{"role", role}});
  }
  add("tessera_server_lsn", "Changes applied to this shard (its update order).", MetricType::Gauge,
      static_cast<double>(core_->lsn()));
  add("tessera_server_replica_failed",
      "1 while this backup is FAILED: it could not apply an entry as its primary did and waits "
      "for a snapshot (docs/state_machine.md).",
      MetricType::Gauge, r.failed ? 1 : 0);
  add("tessera_server_backup_failures_total",
      "Batches this primary's backups refused as FAILED (each is then re-synced by snapshot).",
      MetricType::Counter, static_cast<double>(r.backup_failures));
  for (const auto& b : r.backups) {
    add("tessera_replica_lag_updates",
        "Changes this primary applied that the backup has not acknowledged yet.", MetricType::Gauge,
        static_cast<double>(b.lag), {{"backup", b.address}});
  }
  for (const auto& b : r.backups) {
    add("tessera_replica_live", "1 when the backup counts for acknowledgements.", MetricType::Gauge,
        b.live ? 1 : 0, {{"backup", b.address}});
  }
  for (const auto& b : r.backups) {
    add("tessera_replica_catching_up", "1 while a snapshot is being sent to the backup.",
        MetricType::Gauge, b.catching_up ? 1 : 0, {{"backup", b.address}});
  }
  for (const auto& b : r.backups) {
    add("tessera_replica_snapshot_sent_bytes",
        "Bytes of the current (or last) catch-up snapshot sent to the backup.", MetricType::Gauge,
        static_cast<double>(b.snapshot_bytes_sent), {{"backup", b.address}});
  }
  add("tessera_server_snapshots_sent_total", "Catch-up snapshots this server sent as primary.",
      MetricType::Counter, static_cast<double>(r.snapshots_sent));
  add("tessera_server_snapshots_installed_total", "Catch-up snapshots this server installed.",
      MetricType::Counter, static_cast<double>(r.snapshots_installed));
  add("tessera_server_fenced_batches_total",
      "Replication batches refused because their sender was not this shard's primary.",
      MetricType::Counter, static_cast<double>(r.fenced_refusals));
  add("tessera_server_heartbeat_age_seconds",
      "Time since the coordinator last answered a heartbeat.", MetricType::Gauge,
      std::min(r.seconds_since_heartbeat, 1e9));
  return out;
}

}  // namespace tessera
