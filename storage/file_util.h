// Small POSIX file helpers with absl::Status errors that name the file.
#ifndef TESSERA_STORAGE_FILE_UTIL_H_
#define TESSERA_STORAGE_FILE_UTIL_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tessera::storage {

// fsync() of a directory, so that entries created or renamed in it are durable.
absl::Status SyncDir(const std::string& dir);

// Writes `contents` to path via path.tmp: write, fsync, rename, fsync of the directory. Either
// the old file (or none) or the complete new one is visible afterwards, never a torn one.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents);

absl::StatusOr<std::string> ReadFile(const std::string& path);

// CRC32C of a whole file, encoded as Crc32cChecksumFactory() does (4 bytes, big-endian).
absl::StatusOr<std::string> FileCrc32c(const std::string& path);
// CRC32C of a buffer, same encoding.
std::string Crc32c(absl::string_view data);

// Lowercase hex of a byte string, for messages.
std::string Hex(absl::string_view bytes);

}  // namespace tessera::storage

#endif  // TESSERA_STORAGE_FILE_UTIL_H_
