#include "server/replication_codec.h"

#include "absl/strings/str_cat.h"
#include "common/slice_reader.h"
#include "proto/cluster.pb.h"

namespace tessera {
namespace {

void AppendVarintField(uint32_t field, uint64_t v, std::string* out) {
  AppendVarint((field << 3) | 0, out);
  AppendVarint(v, out);
}

}  // namespace

grpc::ByteBuffer EncodeBatch(const v1::ReplicateRequest& header, const std::vector<Entry*>& batch) {
  std::vector<grpc::Slice> slices;
  slices.emplace_back(header.SerializeAsString());
  for (Entry* e : batch) {
    const size_t len = e->request.Length();
    std::string fields;  // LogEntry: kind, time_ms, table_id, then the request's header
    AppendVarintField(1, e->kind, &fields);
    AppendVarintField(3, static_cast<uint64_t>(e->time_ms), &fields);
    AppendVarintField(4, e->table_id, &fields);
    AppendVarint((2 << 3) | 2, &fields);  // request
    AppendVarint(len, &fields);
    std::string prefix;
    AppendVarint((5 << 3) | 2, &prefix);  // entries
    AppendVarint(fields.size() + len, &prefix);
    prefix += fields;
    slices.emplace_back(prefix);
    std::vector<grpc::Slice> parts;
    (void)e->request.Dump(&parts);
    for (auto& p : parts) slices.push_back(std::move(p));
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

absl::Status DecodeBatch(const grpc::ByteBuffer& bytes, DecodedBatch* out) {
  std::vector<grpc::Slice> slices;
  if (!bytes.Dump(&slices).ok()) return absl::InvalidArgumentError("unreadable ReplicateRequest");
  SliceReader r(std::move(slices));
  auto malformed = [](const char* what) {
    return absl::InvalidArgumentError(absl::StrCat("malformed ReplicateRequest: ", what));
  };
  while (!r.done()) {
    uint64_t tag, v;
    if (!r.ReadVarint(&tag)) return malformed("bad tag");
    const uint32_t field = static_cast<uint32_t>(tag >> 3), type = tag & 7;
    if (type == 0) {
      if (!r.ReadVarint(&v)) return malformed("bad varint");
      if (field == 1) out->epoch = v;
      if (field == 2) out->shard = static_cast<uint32_t>(v);
      if (field == 4) out->first_lsn = v;
      if (field == 6) out->primary_incarnation = v;
      continue;
    }
    if (type != 2 || !r.ReadVarint(&v)) return malformed("unexpected field");
    if (field == 3) {
      // (nothing is allocated for a length the message does not hold)
      if (v > bytes.Length()) return malformed("truncated primary");
      out->primary.resize(v);
      if (!r.Read(v, out->primary.data())) return malformed("truncated primary");
    } else if (field == 5) {
      // A LogEntry: kind (1), time_ms (3), table_id (4), request (2, bytes), in any order.
      uint64_t left = v;
      DecodedBatch::Item item;
      std::vector<grpc::Slice> request;
      while (left > 0) {
        uint64_t etag, ev;
        if (!r.ReadVarint(&etag) || !r.ReadVarint(&ev)) return malformed("bad entry");
        const uint64_t used = VarintSize(etag) + VarintSize(ev);
        if ((etag & 7) == 0) {
          if ((etag >> 3) == 1) item.kind = static_cast<int>(ev);
          if ((etag >> 3) == 3) item.time_ms = static_cast<int64_t>(ev);
          if ((etag >> 3) == 4) item.table_id = ev;
          if (used > left) return malformed("entry overrun");
          left -= used;
        } else if ((etag & 7) == 2) {
          if (used + ev > left) return malformed("entry overrun");
          if ((etag >> 3) == 2) {
            if (!r.ReadSlices(ev, &request)) return malformed("truncated request");
          } else if (!r.Read(ev, nullptr)) {
            return malformed("truncated entry field");
          }
          left -= used + ev;
        } else {
          return malformed("unexpected entry field");
        }
      }
      item.request = grpc::ByteBuffer(request.data(), request.size());
      out->entries.push_back(std::move(item));
    } else if (!r.Read(v, nullptr)) {
      return malformed("truncated field");
    }
  }
  return absl::OkStatus();
}

}  // namespace tessera
