#include "server/server_core.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "common/wire.h"
#include "proto/cluster.pb.h"
#include "proto/tessera.pb.h"
#include "server/dense_table.h"
#include "server/sparse_table.h"
#include "storage/checkpoint_store.h"

namespace tessera {

namespace {

absl::Status CheckDtype(v1::DType dtype, const std::string& table) {
  if (dtype == v1::DTYPE_FLOAT32) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrFormat("table '%s': unsupported dtype %d (this server supports DTYPE_FLOAT32)",
                      table, static_cast<int>(dtype)));
}

absl::Status CheckKeyType(v1::KeyType key_type, const std::string& table) {
  if (key_type == v1::KEY_TYPE_UINT64) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrFormat("table '%s': unknown key_type %d (this server supports KEY_TYPE_UINT64)",
                      table, static_cast<int>(key_type)));
}

absl::Status CheckFinite(const float* values, size_t n, const std::string& table) {
  // A float is NaN or infinite exactly when its exponent bits are all ones. This integer test
  // vectorizes (std::isfinite does not, without -ffast-math); locate the culprit only on failure.
  const uint32_t* bits = reinterpret_cast<const uint32_t*>(values);
  uint32_t bad = 0;
  for (size_t i = 0; i < n; ++i) bad |= (bits[i] & 0x7f800000u) == 0x7f800000u;
  if (bad == 0) return absl::OkStatus();
  size_t i = 0;
  while (i < n && std::isfinite(values[i])) ++i;
  return absl::InvalidArgumentError(
      absl::StrFormat("table '%s': value %u of %u is not finite (%g)", table, i, n, values[i]));
}

// The values of a push: exactly `count` floats, finite unless `trusted` (a replicated push,
// which its primary checked: only what memory safety needs is checked again).
absl::StatusOr<absl::Span<const float>> PushValues(const std::string& bytes, uint64_t count,
                                                   const std::string& table,
                                                   std::vector<float>* scratch,
                                                   bool trusted = false) {
  if (bytes.size() != count * sizeof(float)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("table '%s': %u values need %u value bytes, got %u", table, count,
                        count * sizeof(float), bytes.size()));
  }
  absl::Span<const float> values = PackedView<float>(bytes, scratch);
  if (!trusted) TESSERA_RETURN_IF_ERROR(CheckFinite(values.data(), values.size(), table));
  return values;
}

// Distinct keys within each vshard run (all copies of a key share a run).
absl::Status CheckDistinct(absl::Span<const uint64_t> keys, const VshardGrouping& groups,
                           const std::string& table) {
  std::vector<uint64_t> scratch;
  for (const VshardRun& run : groups.runs) {
    const uint32_t len = run.end - run.begin;
    if (len < 2) continue;
    scratch.resize(len);
    for (uint32_t j = 0; j < len; ++j) scratch[j] = keys[groups.KeyIndex(run.begin + j)];
    std::sort(scratch.begin(), scratch.end());
    auto dup = std::adjacent_find(scratch.begin(), scratch.end());
    if (dup != scratch.end()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "table '%s': key %u appears more than once in one push; sum its gradients first", table,
          *dup));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckPushId(const v1::PushId& id, const std::string& table) {
  if (id.client_id() == 0 || id.sequence() == 0 || id.floor() > id.sequence()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "table '%s': push id needs client_id != 0, sequence >= 1 and floor <= sequence "
        "(got client_id=%u sequence=%u floor=%u)",
        table, id.client_id(), id.sequence(), id.floor()));
  }
  return absl::OkStatus();
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
  return core;
}

ServerCore::ServerCore(const ServerCoreOptions& options)
    : options_(options),
      coordinated_(options.coordinated),
      epoch_(options.coordinated ? 0 : options.shard_map_epoch),
      serving_(!options.coordinated),
      dedup_(absl::Seconds(options.dedup_client_ttl_s)) {}

ServerCore::~ServerCore() = default;

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

template <typename Req, typename Resp>
absl::Status ServerCore::Routed(ChangeImpl<Req, Resp> impl, const Req& req, Resp* resp,
                                const void* request) {
  TESSERA_RETURN_IF_ERROR(CheckRouting(req.header()));
  return (this->*impl)(req, resp, request, /*replicated=*/false);
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
    return absl::NotFoundError(absl::StrFormat("table '%s' does not exist", name));
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
                                                                        bool initialize) {
  auto table = std::make_shared<Table>();
  table->config = config;
  table->incarnation = next_incarnation_.fetch_add(1);
  if (config.kind == TableKind::kSparse) {
    table->sparse = std::make_unique<SparseTable>(config, owned_);
  } else {
    table->dense = std::make_unique<DenseTable>(config, owned_, initialize);
    if (!table->dense->allocated()) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("table '%s': cannot map %u bytes on shard %u", config.name,
                          DenseTable::BytesFor(config, owned_), shard_index_));
    }
  }
  return table;
}

uint64_t ServerCore::BeginCutLocked(std::vector<std::shared_ptr<Table>>* tables,
                                    std::vector<PushDeduplicator::ClientSnapshot>* dedup) {
  const uint64_t cut_gen = generation_.fetch_add(1);  // changes from now on carry cut_gen + 1
  {
    absl::ReaderMutexLock lock(&tables_mu_);
    for (const auto& [name, table] : tables_) tables->push_back(table);
  }
  for (const auto& t : *tables) {
    if (t->sparse != nullptr) {
      t->sparse->BeginCut(cut_gen);
    } else {
      t->dense->BeginCut(cut_gen);
    }
  }
  *dedup = dedup_.Snapshot();
  return cut_gen;
}

void ServerCore::FillInfo(const Table& table, v1::TableInfo* info) const {
  TableConfigToProto(table.config, info->mutable_spec());
  if (table.sparse != nullptr) {
    info->set_rows(table.sparse->num_rows());
    info->set_bytes(table.sparse->bytes());
  } else {
    info->set_rows(table.dense->num_elements());
    info->set_bytes(table.dense->bytes());
  }
}

absl::Status ServerCore::CreateTable(const v1::CreateTableRequest& req,
                                     v1::CreateTableResponse* resp, const void* request) {
  return Routed(&ServerCore::CreateTableImpl, req, resp, request);
}

absl::Status ServerCore::CreateTableImpl(const v1::CreateTableRequest& req,
                                         v1::CreateTableResponse* resp, const void* request,
                                         bool replicated) {
  absl::StatusOr<TableConfig> parsed = TableConfigFromProto(req.spec());
  if (!parsed.ok()) return parsed.status();
  absl::StatusOr<TableConfig> config = ResolveTableConfig(*parsed);
  if (!config.ok()) return config.status();

  auto existing_matches = [&]() ABSL_SHARED_LOCKS_REQUIRED(tables_mu_) -> absl::StatusOr<bool> {
    auto it = tables_.find(config->name);
    if (it == tables_.end()) return false;
    if (it->second->config == *config) return true;
    return absl::AlreadyExistsError(absl::StrFormat(
        "table '%s' already exists with a different spec; drop it first", config->name));
  };
  bool exists_already;
  {
    absl::ReaderMutexLock lock(&tables_mu_);
    absl::StatusOr<bool> exists = existing_matches();
    if (!exists.ok()) return exists.status();
    exists_already = *exists;
  }
  if (exists_already) {
    TableConfigToProto(*config, resp->mutable_spec());
    resp->set_lsn(lsn());  // acknowledged once the create that made it is replicated
    return absl::OkStatus();
  }

  if (config->kind == TableKind::kDense) {
    const uint64_t bytes = DenseTable::BytesFor(*config, owned_);
    if (bytes > options_.max_dense_table_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("table '%s' would take %u bytes on shard %u, over the limit of %u bytes "
                          "(--max_dense_table_bytes)",
                          config->name, bytes, shard_index_, options_.max_dense_table_bytes));
    }
  }
  // Build outside the lock: a large dense table takes a while to allocate and initialize.
  absl::StatusOr<std::shared_ptr<Table>> made = NewTable(*config, /*initialize=*/true);
  if (!made.ok()) return made.status();
  std::shared_ptr<Table> table = *std::move(made);
  absl::MutexLock order(&order_mu_);
  {
    absl::ReaderMutexLock gate(&gate_);
    table->created_gen = generation_.load();
    absl::MutexLock lock(&tables_mu_);
    absl::StatusOr<bool> exists = existing_matches();  // a concurrent create may have won
    if (!exists.ok()) return exists.status();
    if (*exists) {
      resp->set_lsn(lsn_);
      TableConfigToProto(*config, resp->mutable_spec());
      return absl::OkStatus();
    }
    tables_.emplace(config->name, std::move(table));
  }
  resp->set_lsn(NextLsn(v1::LOG_ENTRY_KIND_CREATE_TABLE, request));
  TableConfigToProto(*config, resp->mutable_spec());
  return absl::OkStatus();
}

absl::Status ServerCore::DropTable(const v1::DropTableRequest& req, v1::DropTableResponse* resp,
                                   const void* request) {
  return Routed(&ServerCore::DropTableImpl, req, resp, request);
}

absl::Status ServerCore::DropTableImpl(const v1::DropTableRequest& req, v1::DropTableResponse* resp,
                                       const void* request, bool replicated) {
  std::shared_ptr<Table> dropped;  // destroyed outside the locks
  absl::MutexLock order(&order_mu_);
  {
    absl::ReaderMutexLock gate(&gate_);
    absl::MutexLock lock(&tables_mu_);
    auto it = tables_.find(req.table());
    if (it == tables_.end()) {
      return absl::NotFoundError(absl::StrFormat("table '%s' does not exist", req.table()));
    }
    dropped = std::move(it->second);
    tables_.erase(it);
  }
  resp->set_lsn(NextLsn(v1::LOG_ENTRY_KIND_DROP_TABLE, request));
  return absl::OkStatus();
}

absl::Status ServerCore::DescribeTable(const v1::DescribeTableRequest& req,
                                       v1::DescribeTableResponse* resp) {
  TESSERA_RETURN_IF_ERROR(CheckRouting(req.header()));
  absl::StatusOr<std::shared_ptr<Table>> table = LookupTable(req.table());
  if (!table.ok()) return table.status();
  FillInfo(**table, resp->mutable_info());
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
    if (t->sparse != nullptr) {
      stats.push_back({t->config.name, t->config.kind, t->sparse->num_rows(), t->sparse->bytes()});
    } else {
      stats.push_back(
          {t->config.name, t->config.kind, t->dense->num_elements(), t->dense->bytes()});
    }
  }
  return stats;
}

uint64_t ServerCore::NextLsn(int kind, const void* request) {
  ++lsn_;
  if (log_ != nullptr && request != nullptr) log_->Append(lsn_, kind, request);
  return lsn_;
}

template <typename ApplyFn>
absl::Status ServerCore::ApplyOnce(const v1::PushId& id, const std::string& table,
                                   v1::PushResponse* resp, int kind, const void* request,
                                   bool replicated, ApplyFn&& apply) {
  if (options_.testing_push_delay_ms > 0 && !replicated) {
    absl::SleepFor(absl::Milliseconds(options_.testing_push_delay_ms));
  }
  {
    // One order for the exactly-once check, the change and its LSN: replicas replay changes in
    // LSN order and so reach the same rows and the same exactly-once table.
    absl::MutexLock order(&order_mu_);
    switch (dedup_.Begin(id.client_id(), id.sequence(), id.floor())) {
      case PushDeduplicator::Decision::kDuplicate:
        duplicate_pushes_.fetch_add(1, std::memory_order_relaxed);
        resp->set_duplicate(true);
        resp->set_lsn(lsn_);  // its original is at or below: acknowledged once that is
        if (replicated) NextLsn(kind, nullptr);
        return absl::OkStatus();
      case PushDeduplicator::Decision::kInProgress:  // (not while changes are ordered)
        return absl::UnavailableError(absl::StrFormat(
            "table '%s': push (client %u, sequence %u) is being applied right now; retry", table,
            id.client_id(), id.sequence()));
      case PushDeduplicator::Decision::kApply:
        break;
    }
    {
      // The rows and the record that the push was applied change under the same gate hold, so
      // a checkpoint's cut sees both or neither.
      absl::ReaderMutexLock gate(&gate_);
      if constexpr (std::is_same_v<decltype(apply(uint64_t{0})), absl::Status>) {
        // (checks that need the order: nothing changed when they fail)
        if (absl::Status st = apply(generation_.load(std::memory_order_relaxed)); !st.ok()) {
          dedup_.Finish(id.client_id(), id.sequence(), /*applied=*/false);
          return st;
        }
      } else {
        apply(generation_.load(std::memory_order_relaxed));
      }
      dedup_.Finish(id.client_id(), id.sequence(), /*applied=*/true);
    }
    resp->set_lsn(NextLsn(kind, request));
  }
  if (replicated) return absl::OkStatus();
  const uint64_t n = pushes_applied_.fetch_add(1, std::memory_order_relaxed) + 1;
  const uint32_t every = options_.testing_fail_push_after_apply_every;
  if (every > 0 && n % every == 0) {
    return absl::UnavailableError(
        absl::StrFormat("testing: push (client %u, sequence %u) applied, response dropped",
                        id.client_id(), id.sequence()));
  }
  return absl::OkStatus();
}

absl::Status ServerCore::CheckSparseRequest(const SparseTable& table, const std::string& name,
                                            int key_type, int dtype, uint32_t dim,
                                            uint64_t num_keys, const std::string& key_bytes,
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
  if (key_bytes.size() != num_keys * sizeof(uint64_t)) {
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

absl::Status ServerCore::PullSparse(const v1::PullSparseRequest& req,
                                    v1::PullSparseResponse* resp) {
  absl::StatusOr<std::shared_ptr<Table>> table =
      FindTable(&req.header(), req.table(), TableKind::kSparse);
  if (!table.ok()) return table.status();
  SparseTable& sparse = *(*table)->sparse;
  SparseKeys k;
  TESSERA_RETURN_IF_ERROR(CheckSparseRequest(sparse, req.table(), req.key_type(), req.dtype(),
                                             req.dim(), req.num_keys(), req.keys(), &k));
  resp->set_dtype(v1::DTYPE_FLOAT32);
  resp->set_dim(sparse.dim());
  resp->set_num_keys(req.num_keys());
  float* out = PackedResize<float>(resp->mutable_values(), k.keys.size() * sparse.dim());
  absl::ReaderMutexLock gate(&gate_);  // a pull may create rows
  sparse.Pull(k.keys, k.groups, out, generation_.load(std::memory_order_relaxed));
  return absl::OkStatus();
}

absl::Status ServerCore::PushSparse(const v1::PushSparseRequest& req, v1::PushResponse* resp,
                                    const void* request) {
  return Routed(&ServerCore::PushSparseImpl, req, resp, request);
}

absl::Status ServerCore::PushSparseImpl(const v1::PushSparseRequest& req, v1::PushResponse* resp,
                                        const void* request, bool replicated) {
  absl::StatusOr<std::shared_ptr<Table>> table =
      FindTable(nullptr, req.table(), TableKind::kSparse);
  if (!table.ok()) return table.status();
  SparseTable& sparse = *(*table)->sparse;
  const std::string& name = req.table();
  TESSERA_RETURN_IF_ERROR(CheckPushId(req.id(), name));
  SparseKeys k;
  TESSERA_RETURN_IF_ERROR(CheckSparseRequest(sparse, name, req.key_type(), req.dtype(), req.dim(),
                                             req.num_keys(), req.keys(), &k));
  std::vector<float> scratch;
  absl::StatusOr<absl::Span<const float>> values =
      PushValues(req.values(), req.num_keys() * sparse.dim(), name, &scratch, replicated);
  if (!values.ok()) return values.status();
  if (!replicated) TESSERA_RETURN_IF_ERROR(CheckDistinct(k.keys, k.groups, name));
  TESSERA_RETURN_IF_ERROR(CheckAssign(req.assign(), req.accumulate_step(), name));
  if (req.accumulate_step() != 0) {
    Table& t = **table;
    return ApplyOnce(req.id(), name, resp, v1::LOG_ENTRY_KIND_PUSH_SPARSE, request, replicated,
                     [&](uint64_t) -> absl::Status {
                       TESSERA_RETURN_IF_ERROR(CheckAccumulate(t, req.accumulate_step()));
                       t.sums.step = req.accumulate_step();
                       const uint32_t dim = sparse.dim();
                       for (size_t i = 0; i < k.keys.size(); ++i) {
                         std::vector<float>& sum = t.sums.rows[k.keys[i]];
                         sum.resize(dim, 0.0f);
                         for (uint32_t c = 0; c < dim; ++c) sum[c] += (*values)[i * dim + c];
                       }
                       return absl::OkStatus();
                     });
  }
  return ApplyOnce(
      req.id(), name, resp, v1::LOG_ENTRY_KIND_PUSH_SPARSE, request, replicated,
      [&](uint64_t gen) { sparse.Push(k.keys, k.groups, values->data(), gen, req.assign()); });
}

absl::Status ServerCore::PullDense(const v1::PullDenseRequest& req, v1::PullDenseResponse* resp) {
  absl::StatusOr<std::shared_ptr<Table>> table =
      FindTable(&req.header(), req.table(), TableKind::kDense);
  if (!table.ok()) return table.status();
  DenseTable& dense = *(*table)->dense;
  const std::string& name = req.table();
  TESSERA_RETURN_IF_ERROR(CheckDtype(req.dtype(), name));
  TESSERA_RETURN_IF_ERROR(CheckDenseRange(dense, name, req.offset(), req.count()));
  resp->set_dtype(v1::DTYPE_FLOAT32);
  resp->set_offset(req.offset());
  resp->set_count(req.count());
  dense.Pull(req.offset(), req.count(), PackedResize<float>(resp->mutable_values(), req.count()));
  return absl::OkStatus();
}

absl::Status ServerCore::PushDense(const v1::PushDenseRequest& req, v1::PushResponse* resp,
                                   const void* request) {
  return Routed(&ServerCore::PushDenseImpl, req, resp, request);
}

absl::Status ServerCore::PushDenseImpl(const v1::PushDenseRequest& req, v1::PushResponse* resp,
                                       const void* request, bool replicated) {
  absl::StatusOr<std::shared_ptr<Table>> table = FindTable(nullptr, req.table(), TableKind::kDense);
  if (!table.ok()) return table.status();
  DenseTable& dense = *(*table)->dense;
  const std::string& name = req.table();
  TESSERA_RETURN_IF_ERROR(CheckDtype(req.dtype(), name));
  TESSERA_RETURN_IF_ERROR(CheckPushId(req.id(), name));
  TESSERA_RETURN_IF_ERROR(CheckDenseRange(dense, name, req.offset(), req.count()));
  std::vector<float> scratch;
  absl::StatusOr<absl::Span<const float>> values =
      PushValues(req.values(), req.count(), name, &scratch, replicated);
  if (!values.ok()) return values.status();
  TESSERA_RETURN_IF_ERROR(CheckAssign(req.assign(), req.accumulate_step(), name));
  if (req.accumulate_step() != 0) {
    Table& t = **table;
    return ApplyOnce(req.id(), name, resp, v1::LOG_ENTRY_KIND_PUSH_DENSE, request, replicated,
                     [&](uint64_t) -> absl::Status {
                       TESSERA_RETURN_IF_ERROR(CheckAccumulate(t, req.accumulate_step()));
                       t.sums.step = req.accumulate_step();
                       const DenseLayout& layout = dense.layout();
                       const uint64_t end = req.offset() + req.count();
                       for (uint64_t b = req.offset() / layout.block_elems;
                            b < layout.num_blocks() && layout.BlockBegin(b) < end; ++b) {
                         std::vector<float>& sum = t.sums.blocks[b];
                         sum.resize(layout.BlockEnd(b) - layout.BlockBegin(b), 0.0f);
                         const uint64_t lo = std::max(layout.BlockBegin(b), req.offset());
                         const uint64_t hi = std::min(layout.BlockEnd(b), end);
                         for (uint64_t e = lo; e < hi; ++e) {
                           sum[e - layout.BlockBegin(b)] += (*values)[e - req.offset()];
                         }
                       }
                       return absl::OkStatus();
                     });
  }
  return ApplyOnce(req.id(), name, resp, v1::LOG_ENTRY_KIND_PUSH_DENSE, request, replicated,
                   [&](uint64_t gen) {
                     dense.Push(req.offset(), req.count(), values->data(), gen, req.assign());
                   });
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

absl::Status ServerCore::CheckAssign(bool assign, uint64_t accumulate_step,
                                     const std::string& name) {
  if (assign && accumulate_step != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("table '%s': a push cannot both assign values and accumulate step %u", name,
                        accumulate_step));
  }
  return absl::OkStatus();
}

absl::Status ServerCore::CheckAccumulate(const Table& table, uint64_t step) {
  const StepSums& sums = table.sums;
  if (step <= sums.applied_step) {
    return absl::FailedPreconditionError(
        absl::StrFormat("table '%s': step %u was applied already (last applied: %u)",
                        table.config.name, step, sums.applied_step));
  }
  if (sums.step != 0 && sums.step != step) {
    return absl::FailedPreconditionError(
        absl::StrFormat("table '%s': step %u is pending; apply it before accumulating step %u",
                        table.config.name, sums.step, step));
  }
  return absl::OkStatus();
}

absl::Status ServerCore::ApplyStep(const v1::ApplyStepRequest& req, v1::ApplyStepResponse* resp,
                                   const void* request) {
  return Routed(&ServerCore::ApplyStepImpl, req, resp, request);
}

absl::Status ServerCore::ApplyStepImpl(const v1::ApplyStepRequest& req, v1::ApplyStepResponse* resp,
                                       const void* request, bool replicated) {
  absl::StatusOr<std::shared_ptr<Table>> found = LookupTable(req.table());
  if (!found.ok()) return found.status();
  const std::shared_ptr<Table> table = *std::move(found);
  if (req.step() == 0 || !std::isfinite(req.scale())) {
    return absl::InvalidArgumentError(
        absl::StrFormat("table '%s': ApplyStep needs a step >= 1 and a finite scale", req.table()));
  }
  absl::MutexLock order(&order_mu_);
  StepSums& sums = table->sums;
  if (req.step() <= sums.applied_step) {
    resp->set_duplicate(true);
    resp->set_lsn(lsn_);
    if (replicated) NextLsn(v1::LOG_ENTRY_KIND_APPLY_STEP, nullptr);
    return absl::OkStatus();
  }
  if (sums.step != 0 && sums.step != req.step()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "table '%s': step %u is pending, not step %u", req.table(), sums.step, req.step()));
  }
  {
    absl::ReaderMutexLock gate(&gate_);
    const uint64_t gen = generation_.load(std::memory_order_relaxed);
    const float scale = req.scale();
    if (table->sparse != nullptr && !sums.rows.empty()) {
      const uint32_t dim = table->sparse->dim();
      std::vector<uint64_t> keys;
      std::vector<float> grads;
      keys.reserve(sums.rows.size());
      grads.reserve(sums.rows.size() * dim);
      for (const auto& [key, sum] : sums.rows) {
        keys.push_back(key);
        for (float g : sum) grads.push_back(g * scale);
      }
      VshardGrouping groups;
      GroupByVshard(keys, table->sparse->num_vshards(), &groups);
      table->sparse->Push(keys, groups, grads.data(), gen);
      resp->set_rows(keys.size());
    } else if (table->dense != nullptr) {
      std::vector<uint64_t> blocks;
      for (const auto& [b, sum] : sums.blocks) blocks.push_back(b);
      std::sort(blocks.begin(), blocks.end());
      std::vector<float> scaled;
      uint64_t elements = 0;
      for (uint64_t b : blocks) {
        const std::vector<float>& sum = sums.blocks[b];
        scaled.resize(sum.size());
        for (size_t i = 0; i < sum.size(); ++i) scaled[i] = sum[i] * scale;
        table->dense->Push(table->dense->layout().BlockBegin(b), scaled.size(), scaled.data(), gen);
        elements += scaled.size();
      }
      resp->set_rows(elements);
    }
  }
  sums.rows.clear();
  sums.blocks.clear();
  sums.step = 0;
  sums.applied_step = req.step();
  resp->set_lsn(NextLsn(v1::LOG_ENTRY_KIND_APPLY_STEP, request));
  return absl::OkStatus();
}

}  // namespace tessera
