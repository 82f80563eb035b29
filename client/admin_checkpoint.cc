#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <algorithm>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "client/admin.h"
#include "common/grpc_channel.h"
#include "common/grpc_status.h"
#include "proto/checkpoint.pb.h"
#include "proto/tessera.grpc.pb.h"
#include "storage/checkpoint_store.h"
#include "storage/file_util.h"
#include "storage/table_file.h"

namespace tessera {
namespace {

// Runs call(shard) for every server on threads of its own and returns the statuses.
template <typename Fn>
std::vector<absl::Status> OnEveryServer(const std::vector<std::string>& servers,
                                        const Credentials& credentials, Fn&& call) {
  std::vector<absl::Status> statuses(servers.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < servers.size(); ++i) {
    threads.emplace_back([&, i] {
      auto stub = v1::ParameterServer::NewStub(MakeChannel(servers[i], credentials));
      statuses[i] = call(*stub, static_cast<uint32_t>(i));
      if (!statuses[i].ok()) {
        statuses[i] = absl::Status(
            statuses[i].code(),
            absl::StrFormat("server %s (shard %u): %s", servers[i], i, statuses[i].message()));
      }
    });
  }
  for (auto& t : threads) t.join();
  return statuses;
}

absl::Status FirstError(const std::vector<absl::Status>& statuses) {
  for (const absl::Status& s : statuses) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

void SetDeadline(grpc::ClientContext* ctx, absl::Duration timeout) {
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

}  // namespace

absl::StatusOr<CheckpointRoundResult> RunCheckpointRound(const CheckpointDriverOptions& o) {
  const absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<storage::CheckpointStore>> store =
      storage::CheckpointStore::Open(o.dir);
  if (!store.ok()) return store.status();
  storage::CheckpointStore& s = **store;
  absl::StatusOr<std::unique_ptr<storage::DriverLock>> lock = s.LockForDriver();
  if (!lock.ok()) return lock.status();

  CheckpointRoundResult result;
  std::vector<uint64_t> partial;
  absl::StatusOr<std::vector<uint64_t>> complete = s.List(&partial);
  if (!complete.ok()) return complete.status();
  for (uint64_t id : partial) {
    if (absl::Status st = s.Remove(id); !st.ok()) return st;
    result.removed_partial.push_back(id);
  }
  const uint64_t newest = complete->empty() ? 0 : complete->back();
  const uint64_t highest = std::max(newest, partial.empty() ? 0 : partial.back());
  result.id = highest + 1;

  // Incremental only when every server took the newest checkpoint in its current life.
  storage::v1::CheckpointManifest parent;
  if (o.incremental && newest != 0 && s.ReadManifest(newest, &parent).ok() &&
      parent.num_shards() == o.servers.size()) {
    std::vector<bool> knows(o.servers.size(), false);
    const absl::Status st = FirstError(OnEveryServer(
        o.servers, o.credentials, [&](v1::ParameterServer::Stub& stub, uint32_t shard) {
          v1::GetCheckpointStateRequest req;
          req.mutable_header()->set_shard_map_epoch(o.shard_map_epoch);
          v1::GetCheckpointStateResponse resp;
          grpc::ClientContext ctx;
          SetDeadline(&ctx, absl::Seconds(30));
          absl::Status r = FromGrpcStatus(stub.GetCheckpointState(&ctx, req, &resp));
          if (r.ok()) {
            knows[shard] =
                std::find(resp.known_checkpoints().begin(), resp.known_checkpoints().end(),
                          newest) != resp.known_checkpoints().end();
          }
          return r;
        }));
    if (!st.ok()) return st;
    if (std::all_of(knows.begin(), knows.end(), [](bool b) { return b; })) {
      result.parent_id = newest;
    }
  }

  std::vector<storage::v1::PartManifest> parts(o.servers.size());
  const absl::Status written = FirstError(
      OnEveryServer(o.servers, o.credentials, [&](v1::ParameterServer::Stub& stub, uint32_t shard) {
        v1::WriteCheckpointRequest req;
        req.mutable_header()->set_shard_map_epoch(o.shard_map_epoch);
        req.set_checkpoint_id(result.id);
        req.set_parent_id(result.parent_id);
        v1::WriteCheckpointResponse resp;
        grpc::ClientContext ctx;
        SetDeadline(&ctx, o.rpc_timeout);
        absl::Status r = FromGrpcStatus(stub.WriteCheckpoint(&ctx, req, &resp));
        if (r.ok() &&
            (!parts[shard].ParseFromString(resp.part()) || parts[shard].shard_index() != shard ||
             parts[shard].num_shards() != o.servers.size())) {
          r = absl::FailedPreconditionError(
              "the server's part does not fit this cluster (shard index or count differ from "
              "the --connect list)");
        }
        return r;
      }));
  if (!written.ok()) {
    (void)s.Remove(result.id);  // nothing became visible; do not leave the parts behind
    return absl::Status(written.code(),
                        absl::StrCat("checkpoint ", result.id, " failed: ", written.message()));
  }

  storage::v1::CheckpointManifest m;
  m.set_id(result.id);
  m.set_parent_id(result.parent_id);
  if (result.parent_id != 0) *m.mutable_chain() = parent.chain();
  m.add_chain(result.id);
  m.set_created_unix_ms(absl::ToUnixMillis(absl::Now()));
  m.set_num_shards(static_cast<uint32_t>(o.servers.size()));
  m.set_shard_map_epoch(o.shard_map_epoch);
  for (const storage::v1::PartManifest& p : parts) {
    result.rows += p.rows();
    result.bytes += p.bytes();
    result.max_cut_seconds = std::max(result.max_cut_seconds, p.cut_seconds());
    *m.add_parts() = p;
  }
  m.set_num_vshards(parts.empty() ? 0 : parts[0].num_vshards());
  if (o.testing_crash_point == 1) raise(SIGKILL);
  if (o.testing_crash_point == 2) {  // as if killed between writing MANIFEST.tmp and its rename
    std::ofstream(s.ManifestPath(result.id) + ".tmp") << m.SerializeAsString();
    raise(SIGKILL);
  }
  result.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  m.set_seconds(result.seconds);
  if (absl::Status st = s.Publish(m); !st.ok()) {
    (void)s.Remove(result.id);
    return st;
  }
  absl::StatusOr<std::vector<uint64_t>> victims = s.RetentionVictims(o.keep_last);
  if (!victims.ok()) return victims.status();
  for (uint64_t id : *victims) {
    if (absl::Status st = s.Remove(id); !st.ok()) return st;
    result.removed_by_retention.push_back(id);
  }
  return result;
}

absl::StatusOr<size_t> VerifyCheckpoint(const std::string& dir, uint64_t id) {
  absl::StatusOr<std::unique_ptr<storage::CheckpointStore>> store =
      storage::CheckpointStore::Open(dir);
  if (!store.ok()) return store.status();
  absl::StatusOr<std::vector<storage::v1::CheckpointManifest>> chain = (*store)->ReadChain(id);
  if (!chain.ok()) return chain.status();
  size_t files = 0;
  for (const storage::v1::PartManifest& part : chain->back().parts()) {
    for (const storage::v1::TableEntry& t : part.tables()) {
      absl::StatusOr<std::vector<std::unique_ptr<storage::TableFileReader>>> readers =
          (*store)->OpenTableFiles(*chain, part.shard_index(), t.spec().name());
      if (!readers.ok()) return readers.status();
      files += readers->size();
    }
  }
  return files;
}

absl::StatusOr<RestoreLifecycle> ParseRestoreLifecycle(absl::string_view name) {
  if (name == "match") return RestoreLifecycle::kMatch;
  if (name == "checkpoint") return RestoreLifecycle::kCheckpoint;
  if (name == "live") return RestoreLifecycle::kLive;
  return absl::InvalidArgumentError(
      absl::StrCat("--lifecycle must be match, checkpoint or live; got '", name, "'"));
}

absl::StatusOr<RestoreResult> RestoreCluster(const std::string& dir,
                                             const std::vector<std::string>& servers,
                                             uint64_t shard_map_epoch, uint64_t id,
                                             absl::Duration timeout, const Credentials& credentials,
                                             RestoreLifecycle lifecycle) {
  const absl::Time start = absl::Now();
  if (id == 0) {
    absl::StatusOr<std::unique_ptr<storage::CheckpointStore>> store =
        storage::CheckpointStore::Open(dir);
    if (!store.ok()) return store.status();
    id = (*store)->NewestOrZero();
    if (id == 0) return absl::NotFoundError(absl::StrCat("no complete checkpoint in ", dir));
  }
  auto phase = [&](v1::RestorePhase p, std::vector<v1::RestoreCheckpointResponse>* responses) {
    return OnEveryServer(
        servers, credentials, [&](v1::ParameterServer::Stub& stub, uint32_t shard) {
          v1::RestoreCheckpointRequest req;
          req.mutable_header()->set_shard_map_epoch(shard_map_epoch);
          req.set_checkpoint_id(id);
          req.set_phase(p);
          req.set_lifecycle(lifecycle == RestoreLifecycle::kCheckpoint
                                ? v1::RESTORE_LIFECYCLE_CHECKPOINT
                            : lifecycle == RestoreLifecycle::kLive ? v1::RESTORE_LIFECYCLE_LIVE
                                                                   : v1::RESTORE_LIFECYCLE_MATCH);
          v1::RestoreCheckpointResponse resp;
          grpc::ClientContext ctx;
          SetDeadline(&ctx, timeout);
          absl::Status s = FromGrpcStatus(stub.RestoreCheckpoint(&ctx, req, &resp));
          if (responses != nullptr) (*responses)[shard] = resp;
          return s;
        });
  };
  // Everyone loads first; only when all succeeded does anyone swap.
  std::vector<v1::RestoreCheckpointResponse> prepared(servers.size());
  const absl::Status st = FirstError(phase(v1::RESTORE_PHASE_PREPARE, &prepared));
  if (!st.ok()) {
    (void)phase(v1::RESTORE_PHASE_ABORT, nullptr);
    return st;
  }
  if (absl::Status c = FirstError(phase(v1::RESTORE_PHASE_COMMIT, nullptr)); !c.ok()) return c;
  RestoreResult r;
  r.id = id;
  for (const auto& resp : prepared) {
    r.rows += resp.rows();
    r.bytes += resp.bytes();
  }
  r.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return r;
}

absl::StatusOr<uint64_t> MergeCheckpointChain(const std::string& dir, uint64_t id) {
  absl::StatusOr<std::unique_ptr<storage::CheckpointStore>> store =
      storage::CheckpointStore::Open(dir);
  if (!store.ok()) return store.status();
  storage::CheckpointStore& s = **store;
  absl::StatusOr<std::unique_ptr<storage::DriverLock>> lock = s.LockForDriver();
  if (!lock.ok()) return lock.status();
  if (id == 0) id = s.NewestOrZero();
  absl::StatusOr<std::vector<storage::v1::CheckpointManifest>> chain = s.ReadChain(id);
  if (!chain.ok()) return chain.status();
  const storage::v1::CheckpointManifest& last = chain->back();
  std::vector<uint64_t> partial;
  absl::StatusOr<std::vector<uint64_t>> complete = s.List(&partial);
  if (!complete.ok()) return complete.status();
  const uint64_t merged =
      std::max(complete->empty() ? 0 : complete->back(), partial.empty() ? 0 : partial.back()) + 1;
  storage::v1::CheckpointManifest m = last;
  m.set_id(merged);
  m.set_parent_id(0);
  m.clear_chain();
  m.add_chain(merged);
  m.set_created_unix_ms(absl::ToUnixMillis(absl::Now()));
  const absl::Time start = absl::Now();
  for (storage::v1::PartManifest& part : *m.mutable_parts()) {
    const uint32_t shard = part.shard_index();
    if (absl::Status st = s.CreatePartDir(merged, shard); !st.ok()) return st;
    part.set_rows(0);
    part.set_bytes(0);
    for (int i = 0; i < part.tables_size(); ++i) {
      storage::v1::TableEntry& entry = *part.mutable_tables(i);
      absl::StatusOr<std::vector<std::unique_ptr<storage::TableFileReader>>> readers =
          s.OpenTableFiles(*chain, shard, entry.spec().name());
      if (!readers.ok()) return readers.status();
      std::vector<storage::TableFileReader*> files;
      for (auto& r : *readers) files.push_back(r.get());
      const std::string name = absl::StrCat("table-", i, ".sst");
      const std::string path = absl::StrCat(s.PartDir(merged, shard), "/", name);
      absl::StatusOr<std::unique_ptr<storage::TableFileWriter>> w =
          storage::TableFileWriter::Create(path);
      if (!w.ok()) return w.status();
      uint32_t first = UINT32_MAX, last = 0;
      absl::Status st = storage::MergeChain(files, 0, UINT32_MAX, [&](const storage::Entry& e) {
        first = std::min(first, e.vshard);
        last = std::max(last, e.vshard);
        return (*w)->AddRow(e.vshard, e.key, e.bytes);
      });
      if (!st.ok()) return st;
      absl::StatusOr<storage::FileInfo> info = (*w)->Finish();
      if (!info.ok()) return info.status();
      entry.set_full(true);
      entry.clear_files();
      storage::v1::FileEntry* f = entry.add_files();
      f->set_name(name);
      f->set_size_bytes(info->size_bytes);
      f->set_crc32c(info->crc32c);
      f->set_rows(info->rows);
      f->set_first_vshard(first == UINT32_MAX ? 0 : first);
      f->set_last_vshard(last);
      entry.set_rows(info->rows);
      entry.set_bytes(info->size_bytes);
      part.set_rows(part.rows() + info->rows);
      part.set_bytes(part.bytes() + info->size_bytes);
    }
    if (absl::Status st = storage::SyncDir(s.PartDir(merged, shard)); !st.ok()) return st;
  }
  m.set_seconds(absl::ToDoubleSeconds(absl::Now() - start));
  if (absl::Status st = s.Publish(m); !st.ok()) {
    (void)s.Remove(merged);
    return st;
  }
  return merged;
}

}  // namespace tessera
