#include "common/bulk_codec.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "common/wire.h"
#include "proto/tessera.pb.h"

namespace tessera {
namespace {

std::string Flatten(const grpc::ByteBuffer& b) {
  std::vector<grpc::Slice> slices;
  REQUIRE(b.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices)
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

grpc::ByteBuffer FromString(const std::string& s, size_t piece) {
  std::vector<grpc::Slice> slices;
  for (size_t at = 0; at < s.size(); at += piece) slices.emplace_back(s.substr(at, piece));
  return grpc::ByteBuffer(slices.data(), slices.size());
}

TEST_CASE("bulk-encoded messages are ordinary protobuf", "[bulk_codec]") {
  std::vector<float> values(1000);
  std::iota(values.begin(), values.end(), 0.5f);
  v1::PushDenseRequest header;
  header.set_table("w");
  header.set_offset(7);
  header.set_count(values.size());
  header.mutable_id()->set_sequence(3);
  int released = 0;
  grpc::ByteBuffer bytes;
  {
    BulkField f{v1::PushDenseRequest::kValuesFieldNumber, values.data(),
                values.size() * sizeof(float), [](void* n) { ++*static_cast<int*>(n); }, &released};
    bytes = EncodeWithBulk(header, {f});
  }
  CHECK(released == 0);  // gRPC (here: the ByteBuffer) still holds the borrowed bytes
  v1::PushDenseRequest parsed;
  REQUIRE(parsed.ParseFromString(Flatten(bytes)));
  CHECK(parsed.table() == "w");
  CHECK(parsed.id().sequence() == 3);
  REQUIRE(parsed.values().size() == values.size() * sizeof(float));
  CHECK(std::memcmp(parsed.values().data(), values.data(), parsed.values().size()) == 0);
  bytes.Clear();
  CHECK(released == 1);
}

TEST_CASE("decoding copies the bulk field to its destination across slices", "[bulk_codec]") {
  v1::PullSparseResponse resp;
  resp.set_dim(4);
  resp.set_num_keys(300);
  std::vector<float> values(1200);
  std::iota(values.begin(), values.end(), 1.0f);
  PackedAssign<float>(resp.mutable_values(), values);
  const std::string wire = resp.SerializeAsString();
  for (size_t piece : {1ul, 7ul, 4096ul, wire.size()}) {
    std::vector<float> out(1200);
    v1::PullSparseResponse header;
    absl::Status s =
        DecodeWithBulk(FromString(wire, piece), &header, v1::PullSparseResponse::kValuesFieldNumber,
                       [&](size_t size, BulkDest* dest) {
                         REQUIRE(size == out.size() * sizeof(float));
                         dest->data = reinterpret_cast<char*>(out.data());
                         return absl::OkStatus();
                       });
    REQUIRE(s.ok());
    CHECK(header.dim() == 4);
    CHECK(header.num_keys() == 300);
    CHECK(header.values().empty());
    CHECK(out == values);
  }
}

TEST_CASE("scattered decoding puts each record at its place across any slicing", "[bulk_codec]") {
  // 300 rows of 3 floats (12 bytes: rows straddle slices of 1, 7, 4096 bytes), placed in a
  // permuted order into a buffer with room for 301 rows (the last must stay untouched).
  v1::PullSparseResponse resp;
  std::vector<float> values(900);
  std::iota(values.begin(), values.end(), 1.0f);
  PackedAssign<float>(resp.mutable_values(), values);
  const std::string wire = resp.SerializeAsString();
  std::vector<uint32_t> places(300);
  std::iota(places.begin(), places.end(), 0u);
  std::mt19937 rng(7);
  std::shuffle(places.begin(), places.end(), rng);
  for (size_t piece : {1ul, 7ul, 13ul, 4096ul, wire.size()}) {
    INFO("slices of " << piece << " bytes");
    std::vector<float> out(903, -1.0f);
    v1::PullSparseResponse header;
    absl::Status s =
        DecodeWithBulk(FromString(wire, piece), &header, v1::PullSparseResponse::kValuesFieldNumber,
                       [&](size_t size, BulkDest* dest) {
                         REQUIRE(size == values.size() * sizeof(float));
                         dest->data = reinterpret_cast<char*>(out.data());
                         dest->record_bytes = 3 * sizeof(float);
                         dest->places = places.data();
                         return absl::OkStatus();
                       });
    REQUIRE(s.ok());
    for (size_t j = 0; j < places.size(); ++j) {
      for (size_t c = 0; c < 3; ++c) REQUIRE(out[places[j] * 3 + c] == values[j * 3 + c]);
    }
    CHECK(out[900] == -1.0f);
    CHECK(out[902] == -1.0f);
  }
}

TEST_CASE("padded bulk fields start 8-byte aligned and are viewed in place", "[bulk_codec]") {
  // Table names of every length move the bulk fields to every offset mod 8.
  for (size_t name_len = 0; name_len < 24; ++name_len) {
    INFO("table name of " << name_len << " bytes");
    std::vector<uint64_t> keys(37);
    std::iota(keys.begin(), keys.end(), 1000);
    std::vector<float> values(37 * 3);
    std::iota(values.begin(), values.end(), 0.25f);
    v1::PushSparseRequest header;
    header.set_table(std::string(name_len, 't'));
    header.set_dim(3);
    header.set_num_keys(keys.size());
    const std::string flat = Flatten(EncodeWithBulk(
        header,
        {{v1::PushSparseRequest::kKeysFieldNumber, keys.data(), keys.size() * sizeof(uint64_t)},
         {v1::PushSparseRequest::kValuesFieldNumber, values.data(), values.size() * sizeof(float)}},
        v1::PushSparseRequest::kPaddingFieldNumber));
    // Plain protobuf reads the same message (the padding is a field it ignores).
    v1::PushSparseRequest parsed;
    REQUIRE(parsed.ParseFromString(flat));
    CHECK(parsed.table() == header.table());
    CHECK(parsed.keys() ==
          std::string(reinterpret_cast<const char*>(keys.data()), keys.size() * sizeof(uint64_t)));
    // In one aligned buffer, both fields are viewed in place, at multiples of 8.
    std::unique_ptr<uint64_t[]> aligned(new uint64_t[flat.size() / 8 + 1]);
    std::memcpy(aligned.get(), flat.data(), flat.size());
    grpc::Slice slice(aligned.get(), flat.size(), grpc::Slice::STATIC_SLICE);
    grpc::ByteBuffer one(&slice, 1);
    BulkView views[2];
    views[0].field_number = v1::PushSparseRequest::kKeysFieldNumber;
    views[1].field_number = v1::PushSparseRequest::kValuesFieldNumber;
    v1::PushSparseRequest small;
    REQUIRE(DecodeWithBulkViews(one, &small, views, 2).ok());
    CHECK(small.keys().empty());
    CHECK(small.table() == header.table());
    const char* base = reinterpret_cast<const char*>(aligned.get());
    for (const BulkView& v : views) {
      REQUIRE(v.present);
      CHECK(v.spill.empty());
      CHECK(v.data >= base);
      CHECK(v.data < base + flat.size());
      CHECK((v.data - base) % 8 == 0);
    }
    CHECK(std::memcmp(views[0].data, keys.data(), views[0].size) == 0);
    CHECK(std::memcmp(views[1].data, values.data(), views[1].size) == 0);
    // Cut into 5-byte slices, the fields straddle slices: copied, the same bytes.
    BulkView cut[2];
    cut[0].field_number = views[0].field_number;
    cut[1].field_number = views[1].field_number;
    REQUIRE(DecodeWithBulkViews(FromString(flat, 5), &small, cut, 2).ok());
    CHECK(!cut[1].spill.empty());
    CHECK(std::memcmp(cut[1].data, values.data(), cut[1].size) == 0);
  }
}

TEST_CASE("malformed bytes are rejected and never read past the end", "[bulk_codec]") {
  v1::PullDenseResponse resp;
  resp.set_count(2);
  resp.mutable_values()->assign(8, 'x');
  const std::string wire = resp.SerializeAsString();
  auto decode = [](const std::string& bytes) {
    v1::PullDenseResponse header;
    char sink[64];
    return DecodeWithBulk(FromString(bytes, 3), &header, v1::PullDenseResponse::kValuesFieldNumber,
                          [&](size_t size, BulkDest* dest) {
                            if (size > sizeof(sink)) return absl::DataLossError("too big");
                            dest->data = sink;
                            return absl::OkStatus();
                          });
  };
  CHECK(decode(wire).ok());
  for (size_t cut = 1; cut < wire.size(); ++cut) {
    if (cut == 2) continue;  // ends right after the count field: a valid, shorter message
    INFO("truncated to " << cut);
    CHECK_FALSE(decode(wire.substr(0, cut)).ok());
  }
  CHECK(decode(std::string("\x00\x01", 2)).code() == absl::StatusCode::kInvalidArgument);
  CHECK(decode(std::string("\x22\xff\xff\xff\xff\x0f", 6)).code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(decode(std::string("\x22\x50", 2) + std::string(80, 'y')).code() ==
        absl::StatusCode::kDataLoss);  // the sink's own refusal comes back
  // A message without the bulk field hands the sink an empty field.
  CHECK(decode(std::string("\x18\x02", 2)).ok());

  // The same for the in-place decoder, on a push.
  v1::PushDenseRequest push;
  push.set_count(2);
  push.mutable_values()->assign(8, 'x');
  const std::string push_wire = push.SerializeAsString();
  auto view = [](const std::string& bytes) {
    v1::PushDenseRequest header;
    BulkView v;
    v.field_number = v1::PushDenseRequest::kValuesFieldNumber;
    return DecodeWithBulkViews(FromString(bytes, 3), &header, &v, 1);
  };
  CHECK(view(push_wire).ok());
  for (size_t cut = 1; cut < push_wire.size(); ++cut) {
    if (cut == 2) continue;
    INFO("push truncated to " << cut);
    CHECK_FALSE(view(push_wire.substr(0, cut)).ok());
  }
  CHECK(view(push_wire + push_wire.substr(2)).code() == absl::StatusCode::kInvalidArgument);
  CHECK(view(std::string("\x32\xff\xff\xff\xff\x0f", 6)).code() ==
        absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tessera
