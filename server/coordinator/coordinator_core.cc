// CoordinatorCore: commit, then publish; and the coordinator's stores.
#include "server/coordinator/coordinator_core.h"

#include <rocksdb/db.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/logging.h"

namespace tessera {
namespace {

constexpr char kStateKey[] = "state";

class RocksDbStore final : public CoordinatorStore {
 public:
  RocksDbStore(std::unique_ptr<rocksdb::DB> db, std::string dir)
      : db_(std::move(db)), dir_(std::move(dir)) {}

  absl::StatusOr<std::optional<v1::CoordinatorState>> Read() override {
    std::string bytes;
    rocksdb::Status st = db_->Get(rocksdb::ReadOptions(), kStateKey, &bytes);
    if (st.IsNotFound()) return std::optional<v1::CoordinatorState>();
    if (!st.ok()) {
      return absl::UnavailableError(
          absl::StrFormat("cannot read the state in %s: %s", dir_, st.ToString()));
    }
    v1::CoordinatorState state;
    if (!state.ParseFromString(bytes)) {
      return absl::DataLossError(absl::StrFormat("the state in %s does not parse", dir_));
    }
    return std::optional<v1::CoordinatorState>(std::move(state));
  }

  absl::Status Write(const v1::CoordinatorState& state) override {
    rocksdb::WriteOptions wo;
    wo.sync = true;
    rocksdb::Status st = db_->Put(wo, kStateKey, state.SerializeAsString());
    if (!st.ok()) {
      return absl::UnavailableError(
          absl::StrFormat("cannot write the state in %s: %s", dir_, st.ToString()));
    }
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<rocksdb::DB> db_;
  const std::string dir_;
};

class FaultInjectingStore final : public CoordinatorStore {
 public:
  FaultInjectingStore(std::unique_ptr<CoordinatorStore> base, std::string path)
      : base_(std::move(base)), path_(std::move(path)) {}

  absl::StatusOr<std::optional<v1::CoordinatorState>> Read() override { return base_->Read(); }

  absl::Status Write(const v1::CoordinatorState& state) override {
    for (std::string mode = Mode(); mode != "fail"; mode = Mode()) {
      if (mode != "block") return base_->Write(state);
      absl::SleepFor(absl::Milliseconds(10));
    }
    return absl::UnavailableError(absl::StrCat("testing: writes fail while ", path_, " says so"));
  }

 private:
  std::string Mode() const {
    std::ifstream in(path_);
    std::stringstream text;
    text << in.rdbuf();
    return std::string(absl::StripAsciiWhitespace(text.str()));
  }

  std::unique_ptr<CoordinatorStore> base_;
  const std::string path_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<CoordinatorStore>> OpenRocksDbStore(const std::string& dir) {
  rocksdb::Options options;
  options.create_if_missing = true;
  rocksdb::DB* db = nullptr;
  rocksdb::Status st = rocksdb::DB::Open(options, dir, &db);
  if (!st.ok()) {
    return absl::UnavailableError(
        absl::StrFormat("cannot open the state in %s: %s", dir, st.ToString()));
  }
  return std::unique_ptr<CoordinatorStore>(
      std::make_unique<RocksDbStore>(std::unique_ptr<rocksdb::DB>(db), dir));
}

std::unique_ptr<CoordinatorStore> FaultInjectingStoreForTesting(
    std::unique_ptr<CoordinatorStore> base, std::string path) {
  return std::make_unique<FaultInjectingStore>(std::move(base), std::move(path));
}

CoordinatorCore::CoordinatorCore(const CoordinatorOptions& options, CoordinatorStore* store,
                                 uint64_t life)
    : options_(options), store_(store), life_(life), state_(options) {}

absl::Status CoordinatorCore::Start(int64_t now_ms) {
  absl::StatusOr<std::optional<v1::CoordinatorState>> saved = store_->Read();
  if (!saved.ok()) return saved.status();
  if (saved->has_value()) {
    if (absl::Status s = state_.Load(**saved, now_ms); !s.ok()) return s;
    LogInfo("resumed at shard-map epoch %u with %u members", state_.map().epoch(),
            (*saved)->members_size());
  } else {
    v1::CoordinatorState initial;
    state_.Save(&initial);
    if (absl::Status s = store_->Write(initial); !s.ok()) return s;
  }
  last_ms_ = now_ms;
  return absl::OkStatus();
}

void CoordinatorCore::Apply(ClusterState& next, CoordinatorCall& call, int64_t now_ms) {
  if (auto* hb = std::get_if<HeartbeatCall>(&call.call)) {
    call.status = next.Heartbeat(hb->request->status(), now_ms);
  } else if (auto* cu = std::get_if<CaughtUpCall>(&call.call)) {
    call.status = next.CaughtUp(*cu->request);
  } else if (auto* rf = std::get_if<ReplicaFailedCall>(&call.call)) {
    call.status = next.ReplicaFailed(*rf->request);
  } else if (auto* rs = std::get_if<RecoverShardCall>(&call.call)) {
    absl::StatusOr<v1::RecoverShardResponse> r = next.RecoverShard(*rs->request);
    call.status = r.status();
    if (r.ok()) {
      rs->response->set_server(r->server());
      rs->response->set_incarnation(r->incarnation());
    }
  } else if (auto* fr = std::get_if<FinishRecoveryCall>(&call.call)) {
    call.status = next.FinishRecovery(*fr->request);
  }
}

void CoordinatorCore::Answer(CoordinatorCall& call) const {
  if (auto* hb = std::get_if<HeartbeatCall>(&call.call)) {
    *hb->response->mutable_map() = state_.map();
    hb->response->set_lease_ms(static_cast<uint32_t>(absl::ToInt64Milliseconds(options_.lease)));
    hb->response->set_life(life_);
    hb->response->set_seq(seq_);
    const v1::ServerStatus& st = hb->request->status();
    hb->response->set_confirm(state_.NeedsProof(st.address(), st.incarnation()));
  } else if (auto* cu = std::get_if<CaughtUpCall>(&call.call)) {
    *cu->response->mutable_map() = state_.map();
  } else if (auto* rf = std::get_if<ReplicaFailedCall>(&call.call)) {
    *rf->response->mutable_map() = state_.map();
  } else if (auto* rs = std::get_if<RecoverShardCall>(&call.call)) {
    *rs->response->mutable_map() = state_.map();
  } else if (auto* fr = std::get_if<FinishRecoveryCall>(&call.call)) {
    *fr->response->mutable_map() = state_.map();
  }
}

void CoordinatorCore::Process(absl::Span<CoordinatorCall> calls, int64_t now_ms) {
  ++seq_;
  ClusterState next = state_;
  next.SetStamp(life_, seq_);
  const int64_t gap_limit = absl::ToInt64Milliseconds(options_.lease) / 4;
  if (last_ms_.has_value() && now_ms - *last_ms_ > gap_limit) {
    ++stalls_;
    LogWarning("the coordinator could not hear for %d ms: every lease restarts now",
               now_ms - *last_ms_);
    next.RestartLeases(now_ms);  // T9
  } else if (restart_leases_) {
    next.RestartLeases(now_ms);  // T9: the last write failed
  }
  last_ms_ = now_ms;
  for (CoordinatorCall& call : calls) Apply(next, call, now_ms);
  next.ExpireLeases(now_ms);
  // While writes fail, every batch writes (the unchanged state, if nothing else): the
  // coordinator is healthy again only once a write succeeded.
  if (next.version() != state_.version() || !persist_error_.empty()) {
    v1::CoordinatorState saved;
    next.Save(&saved);
    if (absl::Status st = store_->Write(saved); !st.ok()) {
      ++persist_failures_;
      persist_error_ = std::string(st.message());
      restart_leases_ = true;
      LogError("cannot persist the cluster state (nothing of this batch is published): %s",
               st.ToString());
      for (CoordinatorCall& call : calls) {
        call.status = absl::UnavailableError(absl::StrCat(
            "the coordinator cannot write its state (", st.message(), "); nothing changed, retry"));
      }
      return;
    }
  }
  persist_error_.clear();
  restart_leases_ = false;
  state_ = std::move(next);
  for (CoordinatorCall& call : calls) {
    if (call.status.ok()) Answer(call);
  }
}

}  // namespace tessera
