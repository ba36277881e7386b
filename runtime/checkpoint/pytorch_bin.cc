#include "runtime/checkpoint/pytorch_bin.h"

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>
#include <sys/stat.h>
#include <torch/csrc/jit/serialization/unpickler.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>
#include <stdexcept>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace glmserve {
namespace {

// Safetensors spelling of a torch dtype; the ScalarType name when there is none.
std::string DtypeName(at::ScalarType t) {
  switch (t) {
    case at::kDouble:
      return "F64";
    case at::kFloat:
      return "F32";
    case at::kHalf:
      return "F16";
    case at::kBFloat16:
      return "BF16";
    case at::kLong:
      return "I64";
    case at::kInt:
      return "I32";
    case at::kShort:
      return "I16";
    case at::kChar:
      return "I8";
    case at::kByte:
      return "U8";
    case at::kBool:
      return "BOOL";
    case at::kFloat8_e4m3fn:
      return "F8_E4M3";
    case at::kFloat8_e5m2:
      return "F8_E5M2";
    case at::kComplexFloat:
      return "C64";
    default:
      return c10::toString(t);
  }
}

// First line of an exception message, trimmed and capped, without LibTorch's backtrace.
std::string ShortReason(const std::string& what) {
  std::string s = what.substr(0, what.find('\n'));
  while (!s.empty() && (s.back() == ' ' || s.back() == '\r' || s.back() == '.')) s.pop_back();
  if (s.size() > 300) s = s.substr(0, 300) + "...";
  return s.empty() ? std::string("unknown error") : s;
}

struct FileStamp {
  int64_t size = -1;
  int64_t mtime_ns = 0;
  bool operator==(const FileStamp& o) const { return size == o.size && mtime_ns == o.mtime_ns; }
};

bool Stamp(const std::string& path, FileStamp* stamp) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return false;
  stamp->size = st.st_size;
  stamp->mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  return true;
}

using TensorList = std::vector<std::pair<std::string, at::Tensor>>;

struct CacheEntry {
  FileStamp stamp;
  TensorList tensors;
};

std::mutex g_cache_mu;
std::map<std::string, CacheEntry>& Cache() {
  static auto* cache = new std::map<std::string, CacheEntry>();
  return *cache;
}

// Checks the first bytes before handing the file to the zip reader, so the common wrong-format
// cases get a clear message.
absl::Status CheckMagic(const std::string& path, const std::string& file_name) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    return absl::NotFoundError(absl::StrCat(file_name, ": unreadable: cannot open: ", std::strerror(errno)));
  }
  unsigned char magic[4] = {0, 0, 0, 0};
  const size_t got = std::fread(magic, 1, 4, f);
  std::fclose(f);
  if (got == 0) {
    return absl::DataLossError(absl::StrCat(file_name, ": not a readable torch.save archive: empty file (0 bytes)"));
  }
  if (got >= 2 && magic[0] == 'P' && magic[1] == 'K') return absl::OkStatus();
  if (magic[0] == 0x80) {
    return absl::UnimplementedError(
        absl::StrCat(file_name,
                     ": legacy (pre-1.6, non-zip) torch.save format is not supported; re-save it with a current "
                     "torch.save or convert it to safetensors"));
  }
  return absl::DataLossError(
      absl::StrCat(file_name, ": not a readable torch.save archive: not a zip file (bad magic bytes)"));
}

// Length of the argument of the protocol-2 pickle opcode at `pkl[pos]` (pos points at the opcode);
// -1 for an opcode this scanner does not know or a truncated argument.
int64_t PickleArgLength(const std::string& pkl, size_t pos) {
  const size_t n = pkl.size();
  auto le = [&](size_t at, int bytes) -> int64_t {
    if (at + bytes > n) return -1;
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(pkl[at + i]);
    return v > (1ull << 40) ? -1 : static_cast<int64_t>(v);
  };
  auto lines = [&](int count) -> int64_t {
    size_t at = pos + 1;
    for (int i = 0; i < count; ++i) {
      const size_t nl = pkl.find('\n', at);
      if (nl == std::string::npos) return -1;
      at = nl + 1;
    }
    return static_cast<int64_t>(at - pos - 1);
  };
  auto counted = [&](int len_bytes) -> int64_t {
    const int64_t len = le(pos + 1, len_bytes);
    return len < 0 ? -1 : len_bytes + len;
  };
  switch (static_cast<unsigned char>(pkl[pos])) {
    case '(':
    case '.':
    case '0':
    case '1':
    case '2':
    case 'N':
    case ')':
    case ']':
    case '}':
    case 'a':
    case 'e':
    case 'l':
    case 't':
    case 's':
    case 'u':
    case 'b':
    case 'R':
    case 'Q':
    case 'd':
    case 'o':
    case 0x81:
    case 0x85:
    case 0x86:
    case 0x87:
    case 0x88:
    case 0x89:
      return 0;
    case 'K':
    case 'q':
    case 'h':
    case 0x80:
    case 0x82:
      return 1;
    case 'M':
    case 0x83:
      return 2;
    case 'J':
    case 'r':
    case 'j':
    case 0x84:
      return 4;
    case 'G':
      return 8;
    case 'I':
    case 'L':
    case 'F':
    case 'S':
    case 'V':
    case 'P':
    case 'g':
    case 'p':
      return lines(1);
    case 'c':
    case 'i':
      return lines(2);
    case 'X':
    case 'T':
    case 'B':
    case 0x8b:
      return counted(4);
    case 'U':
    case 'C':
    case 0x8a:
      return counted(1);
    default:
      return -1;
  }
}

// The most values the pickle's stack holds at once, simulated over its opcodes (0 where the
// scanner meets an opcode it does not know: then nothing is claimed). A nested list 300,000 deep
// is a 660 KB pickle whose IValue LibTorch destroys recursively, past the thread's stack; a state
// dict's pickle holds a few thousand at most (SETITEMS batches of 1,000 pairs).
int64_t PickleStackPeak(const std::string& pkl) {
  std::vector<int64_t> marks;
  int64_t depth = 0, peak = 0;
  auto pop_to_mark = [&]() {
    if (marks.empty()) return false;
    depth = marks.back();
    marks.pop_back();
    return true;
  };
  for (size_t pos = 0; pos < pkl.size();) {
    const auto op = static_cast<unsigned char>(pkl[pos]);
    const int64_t arg = PickleArgLength(pkl, pos);
    if (arg < 0) return 0;
    switch (op) {
      case '(':  // MARK
        marks.push_back(depth);
        break;
      case 'e':
      case 'u':
      case '1':  // APPENDS, SETITEMS, POP_MARK: back to the mark
        if (!pop_to_mark()) return 0;
        break;
      case 't':
      case 'l':
      case 'd':
      case 'o':  // TUPLE, LIST, DICT, OBJ: the mark's items -> one
        if (!pop_to_mark()) return 0;
        ++depth;
        break;
      case 'a':
      case 'R':
      case 'b':
      case '0':
      case 0x81:
      case 0x86:  // pop one (net)
        --depth;
        break;
      case 's':
      case 0x87:  // SETITEM, TUPLE3: pop two (net)
        depth -= 2;
        break;
      case '.':
      case 'p':
      case 'q':
      case 'r':
      case 0x80:
      case 0x85:
      case 'Q':  // no change
        break;
      default:  // a value, a memo get, a global, an empty container, DUP: push one
        ++depth;
        break;
    }
    peak = std::max(peak, depth);
    pos += 1 + static_cast<size_t>(arg);
  }
  return peak;
}

// The most values a state dict's pickle may hold on its stack (PickleStackPeak).
constexpr int64_t kMaxPickleStack = 50'000;

// LibTorch's Unpickler knows collections.OrderedDict only as the (ignored) backward-hooks
// argument of _rebuild_tensor_v2: "OrderedDict()" unpickles to None. torch.save(module.state_dict())
// pickles an OrderedDict (with nested OrderedDicts in its `_metadata` attribute), so the result
// is None and SETITEM(S) into it fails. Rewrites the pickle (protocol 2 has no absolute offsets):
//   GLOBAL 'collections OrderedDict' [BINPUT n] EMPTY_TUPLE REDUCE  ->  EMPTY_DICT [BINPUT n]
//   BINGET n (n a slot that held the class) EMPTY_TUPLE REDUCE      ->  EMPTY_DICT
// and, when the top-level object was an OrderedDict ending in "BUILD STOP" (the _metadata state),
// "TUPLE2 STOP" so that the caller takes element 0 (the dict). Returns whether the top-level must
// be unwrapped that way; leaves `pkl` untouched on any opcode it does not understand.
bool PatchOrderedDicts(std::string* pkl) {
  static const std::string kGlobal = "ccollections\nOrderedDict\n";
  if (pkl->find("collections\nOrderedDict") == std::string::npos) return false;
  const std::string& in = *pkl;
  std::string out;
  out.reserve(in.size());
  std::vector<bool> class_slot;
  auto is_class_slot = [&](int64_t slot) {
    return slot >= 0 && static_cast<size_t>(slot) < class_slot.size() && class_slot[slot];
  };
  auto slot_at = [&](size_t pos) -> int64_t {  // memo slot of a BINPUT/BINGET-type opcode
    const unsigned char op = in[pos];
    if (op == 'q' || op == 'h') return pos + 1 < in.size() ? static_cast<unsigned char>(in[pos + 1]) : -1;
    if (pos + 4 >= in.size()) return -1;
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(in[pos + 1 + i]);
    return v;
  };
  auto followed_by_call = [&](size_t pos) { return pos + 1 < in.size() && in[pos] == ')' && in[pos + 1] == 'R'; };
  bool top_level_od = false;
  size_t pos = 0;
  bool first_object = true;
  unsigned char last_op = 0;
  while (pos < in.size()) {
    const unsigned char op = in[pos];
    const int64_t arg = PickleArgLength(in, pos);
    if (arg < 0) return false;
    const size_t next = pos + 1 + static_cast<size_t>(arg);
    if (op == 'c' && in.compare(pos, kGlobal.size(), kGlobal) == 0) {
      size_t after = next;
      int64_t slot = -1;
      if (after < in.size() && (in[after] == 'q' || in[after] == 'r')) {
        slot = slot_at(after);
        after += in[after] == 'q' ? 2 : 5;
      }
      if (!followed_by_call(after)) return false;
      out += '}';
      if (slot >= 0) {
        out.append(in, next, after - next);  // keep the BINPUT: the slot now holds this dict
        if (class_slot.size() <= static_cast<size_t>(slot)) class_slot.resize(slot + 1, false);
        class_slot[slot] = true;
      }
      if (first_object) top_level_od = true;
      first_object = false;
      pos = after + 2;
      continue;
    }
    if ((op == 'h' || op == 'j') && is_class_slot(slot_at(pos))) {
      if (!followed_by_call(next)) return false;
      out += '}';
      first_object = false;
      pos = next + 2;
      continue;
    }
    if (op == '.' && next == in.size() && top_level_od && last_op == 'b') {
      out.back() = '\x86';  // TUPLE2: (dict, state)
      out += '.';
      *pkl = std::move(out);
      return true;
    }
    if (op != 0x80) first_object = false;
    last_op = op;
    out.append(in, pos, next - pos);
    pos = next;
  }
  *pkl = std::move(out);
  return false;
}

// Loads every tensor of a torch.save zip archive. Never throws.
// Why `t`'s view reaches outside its storage ("" when it does not): LibTorch's unpickler takes
// the sizes, strides and offset a file gives without checking them (torch.load refuses such a
// file); the first use would fail far from the file and key.
std::string ViewOutsideStorage(const at::Tensor& t) {
  if (t.numel() == 0) return "";
  if (t.storage_offset() < 0) return absl::StrCat("negative storage offset ", t.storage_offset());
  int64_t last = t.storage_offset();
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.stride(d) < 0) return absl::StrCat("negative stride ", t.stride(d), " in dimension ", d);
    if (t.size(d) > 1 && t.stride(d) > (std::numeric_limits<int64_t>::max() - last) / (t.size(d) - 1)) {
      return "sizes and strides overflow";
    }
    last += (t.size(d) - 1) * t.stride(d);
  }
  const int64_t item = static_cast<int64_t>(t.element_size());
  const int64_t storage_bytes = static_cast<int64_t>(t.storage().nbytes());
  if (last >= storage_bytes / item) {
    return absl::StrCat("its view (sizes [", absl::StrJoin(t.sizes(), ", "), "], strides [",
                        absl::StrJoin(t.strides(), ", "), "], offset ", t.storage_offset(),
                        ") reaches past its storage of ", storage_bytes, " bytes");
  }
  return "";
}

absl::Status Load(const std::string& path, const std::string& file_name, TensorList* out) {
  absl::Status magic = CheckMagic(path, file_name);
  if (!magic.ok()) return magic;
  const std::string prefix = absl::StrCat(file_name, ": not a readable torch.save archive: ");
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    if (!reader.hasRecord("data.pkl")) {
      return absl::DataLossError(absl::StrCat(prefix, "zip archive has no data.pkl"));
    }
    // torch.save stores its records uncompressed: a record larger than the file is compressed,
    // and reading it would take memory its bytes on disk do not bound (a 2 MB zip bomb reached
    // 4 GB).
    std::error_code size_error;
    const auto file_bytes = static_cast<size_t>(std::filesystem::file_size(path, size_error));
    auto check_record = [&](const std::string& name) {
      const size_t bytes = reader.getRecordSize(name);
      if (!size_error && bytes > file_bytes) {
        throw std::runtime_error(absl::StrCat("record ", name, " unpacks to ", bytes, " bytes, more than the file's ",
                                              file_bytes, " (torch.save does not compress)"));
      }
    };
    check_record("data.pkl");
    // What torch::jit::readArchiveAndTensors("data", ...) does (it is also what pickle_load uses),
    // except that the pickle bytes pass through PatchStateDictPickle first.
    auto [pkl_ptr, pkl_size] = reader.getRecord("data.pkl");
    std::string pkl(static_cast<const char*>(pkl_ptr.get()), pkl_size);
    pkl_ptr.clear();
    if (const int64_t peak = PickleStackPeak(pkl); peak > kMaxPickleStack) {
      return absl::DataLossError(absl::StrCat(prefix, "data.pkl nests ", peak,
                                              " values deep (a state dict holds at most ", kMaxPickleStack, ")"));
    }
    const bool unwrap = PatchOrderedDicts(&pkl);
    size_t pos = 0;
    auto read_pickle = [&](char* buf, size_t n) -> size_t {
      const size_t k = std::min(n, pkl.size() - pos);
      std::memcpy(buf, pkl.data() + pos, k);
      pos += k;
      return k;
    };
    auto read_record = [&](const std::string& name) {
      check_record("data/" + name);
      return std::get<0>(reader.getRecord("data/" + name));
    };
    torch::jit::Unpickler unpickler(read_pickle, /*type_resolver=*/nullptr, /*obj_loader=*/nullptr, read_record,
                                    at::Device(at::kCPU));
    unpickler.set_version(reader.version());
    c10::IValue value = unpickler.parse_ivalue();
    if (unwrap) {
      if (!value.isTuple() || value.toTupleRef().elements().size() != 2) {
        return absl::DataLossError(absl::StrCat(prefix, "unexpected OrderedDict pickle layout"));
      }
      c10::IValue dict = value.toTupleRef().elements()[0];
      value = std::move(dict);
    }
    if (!value.isGenericDict()) {
      return absl::InvalidArgumentError(
          absl::StrCat(file_name, ": holds a ", value.tagKind(), ", not a state dict (a dict of tensors)"));
    }
    TensorList tensors;
    for (const auto& item : value.toGenericDict()) {
      if (!item.key().isString()) {
        return absl::InvalidArgumentError(
            absl::StrCat(file_name, ": state dict has a non-string key (", item.key().tagKind(), ")"));
      }
      const std::string key = item.key().toStringRef();
      if (!item.value().isTensor()) {
        return absl::InvalidArgumentError(
            absl::StrCat(file_name, ": entry ", key, " is a ", item.value().tagKind(), ", not a tensor"));
      }
      const at::Tensor& t = item.value().toTensor();
      if (std::string bad = ViewOutsideStorage(t); !bad.empty()) {
        return absl::DataLossError(absl::StrCat(file_name, ": tensor ", key, ": ", bad));
      }
      tensors.emplace_back(key, t);
    }
    *out = std::move(tensors);
    return absl::OkStatus();
  } catch (const c10::Error& e) {
    return absl::DataLossError(absl::StrCat(prefix, ShortReason(e.what_without_backtrace())));
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat(prefix, ShortReason(e.what())));
  } catch (...) {
    return absl::DataLossError(absl::StrCat(prefix, "unknown exception"));
  }
}

}  // namespace

bool ListPytorchBinFile(const std::string& path, const std::string& file_name, std::vector<TensorRecord>* tensors,
                        std::vector<std::string>* problems) {
  TensorList loaded;
  absl::Status status = Load(path, file_name, &loaded);
  if (!status.ok()) {
    problems->push_back(std::string(status.message()));
    return false;
  }
  try {
    for (const auto& [name, t] : loaded) {
      TensorRecord r;
      r.name = name;
      r.file = file_name;
      r.dtype = DtypeName(t.scalar_type());
      r.shape.assign(t.sizes().begin(), t.sizes().end());
      tensors->push_back(std::move(r));
    }
  } catch (const std::exception& e) {
    problems->push_back(absl::StrCat(file_name, ": ", ShortReason(e.what())));
    return false;
  }
  FileStamp stamp;
  if (Stamp(path, &stamp)) {
    std::lock_guard<std::mutex> lock(g_cache_mu);
    Cache()[path] = CacheEntry{stamp, std::move(loaded)};
  }
  return true;
}

absl::Status TakePytorchBinTensors(const std::string& path, const std::string& file_name,
                                   std::unordered_map<std::string, at::Tensor>* out) {
  TensorList tensors;
  bool cached = false;
  {
    FileStamp stamp;
    const bool have_stamp = Stamp(path, &stamp);
    std::lock_guard<std::mutex> lock(g_cache_mu);
    auto it = Cache().find(path);
    if (it != Cache().end()) {
      if (have_stamp && it->second.stamp == stamp) {
        tensors = std::move(it->second.tensors);
        cached = true;
      }
      Cache().erase(it);
    }
  }
  if (!cached) {
    absl::Status status = Load(path, file_name, &tensors);
    if (!status.ok()) return status;
  }
  for (auto& [name, t] : tensors) (*out)[name] = std::move(t);
  return absl::OkStatus();
}

void ClearPytorchBinCache() {
  std::lock_guard<std::mutex> lock(g_cache_mu);
  Cache().clear();
}

}  // namespace glmserve
