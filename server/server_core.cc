#include "server/server_core.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/bulk_codec.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/wire.h"
#include "proto/cluster.pb.h"
#include "proto/tessera.pb.h"
#include "server/apply_executors.h"
#include "server/dense_table.h"
#include "server/request_checks.h"
#include "server/sparse_table.h"
#include "storage/checkpoint_store.h"

namespace tessera {

namespace {

// 80% of the machine's physical memory.
uint64_t DefaultMemoryLimit() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page <= 0) return 0;
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) / 5 * 4;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ServerCore>> ServerCore::Create(const ServerCoreOptions& options) {
  auto core = std::unique_ptr<ServerCore>(new ServerCore(options));
  if (!options.coordinated) {
    TESSERA_RETURN_IF_ERROR(core->Bind(options.shard_index, options.num_shards));
  }
  if (!options.checkpoint_dir.empty()) {
    absl::StatusOr<std::unique_ptr<storage::CheckpointStore>> store =
        storage::CheckpointStore::Open(options.checkpoint_dir);
    if (!store.ok()) return store.status();
    core->store_ = std::move(*store);
  }
  if (options.lifecycle_interval_ms > 0) {
    core->lifecycle_thread_ = std::thread([c = core.get()] { c->LifecycleLoop(); });
  }
  return core;
}

ServerCore::ServerCore(const ServerCoreOptions& options)
    : options_(options),
      coordinated_(options.coordinated),
      epoch_(options.coordinated ? 0 : options.shard_map_epoch),
      serving_(!options.coordinated),
      dedup_(options.dedup_client_ttl_s * 1000),
      executors_(std::make_unique<ApplyExecutors>(
          options.apply_threads != 0 ? options.apply_threads
                                     : std::max(1u, std::thread::hardware_concurrency()))),
      budget_(options.max_memory_bytes != 0 ? options.max_memory_bytes : DefaultMemoryLimit()) {}

// The lifecycle task stops first (it sequences changes), then the executors: what they still
// apply refers to the tables.
ServerCore::~ServerCore() {
  if (lifecycle_thread_.joinable()) {
    {
      absl::MutexLock lock(&lifecycle_mu_);
      lifecycle_stop_ = true;
    }
    lifecycle_thread_.join();
  }
  executors_.reset();
}

int64_t ServerCore::NowMs() const {
  return options_.testing_clock_ms ? options_.testing_clock_ms() : absl::ToUnixMillis(absl::Now());
}

absl::Status ServerCore::Bind(uint32_t shard_index, uint32_t num_shards) {
  absl::StatusOr<ShardMap> map =
      ShardMap::Uniform(std::max<uint64_t>(1, shard_map_epoch()), num_shards, options_.num_vshards);
  if (!map.ok()) return map.status();
  if (shard_index >= num_shards) {
    return absl::InvalidArgumentError(
        absl::StrFormat("shard_index %u must be below num_shards %u", shard_index, num_shards));
  }
  absl::WriterMutexLock gate(&gate_);
  if (bound()) {
    if (shard_index == shard_index_ && num_shards == num_shards_) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrFormat("this server is bound to shard %u of %u; it cannot hold shard %u of %u",
                        shard_index_, num_shards_, shard_index, num_shards));
  }
  shard_index_ = shard_index;
  num_shards_ = num_shards;
  owned_.assign(options_.num_vshards, false);
  for (uint32_t v = 0; v < options_.num_vshards; ++v) owned_[v] = map->ShardOf(v) == shard_index;
  bound_.store(true, std::memory_order_release);
  return absl::OkStatus();
}

void ServerCore::SetRouting(uint64_t epoch, bool serving, uint64_t term, bool restoring) {
  // (Called under the replicator's lock: must not take the order lock, which the executors'
  // completions, taking the replicator's lock, may be waited for under.)
  absl::WriterMutexLock role(&role_mu_);
  term_ = term;
  epoch_.store(epoch, std::memory_order_release);
  restoring_.store(restoring, std::memory_order_release);
  serving_.store(serving, std::memory_order_release);
}

absl::Status ServerCore::CheckReplayTerm(uint64_t term) const {
  if (term == term_ && !serving_.load(std::memory_order_acquire)) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrFormat(
      "this replica's role changed (term %u, now %u%s) since the sender was checked; the change "
      "is not applied",
      term, term_, serving_.load() ? ", serving clients" : ""));
}

uint64_t ServerCore::lsn() const {
  absl::MutexLock lock(&order_mu_);
  return lsn_;
}

namespace {

constexpr char kReroutePayload[] = "type.tessera/reroute";

absl::Status Reroute(absl::Status status) {
  status.SetPayload(kReroutePayload, absl::Cord("1"));
  return status;
}

}  // namespace

namespace {
constexpr char kRetryAfterPayload[] = "type.tessera/retry-after-ms";
}  // namespace

absl::Status ServerCore::RetryLater(absl::Status status, uint32_t retry_after_ms) {
  status.SetPayload(kRetryAfterPayload, absl::Cord(absl::StrCat(retry_after_ms)));
  return status;
}

uint32_t ServerCore::RetryAfterMs(const absl::Status& status) {
  const auto p = status.GetPayload(kRetryAfterPayload);
  uint32_t ms = 0;
  if (!p.has_value() || !absl::SimpleAtoi(std::string(*p), &ms)) return 0;
  return ms;
}

bool ServerCore::IsReroute(const absl::Status& status) {
  return status.GetPayload(kReroutePayload).has_value();
}

absl::Status ServerCore::CheckRouting(const v1::RequestHeader& header, bool allow_restoring) const {
  const uint64_t epoch = shard_map_epoch();
  if (!coordinated_) {
    if (header.shard_map_epoch() == epoch) return absl::OkStatus();
    return Reroute(absl::FailedPreconditionError(absl::StrFormat(
        "request was routed with shard-map epoch %u but shard %u is at epoch %u; refresh the "
        "shard map",
        header.shard_map_epoch(), shard_index_, epoch)));
  }
  if (header.shard_map_epoch() > epoch) {
    if (newer_map_) newer_map_();
    return Reroute(absl::FailedPreconditionError(absl::StrFormat(
        "request was routed with shard-map epoch %u but this server is still at epoch %u; retry",
        header.shard_map_epoch(), epoch)));
  }
  if (!serving_.load(std::memory_order_acquire) || !bound()) {
    return Reroute(absl::FailedPreconditionError(absl::StrFormat(
        "this server is not the primary of %s at shard-map epoch %u; refresh the shard map",
        bound() ? absl::StrCat("shard ", shard_index_) : std::string("any shard"), epoch)));
  }
  if (restoring_.load(std::memory_order_acquire) && !allow_restoring) {
    return absl::UnavailableError(absl::StrFormat(
        "shard %u is RESTORING from a checkpoint (an operator's recovery); retry once it serves",
        shard_index_));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<ServerCore::Table>> ServerCore::LookupTable(
    const std::string& name) const {
  std::shared_ptr<Table> table;
  {
    absl::ReaderMutexLock lock(&tables_mu_);
    auto it = tables_.find(name);
    if (it != tables_.end()) table = it->second;
  }
  if (table == nullptr) {
    return absl::NotFoundError(absl::StrFormat("table '%s' does not exist", ShortName(name)));
  }
  return table;
}

absl::StatusOr<std::shared_ptr<ServerCore::Table>> ServerCore::FindTable(
    const v1::RequestHeader* header, const std::string& name, TableKind kind) const {
  if (header != nullptr) TESSERA_RETURN_IF_ERROR(CheckRouting(*header));
  absl::StatusOr<std::shared_ptr<Table>> table = LookupTable(name);
  if (!table.ok()) return table.status();
  if ((*table)->config.kind != kind) {
    return absl::FailedPreconditionError(absl::StrFormat("table '%s' is %s, not %s", name,
                                                         TableKindName((*table)->config.kind),
                                                         TableKindName(kind)));
  }
  return table;
}

absl::StatusOr<std::shared_ptr<ServerCore::Table>> ServerCore::NewTable(const TableConfig& config,
                                                                        bool initialize,
                                                                        bool force) {
  // What the table holds before any row, reserved before anything is allocated.
  uint64_t bytes = SparseTable::FixedBytes(config, owned_);
  if (config.kind == TableKind::kDense) {
    absl::StatusOr<uint64_t> dense =
        DenseTable::BytesFor(config, owned_, force ? 0 : options_.max_table_bytes);
    if (!dense.ok()) return dense.status();
    bytes = *dense;
  }
  if (!force && bytes > options_.max_table_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("table '%s' would take %u bytes on shard %u, over the limit of %u bytes "
                        "(--max_table_bytes)",
                        ShortName(config.name), bytes, shard_index_, options_.max_table_bytes));
  }
  if (force) {
    budget_.Force(bytes);
  } else {
    TESSERA_RETURN_IF_ERROR(
        budget_.Reserve(bytes, absl::StrFormat("table '%s'", ShortName(config.name))));
  }
  auto table = std::make_shared<Table>();
  table->sums.parts.resize(executors_->size());
  table->budget = &budget_;
  table->charged = bytes;
  table->config = config;
  table->incarnation = next_incarnation_.fetch_add(1);
  if (config.kind == TableKind::kSparse) {
    table->sparse = std::make_unique<SparseTable>(config, owned_);
    if (config.lifecycle.tier()) {
      absl::StatusOr<std::shared_ptr<TierStore>> tier = OpenTier();
      if (!tier.ok()) return tier.status();
      table->sparse->AttachTier(*std::move(tier));
    }
  } else {
    table->dense = std::make_unique<DenseTable>(config, owned_, initialize);
    if (!table->dense->allocated()) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("table '%s': cannot map %u bytes on shard %u", ShortName(config.name),
                          bytes, shard_index_));
    }
  }
  return table;
}

absl::StatusOr<std::shared_ptr<TierStore>> ServerCore::OpenTier() {
  absl::MutexLock lock(&tier_mu_);
  if (tier_ == nullptr) {
    absl::StatusOr<std::unique_ptr<TierStore>> opened =
        TierStore::Open(options_.tier_dir, options_.tier_cache_bytes);
    if (!opened.ok()) {
      return absl::UnavailableError(
          absl::StrFormat("this server cannot open its disk tier: %s", opened.status().message()));
    }
    tier_ = *std::move(opened);
    LogInfo("disk tier in %s", tier_->dir());
  }
  return tier_;
}

std::shared_ptr<TierStore> ServerCore::tier() const {
  absl::MutexLock lock(&tier_mu_);
  return tier_;
}

TableData& ServerCore::Table::data() const {
  if (sparse != nullptr) return *sparse;
  return *dense;
}

ServerCore::Table::~Table() {
  if (budget != nullptr) budget->Release(charged.load());
}

// Settles a reservation (rows or BSP sums): what was really created stays charged to the
// table, the rest goes back to the budget.
ServerCore::Reservation::~Reservation() {
  const uint64_t created = created_.load() * unit_bytes_;
  const uint64_t used = std::min(reserved_, created);
  budget_->Force(created - used);  // (a push that counted on released rows
                                   // another change took first)
  budget_->Release(reserved_ - used);
  table_->charged += created;
  if (sums_) table_->sums_charged += created;
}

std::vector<std::pair<uint64_t, const std::vector<float>*>> ServerCore::StepSums::Sorted() const {
  std::vector<std::pair<uint64_t, const std::vector<float>*>> out;
  for (const EntrySums& part : parts) {
    for (const auto& [id, sum] : part) out.emplace_back(id, &sum);
  }
  std::sort(out.begin(), out.end());
  return out;
}

absl::Status ServerCore::ChargeLoadedRows(Table& t, bool force) {
  if (t.sparse == nullptr) return absl::OkStatus();
  const uint64_t bytes = t.sparse->num_rows() * t.sparse->row_charge();
  if (force) {
    budget_.Force(bytes);
  } else {
    if (t.charged + bytes > options_.max_table_bytes) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "table '%s' would hold %u bytes after the restore, over the limit of %u bytes "
          "(--max_table_bytes)",
          ShortName(t.config.name), t.charged + bytes, options_.max_table_bytes));
    }
    TESSERA_RETURN_IF_ERROR(budget_.Reserve(
        bytes, absl::StrFormat("the restored rows of table '%s'", ShortName(t.config.name))));
  }
  t.charged += bytes;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ServerCore::Reservation>> ServerCore::ReserveRows(
    const std::shared_ptr<Table>& t, uint64_t rows, bool force, const char* what) {
  const uint64_t bytes = rows * t->sparse->row_charge();  // (rows <= max_keys_per_request)
  if (force) {
    budget_.Force(bytes);
  } else {
    const uint64_t held = t->charged.load();
    if (held + bytes > options_.max_table_bytes) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "table '%s' holds %u bytes; a %s of %u new rows could take %u more, over the limit of "
          "%u bytes (--max_table_bytes)",
          ShortName(t->config.name), held, what, rows, bytes, options_.max_table_bytes));
    }
    TESSERA_RETURN_IF_ERROR(budget_.Reserve(
        bytes,
        absl::StrFormat("a %s of %u rows to table '%s'", what, rows, ShortName(t->config.name))));
  }
  return std::make_unique<Reservation>(t, &budget_, bytes, t->sparse->row_charge(), false);
}

uint64_t ServerCore::BeginCutLocked(std::vector<std::shared_ptr<Table>>* tables,
                                    std::vector<PushDeduplicator::ClientSnapshot>* dedup) {
  const uint64_t cut_gen = generation_.fetch_add(1);  // changes from now on carry cut_gen + 1
  {
    absl::ReaderMutexLock lock(&tables_mu_);
    for (const auto& [name, table] : tables_) tables->push_back(table);
  }
  for (const auto& t : *tables) t->data().BeginCut(cut_gen);
  *dedup = dedup_.Snapshot();
  return cut_gen;
}

void ServerCore::FillInfo(const Table& table, v1::TableInfo* info) const {
  TableConfigToProto(table.config, info->mutable_spec());
  info->set_rows(table.data().Entries());
  info->set_bytes(table.data().Bytes());
  if (table.sparse != nullptr && table.sparse->has_lifecycle()) {
    const SparseTable::LifecycleCounters& c = table.sparse->lifecycle_counters();
    info->set_evicted_ttl(c.evicted_ttl.load(std::memory_order_relaxed));
    info->set_evicted_capacity(c.evicted_capacity.load(std::memory_order_relaxed));
    info->set_evicted_memory(c.evicted_memory.load(std::memory_order_relaxed));
    info->set_would_evict(c.would_evict.load(std::memory_order_relaxed));
    info->set_demoted(c.demoted.load(std::memory_order_relaxed));
    info->set_promoted(c.promoted.load(std::memory_order_relaxed));
    info->set_disk_rows(table.sparse->disk_rows());
    info->set_disk_bytes(table.sparse->disk_rows() * table.sparse->stored_bytes());
    const std::vector<uint32_t> ages = table.sparse->SampleUpdateAges(NowMs(), 4096);
    for (double q : {0.5, 0.9, 0.99}) {
      info->add_update_age_quantiles_s(
          ages.empty() ? 0 : ages[std::min(ages.size() - 1, static_cast<size_t>(q * ages.size()))]);
    }
  }
}

absl::Status ServerCore::DescribeTable(const v1::DescribeTableRequest& req,
                                       v1::DescribeTableResponse* resp) {
  TESSERA_RETURN_IF_ERROR(CheckRouting(req.header()));
  absl::StatusOr<std::shared_ptr<Table>> table = LookupTable(req.table());
  if (!table.ok()) return table.status();
  FillInfo(**table, resp->mutable_info());
  if (req.digest()) resp->mutable_info()->set_digest((*table)->data().Digest());
  return absl::OkStatus();
}

absl::Status ServerCore::ListTables(const v1::ListTablesRequest& req,
                                    v1::ListTablesResponse* resp) {
  TESSERA_RETURN_IF_ERROR(CheckRouting(req.header()));
  std::vector<std::shared_ptr<Table>> tables;
  {
    absl::ReaderMutexLock lock(&tables_mu_);
    for (const auto& [name, table] : tables_) tables.push_back(table);
  }
  std::sort(tables.begin(), tables.end(),
            [](const auto& a, const auto& b) { return a->config.name < b->config.name; });
  for (const auto& table : tables) FillInfo(*table, resp->add_tables());
  return absl::OkStatus();
}

std::vector<TableStats> ServerCore::GetTableStats() const {
  std::vector<std::shared_ptr<Table>> tables;
  {
    absl::ReaderMutexLock lock(&tables_mu_);
    for (const auto& [name, table] : tables_) tables.push_back(table);
  }
  std::vector<TableStats> stats;
  for (const auto& t : tables) {
    TableStats& s = stats.emplace_back(
        TableStats{t->config.name, t->config.kind, t->data().Entries(), t->data().Bytes()});
    if (t->sparse != nullptr && t->sparse->has_lifecycle()) {
      const SparseTable::LifecycleCounters& c = t->sparse->lifecycle_counters();
      s.lifecycle = true;
      s.evicted_ttl = c.evicted_ttl.load(std::memory_order_relaxed);
      s.evicted_capacity = c.evicted_capacity.load(std::memory_order_relaxed);
      s.evicted_memory = c.evicted_memory.load(std::memory_order_relaxed);
      s.would_evict = c.would_evict.load(std::memory_order_relaxed);
      s.kept = c.kept.load(std::memory_order_relaxed);
      s.admitted = c.admitted.load(std::memory_order_relaxed);
      s.not_admitted = c.not_admitted.load(std::memory_order_relaxed);
      s.sketch_bytes = t->sparse->sketch_bytes();
      s.tier = t->sparse->has_tier();
      s.demoted = c.demoted.load(std::memory_order_relaxed);
      s.promoted = c.promoted.load(std::memory_order_relaxed);
      s.disk_rows = t->sparse->disk_rows();
      s.disk_bytes = s.disk_rows * t->sparse->stored_bytes();
    }
  }
  return stats;
}

absl::Status ServerCore::CheckSparseRequest(const SparseTable& table, const std::string& name,
                                            int key_type, int dtype, uint32_t dim,
                                            uint64_t num_keys, absl::string_view key_bytes,
                                            SparseKeys* out) const {
  TESSERA_RETURN_IF_ERROR(CheckKeyType(static_cast<v1::KeyType>(key_type), name));
  TESSERA_RETURN_IF_ERROR(CheckDtype(static_cast<v1::DType>(dtype), name));
  if (dim != table.dim()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("table '%s' has dim %u, request has dim %u", name, table.dim(), dim));
  }
  if (num_keys > options_.max_keys_per_request) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("table '%s': %u keys in one request, over the limit of %u", name, num_keys,
                        options_.max_keys_per_request));
  }
  if (key_bytes.size() % sizeof(uint64_t) != 0 || key_bytes.size() / sizeof(uint64_t) != num_keys) {
    return absl::InvalidArgumentError(
        absl::StrFormat("table '%s': num_keys %u needs %u key bytes, got %u", name, num_keys,
                        num_keys * sizeof(uint64_t), key_bytes.size()));
  }
  out->keys = PackedView<uint64_t>(key_bytes, &out->scratch);
  GroupByVshard(out->keys, table.num_vshards(), &out->groups);
  for (const VshardRun& run : out->groups.runs) {
    if (!table.Owns(run.vshard)) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "table '%s': key %u is in vshard %u, which shard %u does not own at epoch %u", name,
          out->keys[out->groups.KeyIndex(run.begin)], run.vshard, shard_index_, shard_map_epoch()));
    }
  }
  return absl::OkStatus();
}

absl::Status ServerCore::PullSparse(const v1::PullSparseRequest& req, v1::PullSparseResponse* resp,
                                    BulkBuffer* values) {
  absl::StatusOr<std::shared_ptr<Table>> table =
      FindTable(&req.header(), req.table(), TableKind::kSparse);
  if (!table.ok()) return table.status();
  SparseTable& sparse = *(*table)->sparse;
  SparseKeys k;
  TESSERA_RETURN_IF_ERROR(CheckSparseRequest(sparse, req.table(), req.key_type(), req.dtype(),
                                             req.dim(), req.num_keys(), req.keys(), &k));
  TESSERA_RETURN_IF_ERROR(
      CheckResponseBytes(req.table(), uint64_t{sparse.dim()} * k.keys.size() * sizeof(float)));
  // A pull creates the rows it does not find (not in a table with a lifecycle): reserved
  // before, settled after.
  std::unique_ptr<Reservation> rows;
  if (!sparse.has_lifecycle()) {
    absl::StatusOr<std::unique_ptr<Reservation>> reserved =
        ReserveRows(*table, k.keys.size(), /*force=*/false, "pull");
    if (!reserved.ok()) return reserved.status();
    rows = *std::move(reserved);
  }
  resp->set_dtype(v1::DTYPE_FLOAT32);
  resp->set_dim(sparse.dim());
  resp->set_num_keys(req.num_keys());
  const size_t n = k.keys.size() * sparse.dim();
  float* out = values != nullptr ? values->Allocate<float>(n)
                                 : PackedResize<float>(resp->mutable_values(), n);
  if (sparse.has_lifecycle()) {
    // (Its pulls create no rows: nothing a checkpoint's cut must order, so no update gate.)
    sparse.Pull(k.keys, k.groups, out, generation_.load(std::memory_order_relaxed));
    return absl::OkStatus();
  }
  absl::ReaderMutexLock gate(&gate_);  // a pull may create rows
  const uint32_t created =
      sparse.Pull(k.keys, k.groups, out, generation_.load(std::memory_order_relaxed));
  if (rows != nullptr) rows->AddCreated(created);
  return absl::OkStatus();
}

absl::Status ServerCore::PullDense(const v1::PullDenseRequest& req, v1::PullDenseResponse* resp,
                                   BulkBuffer* values) {
  absl::StatusOr<std::shared_ptr<Table>> table =
      FindTable(&req.header(), req.table(), TableKind::kDense);
  if (!table.ok()) return table.status();
  DenseTable& dense = *(*table)->dense;
  const std::string& name = req.table();
  TESSERA_RETURN_IF_ERROR(CheckDtype(req.dtype(), name));
  TESSERA_RETURN_IF_ERROR(CheckDenseRange(dense, name, req.offset(), req.count()));
  TESSERA_RETURN_IF_ERROR(CheckResponseBytes(name, req.count() * sizeof(float)));
  resp->set_dtype(v1::DTYPE_FLOAT32);
  resp->set_offset(req.offset());
  resp->set_count(req.count());
  dense.Pull(req.offset(), req.count(),
             values != nullptr ? values->Allocate<float>(req.count())
                               : PackedResize<float>(resp->mutable_values(), req.count()));
  return absl::OkStatus();
}

absl::Status ServerCore::CheckResponseBytes(const std::string& name, uint64_t bytes) const {
  if (bytes <= options_.max_response_bytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      absl::StrFormat("table '%s': the response would be %u bytes, over the limit of %u bytes "
                      "(--max_response_bytes); pull fewer keys at once",
                      ShortName(name), bytes, options_.max_response_bytes));
}

absl::Status ServerCore::CheckDenseRange(const DenseTable& dense, const std::string& name,
                                         uint64_t offset, uint64_t count) const {
  const uint64_t size = dense.layout().size;
  if (count > options_.max_dense_elems_per_request) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("table '%s': %u elements in one request, over the limit of %u", name, count,
                        options_.max_dense_elems_per_request));
  }
  if (offset > size || count > size - offset) {
    return absl::InvalidArgumentError(
        absl::StrFormat("table '%s': range [%u, %u) is outside the table's %u elements", name,
                        offset, offset + count, size));
  }
  const int64_t missing = dense.FirstMissingBlock(offset, count);
  if (missing >= 0) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "table '%s': block %d (elements [%u, %u)) is not held by shard %u at epoch %u", name,
        missing, dense.layout().BlockBegin(missing), dense.layout().BlockEnd(missing), shard_index_,
        shard_map_epoch()));
  }
  return absl::OkStatus();
}

}  // namespace tessera
