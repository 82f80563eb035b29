#ifndef TESSERA_COMMON_MALLOC_TUNING_H_
#define TESSERA_COMMON_MALLOC_TUNING_H_

namespace tessera {

// Keeps glibc malloc from returning large freed buffers to the kernel (and faulting them back in
// on the next request): on this class of VM that costs more than gRPC itself. See
// docs/design.md, "Performance". Call first thing in main() of every daemon and benchmark.
void TuneMallocForLargeBuffers();

}  // namespace tessera

#endif  // TESSERA_COMMON_MALLOC_TUNING_H_
