#include "runtime/checkpoint/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "runtime/json_util.h"
#include "runtime/printable_text.h"

namespace glmserve {
namespace {

// The header's top-level keys seen more than once, found in one linear SAX pass.
struct TopLevelKeys final : nlohmann::json_sax<nlohmann::json> {
  std::set<std::string> seen, twice;
  int depth = 0;
  bool key(string_t& k) override {
    if (depth == 1 && !seen.insert(k).second) twice.insert(k);
    return true;
  }
  bool start_object(std::size_t) override { return ++depth, true; }
  bool end_object() override { return --depth, true; }
  bool start_array(std::size_t) override { return ++depth, true; }
  bool end_array() override { return --depth, true; }
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  // The full parse after this pass reports the error, with its position.
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }
};

// Headers larger than this are refused (the safetensors reference implementation caps at 100 MB).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// Reads exactly `n` bytes at `offset`; false on error or short read.
bool PreadAll(int fd, uint64_t offset, char* buf, uint64_t n) {
  while (n > 0) {
    ssize_t got = ::pread(fd, buf, n, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    buf += got;
    offset += static_cast<uint64_t>(got);
    n -= static_cast<uint64_t>(got);
  }
  return true;
}

struct Entry {
  std::string key;
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

}  // namespace

uint64_t SafetensorsDtypeSize(const std::string& dtype) {
  static const std::pair<const char*, uint64_t> kSizes[] = {
      {"F64", 8},  {"F32", 4},     {"F16", 2},     {"BF16", 2},    {"I64", 8}, {"I32", 4},
      {"I16", 2},  {"I8", 1},      {"U64", 8},     {"U32", 4},     {"U16", 2}, {"U8", 1},
      {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"F8_E8M0", 1}, {"C64", 8}, {"C128", 16},
  };
  for (const auto& [name, size] : kSizes) {
    if (dtype == name) return size;
  }
  return 0;
}

bool ListSafetensorsFile(const std::string& path, const std::string& file_name, std::vector<TensorRecord>* tensors,
                         std::vector<std::string>* problems, std::set<std::string>* refused_keys) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    problems->push_back(absl::StrCat(file_name, ": unreadable: cannot open: ", std::strerror(errno)));
    return false;
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    problems->push_back(absl::StrCat(file_name, ": unreadable: not a regular file"));
    return false;
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    problems->push_back(absl::StrCat(file_name, ": too short for a safetensors file (", file_size,
                                     " bytes; the 8-byte header size alone needs 8)"));
    return false;
  }
  unsigned char size_bytes[8];
  if (!PreadAll(fd.get(), 0, reinterpret_cast<char*>(size_bytes), 8)) {
    problems->push_back(absl::StrCat(file_name, ": cannot read the header size"));
    return false;
  }
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | size_bytes[i];
  if (header_size > file_size - 8) {
    problems->push_back(
        absl::StrCat(file_name, ": header size ", header_size, " is larger than the file (", file_size, " bytes)"));
    return false;
  }
  if (header_size > kMaxHeaderBytes) {
    problems->push_back(
        absl::StrCat(file_name, ": header size ", header_size, " exceeds the 100 MB safetensors limit"));
    return false;
  }
  std::string header(header_size, '\0');
  if (!PreadAll(fd.get(), 8, header.data(), header_size)) {
    problems->push_back(absl::StrCat(file_name, ": cannot read the ", header_size, "-byte header"));
    return false;
  }

  // nlohmann's parser ends the text at a NUL, so a header padded with NULs (not spaces) or cut
  // together from two would parse; safetensors refuses it as invalid JSON.
  if (const size_t nul = header.find('\0'); nul != std::string::npos) {
    problems->push_back(absl::StrCat(file_name, ": header holds a NUL byte at header byte ", nul,
                                     " (a safetensors header is JSON text, padded with spaces only)"));
    return false;
  }
  // A header nests 3 levels ({name: {shape: [...]}}) and holds ~8 values a tensor.
  if (std::string shape = JsonShapeProblem(header, /*max_depth=*/16, /*max_values=*/4'000'000); !shape.empty()) {
    problems->push_back(
        absl::StrCat(file_name, ": header ", shape, " (a safetensors header nests 3 levels, ~8 values a tensor)"));
    return false;
  }
  nlohmann::json json;
  // nlohmann keeps the last of two equal keys; a tensor named twice in one header is ambiguous
  // (which bytes are it?), so a first pass counts the top-level keys. The last entry is still
  // listed (the problem refuses the checkpoint; its key is not also reported missing).
  TopLevelKeys keys;
  try {
    // A SAX pass, not a parse callback: nlohmann's callback parser scans the parent object at each
    // member's end, quadratic in the tensor count (a 6.6 MB header of 100,000 entries took 59 s).
    nlohmann::json::sax_parse(header, &keys);
    json = nlohmann::json::parse(header);
  } catch (const nlohmann::json::exception& e) {
    problems->push_back(absl::StrCat(file_name, ": header is not valid JSON: ", JsonErrorText(e)));
    return false;
  }
  if (!json.is_object()) {
    problems->push_back(absl::StrCat(file_name, ": header is not a JSON object (", json.type_name(), ")"));
    return false;
  }

  const size_t problems_before_entries = problems->size();
  for (const std::string& key : keys.twice) {
    if (key == "__metadata__") continue;
    problems->push_back(absl::StrCat(file_name, ": tensor ", PrintableText(key),
                                     " appears more than once in the header (expected each tensor name once)"));
  }

  const uint64_t data_start = 8 + header_size;
  const uint64_t data_available = file_size - data_start;
  std::vector<Entry> entries;
  // safetensors reads __metadata__ as null or a map of strings to strings, and refuses anything else.
  if (auto meta = json.find("__metadata__"); meta != json.end() && !meta->is_null()) {
    bool strings = meta->is_object();
    for (auto m = meta->begin(); strings && m != meta->end(); ++m) strings = m->is_string();
    if (!strings) {
      problems->push_back(absl::StrCat(file_name, ": __metadata__ is not an object of string values (",
                                       JsonDump(*meta).substr(0, 64), "); safetensors refuses such a header"));
    }
  }
  for (auto it = json.begin(); it != json.end(); ++it) {
    const std::string& key = it.key();
    if (key == "__metadata__") continue;
    const nlohmann::json& v = it.value();
    const std::string where = absl::StrCat(file_name, ": tensor ", PrintableText(key), ": ");
    if (!v.is_object()) {
      problems->push_back(absl::StrCat(where, "entry is not a JSON object"));
      refused_keys->insert(key);
      continue;
    }
    std::vector<std::string> missing;
    for (const char* field : {"dtype", "shape", "data_offsets"}) {
      if (!v.contains(field)) missing.push_back(field);
    }
    if (!missing.empty()) {
      problems->push_back(absl::StrCat(where, "missing ", absl::StrJoin(missing, ", ")));
      refused_keys->insert(key);
      continue;
    }
    Entry e;
    e.key = key;
    bool ok = true;
    if (v["dtype"].is_string()) {
      e.dtype = v["dtype"].get<std::string>();
    } else {
      problems->push_back(absl::StrCat(where, "dtype is not a string"));
      ok = false;
    }
    const nlohmann::json& shape = v["shape"];
    if (shape.is_array()) {
      for (const auto& d : shape) {
        if (!d.is_number_integer() || d.get<int64_t>() < 0) {
          problems->push_back(absl::StrCat(where, "shape ", shape.dump(), " is not a list of non-negative integers"));
          ok = false;
          break;
        }
        e.shape.push_back(d.get<int64_t>());
      }
    } else {
      problems->push_back(absl::StrCat(where, "shape is not a list"));
      ok = false;
    }
    const nlohmann::json& offsets = v["data_offsets"];
    if (offsets.is_array() && offsets.size() == 2 && offsets[0].is_number_unsigned() &&
        offsets[1].is_number_unsigned()) {
      e.begin = offsets[0].get<uint64_t>();
      e.end = offsets[1].get<uint64_t>();
      if (e.begin > e.end) {
        problems->push_back(
            absl::StrCat(where, "data_offsets [", e.begin, ", ", e.end, "] are out of order (begin after end)"));
        ok = false;
      }
    } else {
      problems->push_back(
          absl::StrCat(where, "data_offsets ", offsets.dump(), " is not a pair of non-negative integers"));
      ok = false;
    }
    if (!ok) {
      refused_keys->insert(key);
      continue;
    }
    const uint64_t elem = SafetensorsDtypeSize(e.dtype);
    if (elem != 0) {
      // product(shape) * elem, with overflow detection; a zero dimension makes it 0 whatever the
      // others are.
      uint64_t expected = elem;
      bool overflow = false;
      if (std::find(e.shape.begin(), e.shape.end(), 0) != e.shape.end()) expected = 0;
      for (size_t i = 0; expected != 0 && i < e.shape.size(); ++i) {
        const int64_t d = e.shape[i];
        const uint64_t ud = static_cast<uint64_t>(d);
        if (ud != 0 && expected > std::numeric_limits<uint64_t>::max() / ud) {
          overflow = true;
          break;
        }
        expected *= ud;
      }
      if (overflow || expected != e.end - e.begin) {
        problems->push_back(absl::StrCat(where, "holds ", e.end - e.begin, " bytes but ", e.dtype, " ", shape.dump(),
                                         " needs ", overflow ? std::string("more than 2^64") : absl::StrCat(expected)));
        refused_keys->insert(key);
        continue;
      }
    }
    entries.push_back(std::move(e));
  }

  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  // Overlaps: compare each entry with the furthest-reaching earlier one.
  const Entry* reach = nullptr;
  for (const Entry& e : entries) {
    if (reach != nullptr && e.begin < reach->end && e.end > e.begin) {
      problems->push_back(absl::StrCat(file_name, ": tensors ", PrintableText(reach->key), " [", reach->begin, ", ",
                                       reach->end, ") and ", PrintableText(e.key), " [", e.begin, ", ", e.end,
                                       ") overlap"));
    }
    if (reach == nullptr || e.end > reach->end) reach = &e;
  }
  uint64_t declared = 0;
  for (const Entry& e : entries) declared = std::max(declared, e.end);
  // safetensors (and so transformers) refuses a data section its tensors do not cover exactly:
  // bytes before, between or after them mean a file that was overwritten or cut together. Only
  // checked when every entry parsed (and no name came twice), so that a refused entry's bytes are
  // not called a gap too.
  if (problems->size() == problems_before_entries && declared <= data_available) {
    uint64_t covered = 0;
    for (const Entry& e : entries) {
      if (e.begin > covered) {
        problems->push_back(absl::StrCat(file_name, ": ", e.begin - covered, " data bytes [", covered, ", ", e.begin,
                                         ") belong to no tensor, before ", PrintableText(e.key),
                                         " (safetensors tensors follow each other from byte 0 without gaps)"));
      }
      covered = std::max(covered, e.end);
    }
    if (covered < data_available) {
      problems->push_back(absl::StrCat(file_name, ": ", data_available - covered,
                                       " bytes after the last tensor's data (the file should end at data byte ",
                                       covered, "; safetensors refuses such a file as not fully covered)"));
    }
  }
  if (declared > data_available) {
    std::vector<std::string> lost;
    for (const Entry& e : entries) {
      if (e.end > data_available) lost.push_back(PrintableText(e.key));
    }
    problems->push_back(absl::StrCat(file_name, ": truncated: header declares ", declared, " data bytes, file holds ",
                                     data_available, " (", lost.size(), " tensor(s) cut off: ",
                                     absl::StrJoin(lost.begin(), lost.begin() + std::min<size_t>(lost.size(), 5), ", "),
                                     lost.size() > 5 ? ", ..." : "", ")"));
  }
  for (Entry& e : entries) {
    if (e.end > data_available) {  // reported above; never read outside the file
      refused_keys->insert(e.key);
      continue;
    }
    TensorRecord r;
    r.name = std::move(e.key);
    r.file = file_name;
    r.dtype = std::move(e.dtype);
    r.shape = std::move(e.shape);
    r.data_offset = data_start + e.begin;
    r.data_bytes = e.end - e.begin;
    tensors->push_back(std::move(r));
  }
  return true;
}

}  // namespace glmserve
