#include "server/request_checks.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"
#include "common/wire.h"
#include "proto/tessera.pb.h"

namespace tessera {

std::string ShortName(const std::string& name) {
  constexpr size_t kMax = 64;
  if (name.size() <= kMax) return name;
  return absl::StrFormat("%s...(%u bytes)", name.substr(0, kMax), name.size());
}

absl::Status CheckDtype(int dtype, const std::string& table) {
  if (dtype == v1::DTYPE_FLOAT32) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrFormat("table '%s': unsupported dtype %d (this server supports DTYPE_FLOAT32)",
                      ShortName(table), dtype));
}

absl::Status CheckKeyType(int key_type, const std::string& table) {
  if (key_type == v1::KEY_TYPE_UINT64) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrFormat("table '%s': unknown key_type %d (this server supports KEY_TYPE_UINT64)",
                      ShortName(table), key_type));
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
  return absl::InvalidArgumentError(absl::StrFormat("table '%s': value %u of %u is not finite (%g)",
                                                    ShortName(table), i, n, values[i]));
}

absl::StatusOr<absl::Span<const float>> PushValues(absl::string_view bytes, uint64_t count,
                                                   const std::string& table,
                                                   std::vector<float>* scratch, bool trusted) {
  // (count is bounded by the request limits, so count * 4 does not wrap; still, compare by
  // division so that no limit setting can make it.)
  if (bytes.size() % sizeof(float) != 0 || bytes.size() / sizeof(float) != count) {
    return absl::InvalidArgumentError(
        absl::StrFormat("table '%s': %u values need %u value bytes, got %u", ShortName(table),
                        count, count * sizeof(float), bytes.size()));
  }
  absl::Span<const float> values = PackedView<float>(bytes, scratch);
  if (!trusted) {
    absl::Status st = CheckFinite(values.data(), values.size(), table);
    if (!st.ok()) return st;
  }
  return values;
}

absl::Status CheckDistinct(absl::Span<const uint64_t> keys, const VshardGrouping& groups,
                           const std::string& table) {
  if (std::optional<uint64_t> dup = FindRepeatedKeyInRuns(keys, groups.order, groups.runs);
      dup.has_value()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "table '%s': key %u appears more than once in one push; sum its gradients first",
        ShortName(table), *dup));
  }
  return absl::OkStatus();
}

absl::Status CheckPushId(const v1::PushId& id, const std::string& table) {
  if (id.client_id() == 0 || id.sequence() == 0 || id.floor() > id.sequence()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "table '%s': push id needs client_id != 0, sequence >= 1 and floor <= sequence "
        "(got client_id=%u sequence=%u floor=%u)",
        ShortName(table), id.client_id(), id.sequence(), id.floor()));
  }
  return absl::OkStatus();
}

absl::Status CheckAssign(bool assign, uint64_t accumulate_step, const std::string& table) {
  if (assign && accumulate_step != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("table '%s': a push cannot both assign values and accumulate step %u",
                        ShortName(table), accumulate_step));
  }
  return absl::OkStatus();
}

}  // namespace tessera
