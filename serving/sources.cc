#include "serving/sources.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "checkpoint.pb.h"
#include "common/grpc_channel.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/wire.h"
#include "grpcpp/grpcpp.h"
#include "serving.grpc.pb.h"
#include "serving/stream_codec.h"
#include "storage/checkpoint_store.h"
#include "storage/table_file.h"

namespace tessera::serving {
namespace {

namespace sv1 = tessera::storage::v1;

// Collects one table's entries into per-vshard deltas, weights only.
class TableReader {
 public:
  TableReader(const TableConfig& config, uint64_t version) : config_(config), version_(version) {}

  absl::Status Add(const storage::Entry& e) {
    if (last_ == nullptr || last_->vshard != e.vshard) {  // (files come in vshard order)
      last_ = &by_vshard_[e.vshard];
      last_->vshard = e.vshard;
    }
    VshardDelta& v = *last_;
    if (e.type == storage::EntryType::kTombstone) {
      v.tombstones.push_back(e.key);
      return absl::OkStatus();
    }
    const uint32_t width = RowWidth(config_);
    uint64_t len = width;
    if (config_.kind == TableKind::kDense) {
      const uint64_t first = e.key * width;
      if (e.key >= (config_.dense_size + width - 1) / width) {
        return absl::DataLossError(
            absl::StrFormat("checkpoint %u: table '%s' has block %u beyond its %u elements",
                            version_, config_.name, e.key, config_.dense_size));
      }
      len = std::min<uint64_t>(width, config_.dense_size - first);
    }
    if (e.bytes.size() < len * sizeof(float)) {
      return absl::DataLossError(absl::StrFormat(
          "checkpoint %u: table '%s' key %u holds %u bytes, fewer than its %u weights", version_,
          config_.name, e.key, e.bytes.size(), len));
    }
    v.keys.push_back(e.key);
    const size_t at = v.weights.size();
    v.weights.resize(at + width, 0.0f);
    std::memcpy(&v.weights[at], e.bytes.data(), len * sizeof(float));
    return absl::OkStatus();
  }

  TableDelta Finish(bool full) {
    TableDelta t;
    t.config = config_;
    t.full = full;
    for (auto& [vshard, v] : by_vshard_) t.vshards.push_back(std::move(v));
    return t;
  }

 private:
  const TableConfig config_;
  const uint64_t version_;
  std::map<uint32_t, VshardDelta> by_vshard_;
  VshardDelta* last_ = nullptr;
};

}  // namespace

absl::StatusOr<VersionDelta> ReadCheckpointVersion(const storage::CheckpointStore& store,
                                                   uint64_t id, const HeldTables& held) {
  sv1::CheckpointManifest m;
  TESSERA_RETURN_IF_ERROR(store.ReadManifest(id, &m));
  VersionDelta d;
  d.version = id;
  d.created_unix_ms = m.created_unix_ms();
  d.num_vshards = m.num_vshards();
  const bool incremental = held.version != 0 && m.parent_id() == held.version;
  d.parent = incremental ? held.version : 0;
  std::map<std::string, std::vector<std::pair<uint32_t, const sv1::TableEntry*>>> tables;
  for (const sv1::PartManifest& part : m.parts()) {
    for (const sv1::TableEntry& e : part.tables()) {
      tables[e.spec().name()].emplace_back(part.shard_index(), &e);
    }
  }
  std::optional<std::vector<sv1::CheckpointManifest>> chain;
  const uint32_t last_vshard = m.num_vshards() == 0 ? 0 : m.num_vshards() - 1;
  for (const auto& [name, entries] : tables) {
    absl::StatusOr<TableConfig> config = TableConfigFromProto(entries.front().second->spec());
    if (!config.ok()) {
      return absl::DataLossError(
          absl::StrFormat("checkpoint %u: table '%s': %s", id, name, config.status().message()));
    }
    bool full = !incremental;
    if (!full) {
      auto it = held.tables.find(name);
      full = it == held.tables.end() || !(it->second == *config);
      for (const auto& [shard, e] : entries) full = full || e->full();
    }
    TableReader reader(*config, id);
    auto add = [&reader](const storage::Entry& e) { return reader.Add(e); };
    if (full) {
      if (!chain.has_value()) {
        absl::StatusOr<std::vector<sv1::CheckpointManifest>> c = store.ReadChain(id);
        if (!c.ok()) return c.status();
        chain = *std::move(c);
      }
      for (const auto& [shard, e] : entries) {
        auto files = store.OpenTableFiles(*chain, shard, name);
        if (!files.ok()) return files.status();
        std::vector<storage::TableFileReader*> raw;
        for (auto& f : *files) raw.push_back(f.get());
        TESSERA_RETURN_IF_ERROR(storage::MergeChain(raw, 0, last_vshard, add));
      }
    } else {
      for (const auto& [shard, e] : entries) {
        for (const sv1::FileEntry& f : e->files()) {
          auto file = storage::TableFileReader::Open(
              absl::StrCat(store.PartDir(id, shard), "/", f.name()), f.size_bytes(), f.crc32c());
          if (!file.ok()) return file.status();
          TESSERA_RETURN_IF_ERROR(
              storage::MergeEntries({file->get()}, 0, last_vshard, /*with_tombstones=*/true, add));
        }
      }
    }
    d.tables.push_back(reader.Finish(full));
  }
  return d;
}

std::string Source::last_error() const {
  absl::MutexLock lock(&mu_);
  return last_error_;
}

void Source::SetError(const std::string& error) {
  errors_.fetch_add(1);
  {
    absl::MutexLock lock(&mu_);
    if (last_error_ == error) return;  // logged once while it repeats
    last_error_ = error;
  }
  LogError("%s: %s", Describe(), error);
}

namespace {

// A thread running `body` every round until stopped; Sleep() wakes early on Stop().
class Loop {
 public:
  void Start(std::function<void()> body, int nice = 0) {
    thread_ = std::thread([this, nice, body = std::move(body)] {
      // Versions are read and applied at a lower priority than lookups: on a busy replica the
      // kernel runs lookups first and the version waits (docs/online_serving.md).
      if (nice != 0) setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), nice);
      while (!stopping()) body();
    });
  }
  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    if (thread_.joinable()) thread_.join();
  }
  bool stopping() const {
    absl::MutexLock lock(&mu_);
    return stop_;
  }
  void Sleep(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(&stop_), d);
  }

 private:
  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

class DirectorySource : public Source {
 public:
  DirectorySource(DirectorySourceOptions options, std::unique_ptr<storage::CheckpointStore> cs,
                  ServingStore* store)
      : options_(std::move(options)), checkpoints_(std::move(cs)), store_(store) {
    loop_.Start([this] { Round(); }, options_.apply_nice);
  }
  ~DirectorySource() override { loop_.Stop(); }
  std::string Describe() const override {
    return absl::StrCat("checkpoint_dir ", options_.checkpoint_dir);
  }

 private:
  void Round() {
    absl::StatusOr<std::vector<uint64_t>> ids = checkpoints_->List();
    if (!ids.ok()) {
      SetError(std::string(ids.status().message()));
    } else {
      const uint64_t held = store_->newest_version();
      std::vector<uint64_t> newer;
      for (uint64_t id : *ids) {
        if (id > held) newer.push_back(id);
      }
      // A replica with nothing starts from the newest; one holding a version follows each
      // checkpoint in turn (so that relays keep the chain of deltas).
      if (held == 0 && !newer.empty()) newer = {newer.back()};
      for (uint64_t id : newer) {
        if (loop_.stopping()) return;
        const HeldTables base = store_->Held();
        const absl::Time start = absl::Now();
        absl::StatusOr<VersionDelta> delta = ReadCheckpointVersion(*checkpoints_, id, base);
        const bool incremental = delta.ok() && delta->parent != 0;
        const absl::Time read = absl::Now();
        size_t rows = 0;
        if (delta.ok()) {
          for (const TableDelta& t : delta->tables) {
            for (const VshardDelta& v : t.vshards) rows += v.keys.size() + v.tombstones.size();
          }
        }
        absl::Status s = delta.ok() ? store_->Apply(*std::move(delta)) : delta.status();
        if (!s.ok()) {
          SetError(absl::StrFormat("version %u: %s", id, s.ToString()));
          break;
        }
        LogInfo("version %u applied (%s, %u rows changed): read in %.0f ms, built in %.0f ms", id,
                incremental ? "increment" : "in full", rows,
                absl::ToDoubleMilliseconds(read - start),
                absl::ToDoubleMilliseconds(absl::Now() - read));
      }
    }
    loop_.Sleep(absl::Milliseconds(options_.poll_ms));
  }

  const DirectorySourceOptions options_;
  std::unique_ptr<storage::CheckpointStore> checkpoints_;
  ServingStore* const store_;
  Loop loop_;  // last: stopped first
};

class UpstreamSource : public Source {
 public:
  UpstreamSource(UpstreamSourceOptions options, ServingStore* store)
      : options_(std::move(options)), store_(store) {
    watchdog_.Start([this] { Watch(); });
    loop_.Start([this] { Round(); }, options_.apply_nice);
  }
  ~UpstreamSource() override {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
      if (ctx_ != nullptr) ctx_->TryCancel();
    }
    loop_.Stop();
    watchdog_.Stop();
  }
  std::string Describe() const override {
    return absl::StrCat("upstream ", absl::StrJoin(options_.addresses, ","));
  }

 private:
  // Cancels a stream silent for longer than the timeout.
  void Watch() {
    {
      absl::MutexLock lock(&mu_);
      if (ctx_ != nullptr && absl::Now() - last_event_ > absl::Milliseconds(options_.timeout_ms)) {
        ctx_->TryCancel();
      }
    }
    watchdog_.Sleep(absl::Milliseconds(100));
  }

  void Round() {
    const std::string& address = options_.addresses[next_ % options_.addresses.size()];
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(kMaxChunkMessageBytes);
    auto stub =
        tessera::serving::v1::Serving::NewStub(MakeChannel(address, options_.credentials, args));
    grpc::ClientContext ctx;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      ctx_ = &ctx;
      last_event_ = absl::Now();
    }
    tessera::serving::v1::SubscribeRequest req;
    req.set_from_version(store_->newest_version());
    std::unique_ptr<grpc::ClientReader<tessera::serving::v1::SubscribeEvent>> reader =
        stub->Subscribe(&ctx, req);
    StreamAssembler assembler(store_);
    tessera::serving::v1::SubscribeEvent event;
    absl::Status failure;
    while (failure.ok() && reader->Read(&event)) {
      {
        absl::MutexLock lock(&mu_);
        last_event_ = absl::Now();
      }
      failure = assembler.Take(event);
    }
    if (!failure.ok()) ctx.TryCancel();
    const grpc::Status finish = reader->Finish();
    {
      absl::MutexLock lock(&mu_);
      ctx_ = nullptr;
      if (stopping_) return;
    }
    if (failure.ok()) {
      failure = finish.ok() ? absl::UnavailableError("the stream ended")
                            : absl::Status(static_cast<absl::StatusCode>(finish.error_code()),
                                           finish.error_message());
    }
    SetError(absl::StrFormat("%s: %s", address, failure.ToString()));
    ++next_;  // the next upstream
    loop_.Sleep(absl::Milliseconds(options_.retry_ms));
  }

  const UpstreamSourceOptions options_;
  ServingStore* const store_;
  size_t next_ = 0;  // loop thread only
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* ctx_ ABSL_GUARDED_BY(mu_) = nullptr;
  absl::Time last_event_ ABSL_GUARDED_BY(mu_);
  Loop watchdog_;
  Loop loop_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Source>> StartDirectorySource(const DirectorySourceOptions& options,
                                                             ServingStore* store) {
  absl::StatusOr<std::unique_ptr<storage::CheckpointStore>> cs =
      storage::CheckpointStore::Open(options.checkpoint_dir);
  if (!cs.ok()) return cs.status();
  return std::make_unique<DirectorySource>(options, *std::move(cs), store);
}

absl::StatusOr<std::unique_ptr<Source>> StartUpstreamSource(const UpstreamSourceOptions& options,
                                                            ServingStore* store) {
  if (options.addresses.empty()) return absl::InvalidArgumentError("no --upstream address");
  TESSERA_RETURN_IF_ERROR(CheckCredentials(options.credentials));
  return std::make_unique<UpstreamSource>(options, store);
}

}  // namespace tessera::serving
