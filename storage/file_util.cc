#include "storage/file_util.h"

#include <fcntl.h>
#include <rocksdb/file_checksum.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "storage/crc32c.h"

namespace tessera::storage {
namespace {

absl::Status Errno(const std::string& what, const std::string& path) {
  const int e = errno;
  const std::string message = absl::StrCat(what, " ", path, ": ", strerror(e));
  if (e == ENOENT) return absl::NotFoundError(message);
  if (e == ENOSPC || e == EDQUOT) return absl::ResourceExhaustedError(message);
  return absl::InternalError(message);
}

std::unique_ptr<rocksdb::FileChecksumGenerator> NewCrc32c() {
  rocksdb::FileChecksumGenContext ctx;
  return Crc32cChecksumFactory()->CreateFileChecksumGenerator(ctx);
}

// Closes an fd on scope exit.
struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

}  // namespace

absl::Status SyncDir(const std::string& dir) {
  Fd f{open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  if (f.fd < 0) return Errno("cannot open directory", dir);
  if (fsync(f.fd) != 0) return Errno("cannot fsync directory", dir);
  return absl::OkStatus();
}

absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents) {
  const std::string tmp = path + ".tmp";
  {
    Fd f{open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)};
    if (f.fd < 0) return Errno("cannot create", tmp);
    const char* p = contents.data();
    size_t left = contents.size();
    while (left > 0) {
      const ssize_t n = write(f.fd, p, left);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return Errno("cannot write", tmp);
      p += n;
      left -= static_cast<size_t>(n);
    }
    if (fsync(f.fd) != 0) return Errno("cannot fsync", tmp);
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) return Errno("cannot rename to", path);
  return SyncDir(std::filesystem::path(path).parent_path().string());
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  Fd f{open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0) return Errno("cannot open", path);
  std::string out;
  char buf[1 << 16];
  while (true) {
    const ssize_t n = read(f.fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno("cannot read", path);
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

absl::StatusOr<std::string> FileCrc32c(const std::string& path) {
  Fd f{open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0) return Errno("cannot open", path);
  posix_fadvise(f.fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  auto gen = NewCrc32c();
  std::vector<char> buf(4 << 20);
  while (true) {
    const ssize_t n = read(f.fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno("cannot read", path);
    if (n == 0) break;
    gen->Update(buf.data(), static_cast<size_t>(n));
  }
  gen->Finalize();
  return gen->GetChecksum();
}

std::string Crc32c(absl::string_view data) {
  auto gen = NewCrc32c();
  gen->Update(data.data(), data.size());
  gen->Finalize();
  return gen->GetChecksum();
}

std::string Hex(absl::string_view bytes) {
  std::string out;
  for (unsigned char c : bytes) absl::StrAppendFormat(&out, "%02x", c);
  return out;
}

}  // namespace tessera::storage
