// The handle-returning and owned-buffer forms of the client's asynchronous calls
// (client/client.h), on top of the callback forms in client_data.cc.
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "client/call.h"
#include "client/client.h"
#include "client/internal/client_impl.h"

namespace tessera {

Call Client::PullSparseAsync(absl::string_view table, absl::Span<const uint64_t> keys,
                             absl::Span<float> out) {
  auto [call, done] = Call::Pending();
  PullSparseAsync(table, keys, out, std::move(done));
  return call;
}

Call Client::PushSparseAsync(absl::string_view table, absl::Span<const uint64_t> keys,
                             absl::Span<const float> values, const PushOptions& options) {
  auto [call, done] = Call::Pending();
  PushSparseAsync(table, keys, values, std::move(done), options);
  return call;
}

Call Client::PullDenseAsync(absl::string_view table, uint64_t offset, absl::Span<float> out) {
  auto [call, done] = Call::Pending();
  PullDenseAsync(table, offset, out, std::move(done));
  return call;
}

Call Client::PushDenseAsync(absl::string_view table, uint64_t offset,
                            absl::Span<const float> values, const PushOptions& options) {
  auto [call, done] = Call::Pending();
  PushDenseAsync(table, offset, values, std::move(done), options);
  return call;
}

namespace {

using Rows = Result<std::vector<float>>;

// A call that completed before anything was sent: a refusal, or nothing to do (OK).
Rows Completed(absl::Status s) {
  return Rows(Call::Done(std::move(s)), std::make_shared<std::vector<float>>());
}

// The resolved config of `table` (cached by the client), which must be of `kind`.
absl::StatusOr<TableConfig> TableOfKind(Client::Impl& impl, absl::string_view table,
                                        TableKind kind) {
  absl::StatusOr<TableConfig> config = impl.GetTable(table);
  if (config.ok() && config->kind != kind) {
    const bool sparse = kind == TableKind::kSparse;
    return absl::FailedPreconditionError(absl::StrFormat("table '%s' is %s, not %s", table,
                                                         sparse ? "dense" : "sparse",
                                                         sparse ? "sparse" : "dense"));
  }
  return config;
}

}  // namespace

Rows Client::PullSparseAsync(absl::string_view table, std::vector<uint64_t> keys) {
  if (keys.empty()) return Completed(absl::OkStatus());
  absl::StatusOr<TableConfig> config = TableOfKind(*impl_, table, TableKind::kSparse);
  if (!config.ok()) return Completed(config.status());
  if (config->dim == 0 ||
      keys.size() > std::numeric_limits<size_t>::max() / sizeof(float) / config->dim) {
    return Completed(absl::InvalidArgumentError(absl::StrFormat(
        "table '%s': %u keys of dim %u do not fit in memory", table, keys.size(), config->dim)));
  }
  auto rows = std::make_shared<std::vector<float>>(keys.size() * config->dim);
  auto owned = std::make_shared<std::vector<uint64_t>>(std::move(keys));
  auto [call, done] = Call::Pending();
  // The callback holds the keys and the rows until the last RPC is done with them.
  PullSparseAsync(table, *owned, absl::MakeSpan(*rows),
                  [owned, rows, done = std::move(done)](absl::Status s) { done(std::move(s)); });
  return Rows(call, rows);
}

Rows Client::PullDenseAsync(absl::string_view table, uint64_t offset, size_t size) {
  if (size == 0) return Completed(absl::OkStatus());
  // The range is checked before the buffer is allocated (a size is the caller's to get wrong).
  absl::StatusOr<TableConfig> config = TableOfKind(*impl_, table, TableKind::kDense);
  if (!config.ok()) return Completed(config.status());
  if (offset > config->dense_size || size > config->dense_size - offset) {
    return Completed(absl::InvalidArgumentError(
        absl::StrFormat("table '%s': range [%u, %u) is outside the table's %u elements", table,
                        offset, offset + size, config->dense_size)));
  }
  auto values = std::make_shared<std::vector<float>>(size);
  auto [call, done] = Call::Pending();
  PullDenseAsync(table, offset, absl::MakeSpan(*values),
                 [values, done = std::move(done)](absl::Status s) { done(std::move(s)); });
  return Rows(call, values);
}

Call Client::PushSparseAsync(absl::string_view table, std::vector<uint64_t>&& keys,
                             std::vector<float>&& values, const PushOptions& options) {
  auto owned_keys = std::make_shared<std::vector<uint64_t>>(std::move(keys));
  auto owned_values = std::make_shared<std::vector<float>>(std::move(values));
  auto [call, done] = Call::Pending();
  PushSparseAsync(
      table, *owned_keys, *owned_values,
      [owned_keys, owned_values, done = std::move(done)](absl::Status s) { done(std::move(s)); },
      options);
  return call;
}

Call Client::PushDenseAsync(absl::string_view table, uint64_t offset, std::vector<float>&& values,
                            const PushOptions& options) {
  auto owned = std::make_shared<std::vector<float>>(std::move(values));
  auto [call, done] = Call::Pending();
  PushDenseAsync(
      table, offset, *owned,
      [owned, done = std::move(done)](absl::Status s) { done(std::move(s)); }, options);
  return call;
}

}  // namespace tessera
