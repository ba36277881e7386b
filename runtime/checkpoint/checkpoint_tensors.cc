#include "runtime/checkpoint/checkpoint_tensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/checkpoint/pytorch_bin.h"

namespace glmserve {
namespace {

using TensorMap = std::unordered_map<std::string, at::Tensor>;

// What new allocations can take: /proc/meminfo's MemAvailable plus SwapFree, within what the
// process's cgroup (v2 memory.max less memory.current: a container's limit, which /proc/meminfo
// does not show) leaves; -1 where unknown or GLMSERVE_HOST_MEMORY_CHECK=0 (memory the kernel does
// not count as available, e.g. a ZFS ARC, can still be had).
int64_t AvailableHostBytes() {
  if (const char* check = std::getenv("GLMSERVE_HOST_MEMORY_CHECK"); check != nullptr && std::string(check) == "0") {
    return -1;
  }
  std::ifstream meminfo("/proc/meminfo");
  std::string key, unit;
  int64_t kib = 0, available = -1, swap = 0;
  while (meminfo >> key >> kib) {
    std::getline(meminfo, unit);
    if (key == "MemAvailable:") available = kib * 1024;
    if (key == "SwapFree:") swap = kib * 1024;
  }
  if (available < 0) return -1;
  available += swap;
  int64_t limit = 0, current = 0;
  std::ifstream max_file("/sys/fs/cgroup/memory.max"), current_file("/sys/fs/cgroup/memory.current");
  if ((max_file >> limit) && (current_file >> current) && limit > current) {  // "max" reads as no number
    available = std::min(available, limit - current);
  }
  return available;
}

// Bytes of host memory the listing's tensors take once read: each (file, offset) once, as views of
// one storage (tied weights in a .bin) share it.
uint64_t HostBytesToRead(const CheckpointListing& listing) {
  std::set<std::pair<std::string, uint64_t>> seen;
  uint64_t total = 0;
  for (const TensorRecord& r : listing.tensors) {
    if (seen.emplace(r.file, r.data_offset).second) total += r.data_bytes;
  }
  return total;
}

std::string GiB(uint64_t bytes) { return absl::StrFormat("%.1f GiB", static_cast<double>(bytes) / (1 << 30)); }

bool ToScalarType(const std::string& dtype, at::ScalarType* out) {
  if (dtype == "F32") {
    *out = at::kFloat;
  } else if (dtype == "F16") {
    *out = at::kHalf;
  } else if (dtype == "BF16") {
    *out = at::kBFloat16;
  } else {
    return false;
  }
  return true;
}

absl::Status UnsupportedDtype(const TensorRecord& r) {
  return absl::InvalidArgumentError(absl::StrCat(r.file, ": tensor ", r.name, " has dtype ", r.dtype,
                                                 ", which glmserve cannot load (F32, F16, BF16)"));
}

// Reads the listed tensors of one safetensors file with pread straight into freshly allocated
// tensors: one copy, no mapping to release, and a file truncated after listing gives an error
// instead of SIGBUS.
absl::Status ReadSafetensorsFile(const std::string& path, const std::string& file_name,
                                 const std::vector<const TensorRecord*>& records, TensorMap* out) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat(file_name, ": cannot open: ", std::strerror(errno)));
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    return absl::InternalError(absl::StrCat(file_name, ": cannot stat: ", std::strerror(errno)));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  for (const TensorRecord* r : records) {
    at::ScalarType type;
    if (!ToScalarType(r->dtype, &type)) return UnsupportedDtype(*r);
    if (r->data_offset > file_size || r->data_bytes > file_size - r->data_offset) {
      return absl::DataLossError(absl::StrCat(file_name, ": tensor ", r->name, " needs bytes [", r->data_offset, ", ",
                                              r->data_offset + r->data_bytes, ") but the file holds ", file_size));
    }
    at::Tensor t;
    try {
      t = at::empty(r->shape, at::TensorOptions().dtype(type).device(at::kCPU));
    } catch (const c10::Error&) {
      return absl::ResourceExhaustedError(absl::StrCat(file_name, ": tensor ", r->name, ": cannot allocate ",
                                                       r->data_bytes, " bytes (", GiB(r->data_bytes),
                                                       ") of host memory to read it into"));
    }
    const uint64_t want = static_cast<uint64_t>(t.nbytes());
    if (want != r->data_bytes) {
      return absl::DataLossError(
          absl::StrCat(file_name, ": tensor ", r->name, " holds ", r->data_bytes, " bytes, its shape needs ", want));
    }
    char* dst = static_cast<char*>(t.data_ptr());
    uint64_t done = 0;
    while (done < want) {
      const ssize_t got = ::pread(fd, dst + done, want - done, static_cast<off_t>(r->data_offset + done));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        return absl::DataLossError(absl::StrCat(file_name, ": reading tensor ", r->name, ": ",
                                                got < 0 ? std::strerror(errno) : "unexpected end of file"));
      }
      done += static_cast<uint64_t>(got);
    }
    (*out)[r->name] = std::move(t);
  }
  return absl::OkStatus();
}

absl::Status ReadBinFile(const std::string& path, const std::string& file_name,
                         const std::vector<const TensorRecord*>& records, TensorMap* out) {
  TensorMap loaded;
  absl::Status status = TakePytorchBinTensors(path, file_name, &loaded);
  if (!status.ok()) return status;
  for (const TensorRecord* r : records) {
    auto it = loaded.find(r->name);
    if (it == loaded.end()) {
      return absl::DataLossError(
          absl::StrCat(file_name, ": tensor ", r->name, " was listed but is no longer in the file"));
    }
    at::ScalarType type;
    if (!ToScalarType(r->dtype, &type)) return UnsupportedDtype(*r);
    at::Tensor t = it->second;
    if (t.scalar_type() != type || t.device() != at::Device(at::kCPU)) {
      return absl::DataLossError(absl::StrCat(file_name, ": tensor ", r->name, " changed since it was listed"));
    }
    // Views (tied weights, slices) keep sharing storage when already contiguous.
    (*out)[r->name] = t.is_contiguous() ? t : t.contiguous();
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TensorMap> ReadCheckpointTensors(const CheckpointListing& listing) {
  const bool is_bin =
      listing.format == CheckpointFormat::kPytorchBin || listing.format == CheckpointFormat::kPytorchBinSharded;
  // Every tensor is in host memory at once before the model takes it: a checkpoint larger than
  // what is available is refused by its size, not by the allocator's text, or by the OOM killer
  // with no message at all once the pages are touched (memory is overcommitted).
  const uint64_t needed = HostBytesToRead(listing);
  const int64_t available = AvailableHostBytes();
  if (available >= 0 && needed > static_cast<uint64_t>(available)) {
    return absl::ResourceExhaustedError(absl::StrCat("reading ", listing.directory, ": its tensors take ", needed,
                                                     " bytes (", GiB(needed), ") of host memory, and this machine has ",
                                                     available, " (", GiB(available),
                                                     ") available (MemAvailable + SwapFree in /proc/meminfo, "
                                                     "within the cgroup's memory.max; GLMSERVE_HOST_MEMORY_CHECK=0 "
                                                     "skips this check)"));
  }
  std::map<std::string, std::vector<const TensorRecord*>> by_file;
  for (const TensorRecord& r : listing.tensors) by_file[r.file].push_back(&r);
  TensorMap out;
  try {
    out.reserve(listing.tensors.size());
    for (const std::string& file : listing.files) {
      const std::string path = (std::filesystem::path(listing.directory) / file).string();
      const std::vector<const TensorRecord*>& records = by_file[file];
      absl::Status status =
          is_bin ? ReadBinFile(path, file, records, &out) : ReadSafetensorsFile(path, file, records, &out);
      if (!status.ok()) {
        if (is_bin) ClearPytorchBinCache();
        return status;
      }
    }
  } catch (const c10::Error& e) {
    if (is_bin) ClearPytorchBinCache();
    std::string what = e.what_without_backtrace();
    return absl::InternalError(absl::StrCat("reading ", listing.directory, ": ", what.substr(0, what.find('\n'))));
  } catch (const std::exception& e) {
    if (is_bin) ClearPytorchBinCache();
    return absl::InternalError(absl::StrCat("reading ", listing.directory, ": ", e.what()));
  }
  return out;
}

}  // namespace glmserve
