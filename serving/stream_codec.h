// The Subscribe stream's events (proto/serving.proto) to and from versions
// (docs/online_serving.md, "The stream").
#ifndef TESSERA_SERVING_STREAM_CODEC_H_
#define TESSERA_SERVING_STREAM_CODEC_H_

#include <cstddef>
#include <functional>

#include "absl/status/status.h"
#include "serving/serving_store.h"

namespace tessera::serving {

namespace v1 {
class SubscribeEvent;
}  // namespace v1

// A chunk carries about this many bytes of rows; a subscriber accepts messages up to the
// second figure.
inline constexpr size_t kChunkBytes = size_t{4} << 20;
inline constexpr int kMaxChunkMessageBytes = 64 << 20;

using EventWriter = std::function<bool(const v1::SubscribeEvent&)>;

// Writes one version as VersionBegin, chunks, VersionEnd. False as soon as `write` fails.
bool WriteDelta(const VersionDelta& delta, const EventWriter& write);

// Builds versions from a stream's events and applies each at its VersionEnd, checked against
// the digests it carries. Any event out of place, malformed or over the store's memory limit,
// or a version the store refuses, is an error: the caller drops the stream and subscribes
// again from the version held (nothing of a partial version is applied).
class StreamAssembler {
 public:
  explicit StreamAssembler(ServingStore* store) : store_(store) {}
  absl::Status Take(const v1::SubscribeEvent& event);

 private:
  ServingStore* const store_;
  bool open_ = false;
  VersionDelta pending_;
  size_t pending_bytes_ = 0;
};

}  // namespace tessera::serving

#endif  // TESSERA_SERVING_STREAM_CODEC_H_
