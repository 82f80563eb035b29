// The client's data path: pulls and pushes split by shard and chunk, sent in parallel.
#include <cstring>

#include "absl/strings/str_format.h"
#include "client/client.h"
#include "client/internal/client_impl.h"
#include "client/internal/partition.h"
#include "client/internal/rpc.h"
#include "common/hash.h"
#include "common/wire.h"

namespace tessera {

using client_internal::DenseChunk;
using client_internal::OpTracker;
using client_internal::Rpc;
using client_internal::SparseChunk;

namespace {

// The stub methods, as plain functions Rpc can call.
void IssuePullSparse(v1::ParameterServer::Stub* stub, grpc::ClientContext* ctx,
                     const v1::PullSparseRequest* req, v1::PullSparseResponse* resp,
                     std::function<void(grpc::Status)> done) {
  stub->async()->PullSparse(ctx, req, resp, std::move(done));
}
void IssuePushSparse(v1::ParameterServer::Stub* stub, grpc::ClientContext* ctx,
                     const v1::PushSparseRequest* req, v1::PushResponse* resp,
                     std::function<void(grpc::Status)> done) {
  stub->async()->PushSparse(ctx, req, resp, std::move(done));
}
void IssuePullDense(v1::ParameterServer::Stub* stub, grpc::ClientContext* ctx,
                    const v1::PullDenseRequest* req, v1::PullDenseResponse* resp,
                    std::function<void(grpc::Status)> done) {
  stub->async()->PullDense(ctx, req, resp, std::move(done));
}
void IssuePushDense(v1::ParameterServer::Stub* stub, grpc::ClientContext* ctx,
                    const v1::PushDenseRequest* req, v1::PushResponse* resp,
                    std::function<void(grpc::Status)> done) {
  stub->async()->PushDense(ctx, req, resp, std::move(done));
}

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

}  // namespace

void Client::PullSparseAsync(absl::string_view table, absl::Span<const uint64_t> keys,
                             absl::Span<float> out, StatusCallback done) {
  if (keys.empty()) return done(absl::OkStatus());
  absl::StatusOr<uint32_t> dim = SparseDim(table, keys.size(), out.size());
  if (!dim.ok()) return done(dim.status());
  std::vector<SparseChunk> chunks = client_internal::SplitSparseKeys(
      keys, impl_->map, KeysPerChunk(impl_->options, *dim), /*keep_vshards_whole=*/false);
  auto op = std::make_shared<OpTracker>(chunks.size(), std::move(done));
  for (SparseChunk& chunk : chunks) {
    auto* rpc = new Rpc<v1::PullSparseRequest, v1::PullSparseResponse>(impl_.get(), chunk.shard,
                                                                       &IssuePullSparse, op);
    v1::PullSparseRequest& req = rpc->request;
    req.set_table(std::string(table));
    req.set_key_type(v1::KEY_TYPE_UINT64);
    req.set_dtype(v1::DTYPE_FLOAT32);
    req.set_dim(*dim);
    req.set_num_keys(chunk.positions.size());
    uint64_t* k = PackedResize<uint64_t>(req.mutable_keys(), chunk.positions.size());
    for (size_t j = 0; j < chunk.positions.size(); ++j) k[j] = keys[chunk.positions[j]];
    rpc->consume = [positions = std::move(chunk.positions), out = out.data(), dim = *dim,
                    table = std::string(table)](const v1::PullSparseResponse& resp) {
      const size_t row_bytes = size_t{dim} * sizeof(float);
      if (resp.values().size() != positions.size() * row_bytes) {
        return absl::DataLossError(absl::StrFormat(
            "table '%s': pull of %u keys of dim %u returned %u value bytes", table,
            positions.size(), dim, resp.values().size()));
      }
      const char* src = resp.values().data();
      for (size_t j = 0; j < positions.size(); ++j) {
        std::memcpy(out + size_t{positions[j]} * dim, src + j * row_bytes, row_bytes);
      }
      return absl::OkStatus();
    };
    rpc->Start();
  }
}

void Client::PushSparseAsync(absl::string_view table, absl::Span<const uint64_t> keys,
                             absl::Span<const float> values, StatusCallback done) {
  if (keys.empty()) return done(absl::OkStatus());
  absl::StatusOr<uint32_t> dim = SparseDim(table, keys.size(), values.size());
  if (!dim.ok()) return done(dim.status());
  std::vector<SparseChunk> chunks = client_internal::SplitSparseKeys(
      keys, impl_->map, KeysPerChunk(impl_->options, *dim), /*keep_vshards_whole=*/true);
  auto op = std::make_shared<OpTracker>(chunks.size(), std::move(done));
  const size_t row_bytes = size_t{*dim} * sizeof(float);
  for (const SparseChunk& chunk : chunks) {
    auto* rpc = new Rpc<v1::PushSparseRequest, v1::PushResponse>(impl_.get(), chunk.shard,
                                                                  &IssuePushSparse, op);
    v1::PushSparseRequest& req = rpc->request;
    req.set_table(std::string(table));
    req.set_key_type(v1::KEY_TYPE_UINT64);
    req.set_dtype(v1::DTYPE_FLOAT32);
    req.set_dim(*dim);
    req.set_num_keys(chunk.positions.size());
    const size_t n = chunk.positions.size();
    uint64_t* k = PackedResize<uint64_t>(req.mutable_keys(), n);
    char* v = reinterpret_cast<char*>(PackedResize<float>(req.mutable_values(), n * *dim));
    const char* src = reinterpret_cast<const char*>(values.data());
    for (size_t j = 0; j < n; ++j) {
      const uint32_t p = chunk.positions[j];
      k[j] = keys[p];
      std::memcpy(v + j * row_bytes, src + size_t{p} * row_bytes, row_bytes);
    }
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

}  // namespace

void Client::PullDenseAsync(absl::string_view table, uint64_t offset, absl::Span<float> out,
                            StatusCallback done) {
  if (out.empty()) return done(absl::OkStatus());
  absl::StatusOr<TableConfig> config = impl_->GetTable(table);
  if (!config.ok()) return done(config.status());
  absl::StatusOr<std::vector<DenseChunk>> chunks =
      DenseChunks(impl_->options, impl_->map, *config, offset, out.size());
  if (!chunks.ok()) return done(chunks.status());
  auto op = std::make_shared<OpTracker>(chunks->size(), std::move(done));
  for (const DenseChunk& chunk : *chunks) {
    auto* rpc = new Rpc<v1::PullDenseRequest, v1::PullDenseResponse>(impl_.get(), chunk.shard,
                                                                     &IssuePullDense, op);
    rpc->request.set_table(std::string(table));
    rpc->request.set_dtype(v1::DTYPE_FLOAT32);
    rpc->request.set_offset(chunk.offset);
    rpc->request.set_count(chunk.count);
    rpc->consume = [dst = out.data() + (chunk.offset - offset), count = chunk.count,
                    table = std::string(table)](const v1::PullDenseResponse& resp) {
      if (resp.values().size() != count * sizeof(float)) {
        return absl::DataLossError(
            absl::StrFormat("table '%s': pull of %u elements returned %u value bytes", table,
                            count, resp.values().size()));
      }
      std::memcpy(dst, resp.values().data(), count * sizeof(float));
      return absl::OkStatus();
    };
    rpc->Start();
  }
}

void Client::PushDenseAsync(absl::string_view table, uint64_t offset,
                            absl::Span<const float> values, StatusCallback done) {
  if (values.empty()) return done(absl::OkStatus());
  absl::StatusOr<TableConfig> config = impl_->GetTable(table);
  if (!config.ok()) return done(config.status());
  absl::StatusOr<std::vector<DenseChunk>> chunks =
      DenseChunks(impl_->options, impl_->map, *config, offset, values.size());
  if (!chunks.ok()) return done(chunks.status());
  auto op = std::make_shared<OpTracker>(chunks->size(), std::move(done));
  for (const DenseChunk& chunk : *chunks) {
    auto* rpc = new Rpc<v1::PushDenseRequest, v1::PushResponse>(impl_.get(), chunk.shard,
                                                                 &IssuePushDense, op);
    rpc->request.set_table(std::string(table));
    rpc->request.set_dtype(v1::DTYPE_FLOAT32);
    rpc->request.set_offset(chunk.offset);
    rpc->request.set_count(chunk.count);
    PackedAssign<float>(rpc->request.mutable_values(),
                        values.subspan(chunk.offset - offset, chunk.count));
    rpc->Start();
  }
}

}  // namespace tessera
