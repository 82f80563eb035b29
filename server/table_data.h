// What every table's storage does alike, sparse or dense (docs/state_machine.md, "Files"):
// the operations that do not depend on the kind go through this interface instead of being
// dispatched by hand. Rows and blocks themselves are read and written through the concrete
// classes (SparseTable, DenseTable), on the hot paths without a virtual call.
//
// Checkpoints, snapshots and BSP sums see a table as entries: a sparse table's entries are its
// rows (id = key), a dense table's its blocks (id = block index). Each lives in one vshard and
// has a payload (weights, slots, then the 8-byte step when the optimizer has one).
#ifndef TESSERA_SERVER_TABLE_DATA_H_
#define TESSERA_SERVER_TABLE_DATA_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace tessera {

// Entries taken together at a cut: a sparse table's vshard (all its rows; block unused), a
// dense table's block. Checkpoint files store entries in (vshard, id) order.
struct EntryGroup {
  uint32_t vshard = 0;
  uint64_t block = 0;
};

// Receives the entries of a cut, in id order within a group.
class EntrySink {
 public:
  virtual ~EntrySink() = default;
  // Room for a payload of `bytes` that a table may fill and pass to the next Add in place (no
  // copy), or null (the default): the table passes its own bytes.
  virtual char* Buffer(size_t bytes) {
    (void)bytes;
    return nullptr;
  }
  virtual absl::Status Add(uint32_t vshard, uint64_t id, absl::string_view payload) = 0;
  // An entry in the disk tier (a sparse table with one): a catch-up snapshot's joiner puts it
  // on its own disk (LoadDemotedEntry); others take it as any entry.
  virtual absl::Status AddDemoted(uint32_t vshard, uint64_t id, absl::string_view payload) {
    return Add(vshard, id, payload);
  }
  // Replicated state of the group beside its entries (a sparse vshard's admission sketch), as
  // of the cut. Catch-up snapshots carry it; checkpoints do not (a restore starts it afresh).
  virtual absl::Status SetState(uint32_t vshard, absl::string_view state) {
    (void)vshard;
    (void)state;
    return absl::OkStatus();
  }
  // An entry removed since the parent's cut (an increment's tombstone), in id order with the
  // entries Add receives. Only sinks of increments receive them.
  virtual absl::Status Remove(uint32_t vshard, uint64_t id) {
    (void)vshard;
    (void)id;
    return absl::InternalError("this sink takes no removed entries");
  }
};

// A BSP step's gradient sums by entry id (docs/replication.md, "Steps").
using EntrySums = absl::flat_hash_map<uint64_t, std::vector<float>>;

class TableData {
 public:
  virtual ~TableData() = default;
  // Checkpoints and snapshots: copy-on-write for a cut at generation cut_gen (REQUIRES: no
  // change runs concurrently), and its end everywhere (after an error or once taken).
  virtual void BeginCut(uint64_t cut_gen) = 0;
  virtual void EndCut() = 0;
  // Whether TakeGroup can still tell what changed since a parent cut at parent_gen (a table
  // that forgot older removals cannot: the checkpoint must then be full).
  virtual bool CanIncrement(uint64_t parent_gen) const {
    (void)parent_gen;
    return true;
  }
  // Forgets the removals at or below generation gen (a checkpoint that covers them is
  // written); CanIncrement is false below gen from then on.
  virtual void ForgetRemovals(uint64_t gen) { (void)gen; }
  // The groups held here, in (vshard, id) order.
  virtual std::vector<EntryGroup> HeldGroups() const = 0;
  // Hands the group's entries as they were at the cut that changed after parent_gen (0: all)
  // to `sink` and ends the group's copy-on-write (also when the sink fails: its first error is
  // returned and no further entry is handed over).
  virtual absl::Status TakeGroup(const EntryGroup& group, uint64_t cut_gen, uint64_t parent_gen,
                                 EntrySink& sink) = 0;
  // Payload bytes of entry `id` of `vshard` when this table may hold it here (a key of that
  // owned vshard, a held block of it), else 0: what a loader checks before LoadEntry.
  virtual size_t EntryBytes(uint32_t vshard, uint64_t id) const = 0;
  // Restore and snapshot install: sets the entry. REQUIRES: the table is not yet serving,
  // payload.size() == EntryBytes(vshard, id) != 0; concurrent calls for different vshards.
  virtual void LoadEntry(uint32_t vshard, uint64_t id, absl::string_view payload) = 0;
  // Snapshot install of a table with a disk tier: the entry goes where the snapshot's primary
  // held it (on disk: AddDemoted), not where LoadEntry would put it.
  virtual void LoadPlacedEntry(uint32_t vshard, uint64_t id, absl::string_view payload,
                               bool on_disk) {
    (void)on_disk;
    LoadEntry(vshard, id, payload);
  }
  // After the last LoadEntry: entries that nothing was loaded for get their initial values
  // (dense blocks; a sparse row is created when it is first touched).
  virtual void FinishLoad() = 0;
  // Snapshot install: the group's state from SetState. INVALID_ARGUMENT (nothing changed) when
  // it does not fit; the default takes none.
  virtual absl::Status LoadState(uint32_t vshard, absl::string_view state) {
    (void)vshard;
    if (state.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError("this table keeps no state beside its entries");
  }
  // Floats in entry id's step sum (a row's dim, a block's length), 0 when there is no such id.
  virtual size_t SumFloats(uint64_t id) const = 0;
  // The vshard of entry id. REQUIRES: SumFloats(id) != 0.
  virtual uint32_t VshardOfEntry(uint64_t id) const = 0;
  // Applies step sums, each scaled by `scale` (saturating to float), at generation gen;
  // returns the rows or elements updated. REQUIRES: every id has SumFloats(id) sums and is
  // held here; no change runs concurrently.
  // `time_ms` is the entry's time, `step` the BSP step applied (a sparse table's lifecycle
  // metadata).
  virtual uint64_t ApplySums(const EntrySums& sums, float scale, uint64_t gen, int64_t time_ms,
                             uint64_t step) = 0;
  // Sparse rows or dense elements held here.
  virtual uint64_t Entries() const = 0;
  // Memory held here: what is resident.
  virtual uint64_t Bytes() const = 0;
  // A stable hash of what replicas must agree on (server/state_digest.cc).
  virtual uint64_t Digest() const = 0;
};

}  // namespace tessera

#endif  // TESSERA_SERVER_TABLE_DATA_H_
