// The coordinator's read-only queries, shared by the admin client and the test harness
// (testing/local_cluster.h). Includes generated protobuf headers: never include it from a
// public header.
#ifndef TESSERA_CLIENT_INTERNAL_COORDINATOR_QUERIES_H_
#define TESSERA_CLIENT_INTERNAL_COORDINATOR_QUERIES_H_

#include <grpcpp/grpcpp.h>

#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/cluster.grpc.pb.h"

namespace tessera::client_internal {

// wait_for_ready: a coordinator that is not reachable yet (a channel backing off after a
// restart) is waited for until the timeout, instead of UNAVAILABLE at once.
absl::StatusOr<v1::ClusterMap> FetchClusterMap(const std::shared_ptr<grpc::Channel>& coordinator,
                                               absl::Duration timeout = absl::Seconds(2),
                                               bool wait_for_ready = false);
absl::StatusOr<v1::GetClusterStatusResponse> FetchClusterStatus(
    const std::shared_ptr<grpc::Channel>& coordinator, absl::Duration timeout = absl::Seconds(2),
    bool wait_for_ready = false);

}  // namespace tessera::client_internal

#endif  // TESSERA_CLIENT_INTERNAL_COORDINATOR_QUERIES_H_
