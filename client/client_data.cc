// The client's data path: pulls and pushes split by shard and chunk, sent in parallel on the
// raw (ByteBuffer) API. Bulk arrays go out as slices over the caller's memory where its layout
// allows (dense pushes) and come back copied once, straight to their destination.
#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"
#include "client/client.h"
#include "client/internal/client_impl.h"
#include "client/internal/partition.h"
#include "client/internal/rpc.h"
#include "common/bulk_codec.h"
#include "common/hash.h"
#include "common/wire.h"
#include "proto/tessera.pb.h"

namespace tessera {

using client_internal::DenseChunk;
using client_internal::OpTracker;
using client_internal::Rpc;
using client_internal::SparseChunk;

namespace {

// Field numbers of the bulk fields (proto/tessera.proto).
constexpr int kPullSparseKeys = v1::PullSparseRequest::kKeysFieldNumber;
constexpr int kPullSparseValues = v1::PullSparseResponse::kValuesFieldNumber;
constexpr int kPushSparseKeys = v1::PushSparseRequest::kKeysFieldNumber;
constexpr int kPushSparseValues = v1::PushSparseRequest::kValuesFieldNumber;
constexpr int kPullDenseValues = v1::PullDenseResponse::kValuesFieldNumber;
constexpr int kPushDenseValues = v1::PushDenseRequest::kValuesFieldNumber;
// Pushes pad their keys and values to 8-byte alignment: the server reads them in place.
constexpr int kPushPadding = v1::PushSparseRequest::kPaddingFieldNumber;
static_assert(kPushPadding == v1::PushDenseRequest::kPaddingFieldNumber);

// dim of a sparse call, from the buffer sizes.
absl::StatusOr<uint32_t> SparseDim(absl::string_view table, size_t num_keys, size_t num_values) {
  if (num_values % num_keys != 0 || num_values == 0 || num_values / num_keys > kMaxSparseDim) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "table '%s': %u keys need a value buffer of keys x dim floats, got %u floats", table,
        num_keys, num_values));
  }
  return static_cast<uint32_t>(num_values / num_keys);
}

uint32_t KeysPerChunk(const ClientOptions& o, uint32_t dim) {
  return static_cast<uint32_t>(std::max<size_t>(1, o.chunk_bytes / (dim * sizeof(float) + 8)));
}

// A response that does not decode is the server's fault, not the caller's.
absl::Status AsDataLoss(absl::Status s) {
  if (s.ok() || s.code() != absl::StatusCode::kInvalidArgument) return s;
  return absl::DataLossError(s.message());
}

// Decodes a PushResponse and counts duplicate acknowledgements.
Rpc::ConsumeFn ConsumePush(Client::Impl* impl) {
  return [impl](const grpc::ByteBuffer& bytes) {
    v1::PushResponse resp;
    absl::Status s = DecodeWithBulk(bytes, &resp, /*bulk_field_number=*/-1,
                                    [](size_t, BulkDest*) { return absl::OkStatus(); });
    if (s.ok() && resp.duplicate()) {
      impl->duplicate_acks.fetch_add(1, std::memory_order_relaxed);
    }
    return AsDataLoss(s);
  };
}

// The small fields of a sparse request for n keys.
template <typename Header>
std::shared_ptr<Header> SparseHeader(const Client::Impl& impl, absl::string_view table,
                                     uint32_t dim, size_t n) {
  auto header = std::make_shared<Header>();
  impl.FillHeader(header->mutable_header());
  header->set_table(std::string(table));
  header->set_key_type(v1::KEY_TYPE_UINT64);
  header->set_dtype(v1::DTYPE_FLOAT32);
  header->set_dim(dim);
  header->set_num_keys(n);
  return header;
}

void SetPushId(const Rpc& rpc, v1::PushId* id) {
  id->set_client_id(rpc.client_id());
  id->set_sequence(rpc.sequence());
  id->set_floor(rpc.floor());
}

}  // namespace

void Client::PullSparseAsync(absl::string_view table, absl::Span<const uint64_t> keys,
                             absl::Span<float> out, StatusCallback done) {
  if (keys.empty()) return done(absl::OkStatus());
  absl::StatusOr<uint32_t> dim = SparseDim(table, keys.size(), out.size());
  if (!dim.ok()) return done(dim.status());
  client_internal::SparseSplit split =
      client_internal::SplitSparseKeys(keys, impl_->map, KeysPerChunk(impl_->options, *dim));
  auto op = std::make_shared<OpTracker>(split.chunks.size(), std::move(done));
  const size_t row_bytes = size_t{*dim} * sizeof(float);
  for (const SparseChunk& chunk : split.chunks) {
    auto* rpc = new Rpc(impl_.get(), chunk.shard, "PullSparse", /*push=*/false, op);
    const size_t n = chunk.count;
    auto header = SparseHeader<v1::PullSparseRequest>(*impl_, table, *dim, n);
    // Keys sent from the caller's array, or from the split's regrouped copy of them.
    const uint64_t* first_key =
        (split.in_place() ? keys.data() : split.keys.get()) + size_t{chunk.first};
    rpc->encode = [header, first_key, n, packed = split.keys](Rpc& r) {
      return EncodeWithBulk(*header, {r.Borrow(kPullSparseKeys, first_key, n * sizeof(uint64_t))});
    };
    rpc->consume = [chunk, order = split.order, out = out.data(), dim = *dim, row_bytes,
                    table = std::string(table)](const grpc::ByteBuffer& bytes) {
      v1::PullSparseResponse resp;
      return AsDataLoss(
          DecodeWithBulk(bytes, &resp, kPullSparseValues, [&](size_t size, BulkDest* dest) {
            if (size != chunk.count * row_bytes) {
              return absl::DataLossError(
                  absl::StrFormat("table '%s': pull of %u keys of dim %u returned "
                                  "%u value bytes",
                                  table, chunk.count, dim, size));
            }
            if (order == nullptr) {
              dest->data = reinterpret_cast<char*>(out + size_t{chunk.first} * dim);
            } else {
              // Each row straight from the received slices to its place in the caller's order.
              dest->data = reinterpret_cast<char*>(out);
              dest->record_bytes = row_bytes;
              dest->places = order.get() + chunk.first;
            }
            return absl::OkStatus();
          }));
    };
    rpc->Start();
  }
}

void Client::PushSparseAsync(absl::string_view table, absl::Span<const uint64_t> keys,
                             absl::Span<const float> values, StatusCallback done,
                             const PushOptions& options) {
  if (keys.empty()) return done(absl::OkStatus());
  absl::StatusOr<uint32_t> dim = SparseDim(table, keys.size(), values.size());
  if (!dim.ok()) return done(dim.status());
  std::optional<uint64_t> repeated;
  client_internal::SparseSplit split = client_internal::SplitSparseKeys(
      keys, impl_->map, KeysPerChunk(impl_->options, *dim), &repeated);
  if (repeated.has_value()) {
    return done(absl::InvalidArgumentError(absl::StrFormat(
        "table '%s': key %u occurs more than once in one push (sum its gradients first); "
        "nothing was sent",
        table, *repeated)));
  }
  auto op = std::make_shared<OpTracker>(split.chunks.size(), std::move(done));
  const size_t row_bytes = size_t{*dim} * sizeof(float);
  for (const SparseChunk& chunk : split.chunks) {
    auto* rpc = new Rpc(impl_.get(), chunk.shard, "PushSparse", /*push=*/true, op);
    const size_t n = chunk.count;
    auto header = SparseHeader<v1::PushSparseRequest>(*impl_, table, *dim, n);
    header->set_accumulate_step(options.accumulate_step);
    header->set_assign(options.assign);
    header->set_step(options.step);
    if (split.in_place()) {
      // Sent from the caller's buffers in place (zero copy).
      const uint64_t* first_key = keys.data() + chunk.first;
      const float* first_row = values.data() + size_t{chunk.first} * *dim;
      rpc->encode = [header, first_key, first_row, n, row_bytes](Rpc& r) {
        SetPushId(r, header->mutable_id());
        return EncodeWithBulk(*header,
                              {r.Borrow(kPushSparseKeys, first_key, n * sizeof(uint64_t)),
                               r.Borrow(kPushSparseValues, first_row, n * row_bytes)},
                              kPushPadding);
      };
    } else {
      // Keys from the split's regrouped copy; rows gathered once (into a buffer that is not
      // zeroed first), the next rows on their way while one is copied.
      std::shared_ptr<char[]> packed_values(new char[n * row_bytes]);
      const char* src = reinterpret_cast<const char*>(values.data());
      const uint32_t* from = split.order.get() + chunk.first;
      char* dst = packed_values.get();
      constexpr size_t kAhead = 8;
      for (size_t j = 0; j < n; ++j) {
        if (j + kAhead < n) {
          const char* next = src + size_t{from[j + kAhead]} * row_bytes;
          __builtin_prefetch(next);
          __builtin_prefetch(next + row_bytes - 1);
        }
        std::memcpy(dst + j * row_bytes, src + size_t{from[j]} * row_bytes, row_bytes);
      }
      const uint64_t* first_key = split.keys.get() + chunk.first;
      rpc->encode = [header, packed = split.keys, first_key, packed_values, n, row_bytes](Rpc& r) {
        SetPushId(r, header->mutable_id());
        return EncodeWithBulk(*header,
                              {r.Borrow(kPushSparseKeys, first_key, n * sizeof(uint64_t)),
                               r.Borrow(kPushSparseValues, packed_values.get(), n * row_bytes)},
                              kPushPadding);
      };
    }
    rpc->consume = ConsumePush(impl_.get());
    rpc->Start();
  }
}

namespace {

// The dense chunks of [offset, offset + size) of `config`, or an error naming the table.
absl::StatusOr<std::vector<DenseChunk>> DenseChunks(const ClientOptions& o, const ShardMap& map,
                                                    const TableConfig& config, uint64_t offset,
                                                    size_t size) {
  if (config.kind != TableKind::kDense) {
    return absl::FailedPreconditionError(
        absl::StrFormat("table '%s' is sparse, not dense", config.name));
  }
  if (offset > config.dense_size || size > config.dense_size - offset) {
    return absl::InvalidArgumentError(
        absl::StrFormat("table '%s': range [%u, %u) is outside the table's %u elements",
                        config.name, offset, offset + size, config.dense_size));
  }
  return client_internal::SplitDenseRange(Fnv1a64(config.name), config.dense_size,
                                          config.dense_block_elems, map, offset, size,
                                          std::max<size_t>(1, o.chunk_bytes / sizeof(float)));
}

// Splits a dense call on [offset, offset + size) into one RPC per chunk; setup(rpc, header,
// chunk) attaches each one's encoding and response handling before it starts.
template <typename Header, typename SetupFn>
void StartDense(Client::Impl* impl, absl::string_view table, uint64_t offset, size_t size,
                const char* method, bool push, StatusCallback done, SetupFn&& setup) {
  if (size == 0) return done(absl::OkStatus());
  absl::StatusOr<TableConfig> config = impl->GetTable(table);
  if (!config.ok()) return done(config.status());
  absl::StatusOr<std::vector<DenseChunk>> chunks =
      DenseChunks(impl->options, impl->map, *config, offset, size);
  if (!chunks.ok()) return done(chunks.status());
  auto op = std::make_shared<OpTracker>(chunks->size(), std::move(done));
  for (const DenseChunk& chunk : *chunks) {
    auto* rpc = new Rpc(impl, chunk.shard, method, push, op);
    auto header = std::make_shared<Header>();
    impl->FillHeader(header->mutable_header());
    header->set_table(std::string(table));
    header->set_dtype(v1::DTYPE_FLOAT32);
    header->set_offset(chunk.offset);
    header->set_count(chunk.count);
    setup(*rpc, std::move(header), chunk);
    rpc->Start();
  }
}

}  // namespace

void Client::PullDenseAsync(absl::string_view table, uint64_t offset, absl::Span<float> out,
                            StatusCallback done) {
  StartDense<v1::PullDenseRequest>(
      impl_.get(), table, offset, out.size(), "PullDense", /*push=*/false, std::move(done),
      [&](Rpc& rpc, std::shared_ptr<v1::PullDenseRequest> header, const DenseChunk& chunk) {
        rpc.encode = [header](Rpc&) { return EncodeWithBulk(*header, {}); };
        // The values land directly in the caller's buffer.
        rpc.consume = [dst = reinterpret_cast<char*>(out.data() + (chunk.offset - offset)),
                       count = chunk.count, table = std::string(table)](const grpc::ByteBuffer& b) {
          v1::PullDenseResponse resp;
          return AsDataLoss(
              DecodeWithBulk(b, &resp, kPullDenseValues, [&](size_t size, BulkDest* d) {
                if (size != count * sizeof(float)) {
                  return absl::DataLossError(
                      absl::StrFormat("table '%s': pull of %u elements returned %u value bytes",
                                      table, count, size));
                }
                d->data = dst;
                return absl::OkStatus();
              }));
        };
      });
}

void Client::PushDenseAsync(absl::string_view table, uint64_t offset,
                            absl::Span<const float> values, StatusCallback done,
                            const PushOptions& options) {
  StartDense<v1::PushDenseRequest>(
      impl_.get(), table, offset, values.size(), "PushDense", /*push=*/true, std::move(done),
      [&](Rpc& rpc, std::shared_ptr<v1::PushDenseRequest> header, const DenseChunk& chunk) {
        // Sent straight from the caller's buffer (zero copy): the call completes only after
        // gRPC released it.
        const float* data = values.data() + (chunk.offset - offset);
        header->set_accumulate_step(options.accumulate_step);
        header->set_assign(options.assign);
        rpc.encode = [header, data, count = chunk.count](Rpc& r) {
          SetPushId(r, header->mutable_id());
          return EncodeWithBulk(*header, {r.Borrow(kPushDenseValues, data, count * sizeof(float))},
                                kPushPadding);
        };
        rpc.consume = ConsumePush(rpc.impl());
      });
}

}  // namespace tessera
