// What every table's storage does alike, sparse or dense (docs/state_machine.md, "Files"):
// the operations that do not depend on the kind go through this interface instead of being
// dispatched by hand. Rows and blocks themselves are read and written through the concrete
// classes (SparseTable, DenseTable), on the hot paths without a virtual call.
#ifndef TESSERA_SERVER_TABLE_DATA_H_
#define TESSERA_SERVER_TABLE_DATA_H_

#include <cstdint>

namespace tessera {

class TableData {
 public:
  virtual ~TableData() = default;
  // Checkpoints and snapshots: copy-on-write for a cut at generation cut_gen (REQUIRES: no
  // change runs concurrently), and its end everywhere (after an error or once taken).
  virtual void BeginCut(uint64_t cut_gen) = 0;
  virtual void EndCut() = 0;
  // Sparse rows or dense elements held here.
  virtual uint64_t Entries() const = 0;
  // Memory held here: what is resident.
  virtual uint64_t Bytes() const = 0;
  // A stable hash of what replicas must agree on (server/state_digest.cc).
  virtual uint64_t Digest() const = 0;
};

}  // namespace tessera

#endif  // TESSERA_SERVER_TABLE_DATA_H_
