#include "serving/stream_codec.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"
#include "common/wire.h"
#include "serving.pb.h"

namespace tessera::serving {
namespace {

namespace pb = tessera::serving::v1;

template <typename T>
void AppendBytes(std::string* out, const T* data, size_t n) {
  out->append(reinterpret_cast<const char*>(data), n * sizeof(T));
}

template <typename T>
std::vector<T> FromBytes(const std::string& bytes) {
  std::vector<T> out(bytes.size() / sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
  return out;
}

bool WriteBegin(uint64_t version, uint64_t parent, int64_t created, uint32_t num_vshards,
                const std::vector<std::pair<const TableConfig*, bool>>& tables,
                const EventWriter& write) {
  pb::SubscribeEvent e;
  pb::VersionBegin* b = e.mutable_begin();
  b->set_version(version);
  b->set_parent_version(parent);
  b->set_created_unix_ms(created);
  b->set_num_vshards(num_vshards);
  for (const auto& [config, full] : tables) {
    pb::TableHeader* h = b->add_tables();
    TableConfigToProto(*config, h->mutable_spec());
    h->set_full(full);
  }
  return write(e);
}

bool WriteEnd(uint64_t version, const std::vector<TableDigest>& digests, const EventWriter& write) {
  pb::SubscribeEvent e;
  pb::VersionEnd* end = e.mutable_end();
  end->set_version(version);
  for (const TableDigest& d : digests) {
    pb::TableDigest* t = end->add_digests();
    t->set_name(d.name);
    t->set_digest(d.digest);
    t->set_rows(d.rows);
  }
  return write(e);
}

// Rows [first, last) of a vshard (and its tombstones, with the first piece) in chunks.
class ChunkWriter {
 public:
  ChunkWriter(uint32_t table, uint32_t vshard, uint32_t width, const EventWriter& write)
      : width_(width), write_(write) {
    chunk_ = event_.mutable_chunk();
    chunk_->set_table(table);
    chunk_->set_vshard(vshard);
  }
  bool Tombstones(const std::vector<uint64_t>& keys) {
    AppendBytes(chunk_->mutable_tombstones(), keys.data(), keys.size());
    return true;
  }
  bool Row(uint64_t key, const float* weights) {
    AppendBytes(chunk_->mutable_keys(), &key, 1);
    AppendBytes(chunk_->mutable_weights(), weights, width_);
    if (chunk_->keys().size() + chunk_->weights().size() < kChunkBytes) return true;
    return Flush();
  }
  bool Finish() {
    return chunk_->keys().empty() && chunk_->tombstones().empty() && sent_ ? true : Flush();
  }

 private:
  bool Flush() {
    sent_ = true;
    const bool ok = write_(event_);
    chunk_->clear_keys();
    chunk_->clear_weights();
    chunk_->clear_tombstones();
    return ok;
  }
  const uint32_t width_;
  const EventWriter& write_;
  pb::SubscribeEvent event_;
  pb::DeltaChunk* chunk_;
  bool sent_ = false;
};

}  // namespace

bool WriteDelta(const VersionDelta& delta, const EventWriter& write) {
  std::vector<std::pair<const TableConfig*, bool>> headers;
  for (const TableDelta& t : delta.tables) headers.emplace_back(&t.config, t.full);
  if (!WriteBegin(delta.version, delta.parent, delta.created_unix_ms, delta.num_vshards, headers,
                  write)) {
    return false;
  }
  for (uint32_t i = 0; i < delta.tables.size(); ++i) {
    const TableDelta& t = delta.tables[i];
    const uint32_t width = RowWidth(t.config);
    for (const VshardDelta& v : t.vshards) {
      ChunkWriter chunks(i, v.vshard, width, write);
      chunks.Tombstones(v.tombstones);
      for (size_t k = 0; k < v.keys.size(); ++k) {
        if (!chunks.Row(v.keys[k], &v.weights[k * width])) return false;
      }
      if (!chunks.Finish()) return false;
    }
  }
  return WriteEnd(delta.version, delta.digests, write);
}

absl::Status StreamAssembler::Take(const pb::SubscribeEvent& event) {
  switch (event.event_case()) {
    case pb::SubscribeEvent::kHeartbeat:
      return absl::OkStatus();
    case pb::SubscribeEvent::kBegin: {
      if (open_) {
        return absl::DataLossError(absl::StrFormat("version %u began before version %u ended",
                                                   event.begin().version(), pending_.version));
      }
      const pb::VersionBegin& b = event.begin();
      pending_ = VersionDelta{};
      pending_.version = b.version();
      pending_.parent = b.parent_version();
      pending_.created_unix_ms = b.created_unix_ms();
      pending_.num_vshards = b.num_vshards();
      for (const pb::TableHeader& h : b.tables()) {
        absl::StatusOr<TableConfig> config = TableConfigFromProto(h.spec());
        if (!config.ok()) {
          return absl::InvalidArgumentError(
              absl::StrFormat("version %u: table '%s': %s", b.version(),
                              h.spec().name().substr(0, 64), config.status().message()));
        }
        if (pending_.parent == 0 && !h.full()) {
          return absl::InvalidArgumentError(absl::StrFormat(
              "version %u has no parent but a table that is not full", b.version()));
        }
        pending_.tables.push_back({.config = *std::move(config), .full = h.full()});
      }
      pending_bytes_ = pending_.Bytes();
      open_ = true;
      return absl::OkStatus();
    }
    case pb::SubscribeEvent::kChunk: {
      const pb::DeltaChunk& c = event.chunk();
      if (!open_) return absl::DataLossError("a chunk outside a version");
      if (c.table() >= pending_.tables.size()) {
        return absl::InvalidArgumentError(absl::StrFormat("version %u: a chunk of table %u of %u",
                                                          pending_.version, c.table(),
                                                          pending_.tables.size()));
      }
      TableDelta& t = pending_.tables[c.table()];
      const uint32_t width = RowWidth(t.config);
      const size_t keys = c.keys().size() / 8;
      if (c.keys().size() % 8 != 0 || c.tombstones().size() % 8 != 0 ||
          c.weights().size() != keys * width * sizeof(float)) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "version %u table '%s': a malformed chunk (group %u, %u key bytes, %u weight "
            "bytes, %u tombstone bytes)",
            pending_.version, t.config.name.substr(0, 64), c.vshard(), c.keys().size(),
            c.weights().size(), c.tombstones().size()));
      }
      pending_bytes_ += c.keys().size() + c.weights().size() + c.tombstones().size();
      const uint64_t limit = store_->max_memory_bytes();
      if (limit != 0 && pending_bytes_ + static_cast<uint64_t>(store_->bytes()) > limit) {
        return absl::ResourceExhaustedError(absl::StrFormat(
            "version %u does not fit in --max_memory_bytes=%u (%u held, %u received)",
            pending_.version, limit, store_->bytes(), pending_bytes_));
      }
      if (t.vshards.empty() || t.vshards.back().vshard != c.vshard()) {
        if (!t.vshards.empty() && t.vshards.back().vshard > c.vshard()) {
          return absl::InvalidArgumentError(
              absl::StrFormat("version %u table '%s': vshard %u after vshard %u", pending_.version,
                              t.config.name.substr(0, 64), c.vshard(), t.vshards.back().vshard));
        }
        t.vshards.push_back({.vshard = c.vshard()});
      }
      VshardDelta& v = t.vshards.back();
      std::vector<uint64_t> k = FromBytes<uint64_t>(c.keys());
      v.keys.insert(v.keys.end(), k.begin(), k.end());
      std::vector<float> w = FromBytes<float>(c.weights());
      v.weights.insert(v.weights.end(), w.begin(), w.end());
      std::vector<uint64_t> tomb = FromBytes<uint64_t>(c.tombstones());
      v.tombstones.insert(v.tombstones.end(), tomb.begin(), tomb.end());
      return absl::OkStatus();
    }
    case pb::SubscribeEvent::kEnd: {
      if (!open_ || event.end().version() != pending_.version) {
        return absl::DataLossError(
            absl::StrFormat("the end of version %u out of place", event.end().version()));
      }
      open_ = false;
      std::vector<TableDigest> expected;
      for (const pb::TableDigest& d : event.end().digests()) {
        expected.push_back({d.name(), d.digest(), d.rows()});
      }
      std::sort(expected.begin(), expected.end(),
                [](const auto& a, const auto& b) { return a.name < b.name; });
      if (expected.size() != pending_.tables.size()) {
        return absl::DataLossError(absl::StrFormat("version %u: %u digests for %u tables",
                                                   pending_.version, expected.size(),
                                                   pending_.tables.size()));
      }
      return store_->Apply(std::move(pending_), expected);
    }
    case pb::SubscribeEvent::EVENT_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError("an empty stream event");
}

}  // namespace tessera::serving
