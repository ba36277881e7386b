// Whole files a checkpoint, a tokenizer or a command line names, read with the bounds a corrupt or
// hostile one needs: a regular file only (a directory, a FIFO, or a device such as /dev/zero behind
// a link would be read forever or until memory ran out), and at most a given size. Header-only: the
// checkpoint reader, the tokenizers and the CLI share it without a library between them.
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <system_error>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace glmserve {

// What `path` is when it exists but is not a regular file (links followed): "a directory", "a
// FIFO", "a device", "a socket", "a symlink loop", "a symlink to a missing file"; "" when it is a
// regular file or does not exist at all.
inline std::string NotRegularFile(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status link = fs::symlink_status(path, ec);
  if (ec || !fs::exists(link)) return "";
  const fs::file_status target = fs::status(path, ec);
  if (ec) return ec.value() == ELOOP ? "a symlink loop" : absl::StrCat("unreadable (", ec.message(), ")");
  if (!fs::exists(target)) return "a symlink to a missing file";
  if (fs::is_regular_file(target)) return "";
  if (fs::is_directory(target)) return "a directory";
  if (fs::is_fifo(target)) return "a FIFO";
  if (fs::is_character_file(target) || fs::is_block_file(target)) return "a device";
  if (fs::is_socket(target)) return "a socket";
  return "not a regular file";
}

// `path`'s bytes. Every message starts with `label` (a file name, "--image x.png"):
// INVALID_ARGUMENT "<label>: not a regular file (a FIFO)" or "<label>: N bytes, more than the M
// read at most"; NOT_FOUND "<label>: cannot be read" when it cannot be opened.
inline absl::StatusOr<std::string> ReadBoundedFile(const std::filesystem::path& path, std::uintmax_t max_bytes,
                                                   const std::string& label) {
  if (const std::string what = NotRegularFile(path); !what.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(label, ": not a regular file (", what, ")"));
  }
  std::error_code ec;
  if (const std::uintmax_t size = std::filesystem::file_size(path, ec); !ec && size > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": ", size, " bytes, more than the ", max_bytes, " read at most"));
  }
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int why = errno;  // what open(2) said, where the library kept it
    return absl::NotFoundError(
        absl::StrCat(label, ": cannot be read", why != 0 ? absl::StrCat(" (", std::strerror(why), ")") : ""));
  }
  std::stringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

}  // namespace glmserve
