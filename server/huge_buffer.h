#ifndef TESSERA_SERVER_HUGE_BUFFER_H_
#define TESSERA_SERVER_HUGE_BUFFER_H_

#include <cstddef>

namespace tessera {

// A large zero-filled region from mmap, advised to use transparent huge pages: for dense
// tables of gigabytes, 2 MiB pages cut page faults 512-fold and need no user-space zero-fill
// (a restore of 2 GiB spent most of its time faulting in 4 KiB pages). Movable, not copyable.
// Thread-compatible.
class HugeBuffer {
 public:
  HugeBuffer() = default;
  // Maps `bytes` bytes (rounded up to a page); data() is null when the mapping fails.
  explicit HugeBuffer(size_t bytes);
  ~HugeBuffer();
  HugeBuffer(HugeBuffer&& other) noexcept;
  HugeBuffer& operator=(HugeBuffer&& other) noexcept;
  HugeBuffer(const HugeBuffer&) = delete;
  HugeBuffer& operator=(const HugeBuffer&) = delete;

  char* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  char* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace tessera

#endif  // TESSERA_SERVER_HUGE_BUFFER_H_
