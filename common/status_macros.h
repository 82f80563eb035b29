#ifndef TESSERA_COMMON_STATUS_MACROS_H_
#define TESSERA_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"

// Returns from the enclosing function when `expr` (an absl::Status) is not OK.
#define TESSERA_RETURN_IF_ERROR(expr)                                     \
  do {                                                                    \
    if (::absl::Status tessera_status_ = (expr); !tessera_status_.ok()) { \
      return tessera_status_;                                             \
    }                                                                     \
  } while (0)

#endif  // TESSERA_COMMON_STATUS_MACROS_H_
