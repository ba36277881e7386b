#include "runtime/checkpoint/pytorch_bin.h"

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>
#include <sys/stat.h>
#include <torch/csrc/jit/serialization/unpickler.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <stdexcept>
#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/printable_text.h"
#include "runtime/shown_value.h"

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
  // LibTorch's own wording is for its developers: an internal assertion's source path and plea for a
  // bug report, "(Could this error message be improved?...)". What the archive lacks is kept.
  static constexpr std::string_view kAssert = " INTERNAL ASSERT FAILED at ";
  static constexpr std::string_view kReport = "please report a bug to PyTorch.";
  if (const size_t at = s.find(kAssert); at != std::string::npos) {
    const size_t report = s.find(kReport, at);
    std::string detail = report == std::string::npos ? "" : s.substr(report + kReport.size());
    while (!detail.empty() && detail.front() == ' ') detail.erase(0, 1);
    s = absl::StrCat("its pickle is not what torch.save writes (LibTorch's check ", s.substr(0, at), " failed",
                     detail.empty() ? "" : ": ", detail, ")");
  }
  if (const size_t improve = s.find(" (Could this error message be improved?"); improve != std::string::npos) {
    s.erase(improve);
  }
  static constexpr std::string_view kHasRecord = "Expected hasRecord(\"";
  if (s.rfind(kHasRecord, 0) == 0) {
    const size_t end = s.find("\")", kHasRecord.size());
    if (end != std::string::npos) {
      s = absl::StrCat("no \"", s.substr(kHasRecord.size(), end - kHasRecord.size()),
                       "\" record (torch.save writes one; every record under one archive folder)");
    }
  }
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

// A record that unpacks to more than the file holds: compressed, which torch.save never does, and
// reading it would take memory its bytes on disk do not bound (a zip bomb).
std::string OversizedRecord(const std::string& name, uint64_t bytes, uint64_t file_bytes) {
  return absl::StrCat("record ", name, " unpacks to ", bytes, " bytes, more than the file's ", file_bytes,
                      " (torch.save does not compress)");
}

// The first record of the zip archive at `path` whose central directory entry says it unpacks to
// more bytes than the file holds, as OversizedRecord says it; "" when
// none does, or when the directory cannot be read (LibTorch's reader then reports the archive).
// Checked before LibTorch's reader exists: its constructor already unpacks the version and
// serialization_id records (a 1 MB file whose version record inflated to 1 GB took 2.2 GB and
// loaded). ZIP64 sizes are read from their extra field.
std::string OversizedZipRecord(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  in.seekg(0, std::ios::end);
  const int64_t file_bytes = static_cast<int64_t>(in.tellg());
  auto read_at = [&](int64_t at, size_t n) -> std::string {
    if (at < 0 || n == 0 || at + static_cast<int64_t>(n) > file_bytes) return "";
    std::string buf(n, '\0');
    in.clear();
    in.seekg(at);
    in.read(buf.data(), static_cast<std::streamsize>(n));
    return in ? buf : std::string();
  };
  auto le = [](const std::string& b, size_t at, int bytes) -> uint64_t {
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(b[at + i]);
    return v;
  };
  // The end of central directory record: 22 bytes and a comment of at most 64 KiB.
  const int64_t tail_at = std::max<int64_t>(0, file_bytes - (22 + 65535));
  const std::string tail = read_at(tail_at, static_cast<size_t>(file_bytes - tail_at));
  const size_t eocd = tail.size() >= 22 ? tail.rfind(std::string("PK\x05\x06", 4)) : std::string::npos;
  if (eocd == std::string::npos || eocd + 22 > tail.size()) return "";
  uint64_t entries = le(tail, eocd + 10, 2), dir_at = le(tail, eocd + 16, 4);
  if (entries == 0xffff || dir_at == 0xffffffff) {  // ZIP64: its locator sits just before
    const std::string locator = read_at(tail_at + static_cast<int64_t>(eocd) - 20, 20);
    if (locator.size() != 20 || locator.compare(0, 4, "PK\x06\x07") != 0) return "";
    const std::string record = read_at(static_cast<int64_t>(le(locator, 8, 8)), 56);
    if (record.size() != 56 || record.compare(0, 4, "PK\x06\x06") != 0) return "";
    entries = le(record, 32, 8);
    dir_at = le(record, 48, 8);
  }
  int64_t at = static_cast<int64_t>(dir_at);
  for (uint64_t i = 0; i < entries && i < 1'000'000; ++i) {
    const std::string head = read_at(at, 46);
    if (head.size() != 46 || head.compare(0, 4, "PK\x01\x02") != 0) return "";
    uint64_t unpacked = le(head, 24, 4);
    const size_t name_len = le(head, 28, 2), extra_len = le(head, 30, 2), comment_len = le(head, 32, 2);
    const std::string name = read_at(at + 46, name_len);
    if (unpacked == 0xffffffff) {  // the ZIP64 extra field (id 1) holds it, first
      const std::string extra = read_at(at + 46 + static_cast<int64_t>(name_len), extra_len);
      for (size_t e = 0; e + 4 <= extra.size();) {
        const uint64_t id = le(extra, e, 2), len = le(extra, e + 2, 2);
        if (id == 1 && len >= 8 && e + 12 <= extra.size()) {
          unpacked = le(extra, e + 4, 8);
          break;
        }
        e += 4 + len;
      }
    }
    if (unpacked > static_cast<uint64_t>(file_bytes)) {
      return OversizedRecord(PrintableText(name), unpacked, static_cast<uint64_t>(file_bytes));
    }
    at += 46 + static_cast<int64_t>(name_len + extra_len + comment_len);
  }
  return "";
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
  // A length past the pickle's end is an argument cut short: LibTorch allocates the declared length
  // first (a 16-byte pickle declaring 4 GiB took 4.3 GB before its error).
  auto counted = [&](int len_bytes) -> int64_t {
    const int64_t len = le(pos + 1, len_bytes);
    if (len < 0 || pos + 1 + len_bytes + static_cast<uint64_t>(len) > n) return -1;
    return len_bytes + len;
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

// What a pickle builds, simulated over its opcodes before LibTorch parses it: how deep its values
// nest (LibTorch frees a nested IValue recursively, one stack frame per level: 200,000 nested
// TUPLE1s, a 400 KB file, overflowed the thread's stack) and the most values its stack holds at
// once. Every container a pickle can build counts (TUPLE/TUPLE1-3, LIST, DICT, EMPTY_LIST and
// EMPTY_DICT filled by APPEND(S)/SETITEM(S), OBJ/INST, REDUCE, NEWOBJ, BUILD), through the memo
// too (a memoized list filled after it was put in another is still nested there): the values
// are nodes of a graph, each container's items its edges, and the depth is the longest path.
struct PickleShape {
  int64_t depth = 0;       // containers on the longest chain of nesting
  int64_t stack_peak = 0;  // values on the stack at once
  std::string error;       // an opcode the scanner cannot follow ("" when none)
  // The first state dict entry whose tensor is pickled with a negative "size" or "stride".
  std::string negative_view_key;
  const char* negative_view = "";
};

// Memo slot of a PUT/GET-type opcode at `pkl[pos]` (its argument already bounds-checked); -1
// when unreadable.
int64_t PickleMemoSlot(const std::string& pkl, size_t pos, int64_t arg) {
  const unsigned char op = pkl[pos];
  if (op == 'q' || op == 'h') return static_cast<unsigned char>(pkl[pos + 1]);
  if (op == 'r' || op == 'j') {
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(pkl[pos + 1 + i]);
    return v;
  }
  int64_t v = 0;  // PUT/GET: a decimal line
  for (int64_t i = 0; i + 1 < arg; ++i) {
    const char c = pkl[pos + 1 + i];
    if (c < '0' || c > '9' || v > (int64_t{1} << 40)) return -1;
    v = v * 10 + (c - '0');
  }
  return v;
}

// Whether the integer opcode at `pkl[pos]` (argument length `arg`, bounds-checked) is negative.
bool NegativeInt(const std::string& pkl, size_t pos, int64_t arg) {
  switch (static_cast<unsigned char>(pkl[pos])) {
    case 'J':  // BININT: 4 bytes, signed
      return (static_cast<unsigned char>(pkl[pos + 4]) & 0x80) != 0;
    case 'I':
    case 'L':  // INT, LONG: a decimal line
      return arg > 0 && pkl[pos + 1] == '-';
    case 0x8a:
    case 0x8b: {  // LONG1, LONG4: length, then little-endian two's complement
      const int64_t len_bytes = static_cast<unsigned char>(pkl[pos]) == 0x8a ? 1 : 4;
      return arg > len_bytes && (static_cast<unsigned char>(pkl[pos + static_cast<size_t>(arg)]) & 0x80) != 0;
    }
    default:
      return false;
  }
}

PickleShape ScanPickle(const std::string& pkl) {
  PickleShape shape;
  // A value on the simulated stack: `node` is a container's node, or -1 for a scalar (a number, a
  // string, None, a global, a storage); a negative integer and a BINUNICODE string (a key) are
  // told apart.
  struct Value {
    int64_t node = -1;
    bool negative = false;
    bool text = false;  // a string, its bytes at pkl[text_at, text_at + text_len)
    size_t text_at = 0;
    size_t text_len = 0;
  };
  // Per node: kNegativeItem, a tuple holding a negative integer; kNegativeSize/kNegativeStride, the
  // arguments (storage, offset, sizes, strides, ...) of _rebuild_tensor_v2 with a negative size or
  // stride, and what the call returns from them. LibTorch replaces a negative stride with a
  // positive one (c10's set_sizes_and_strides), so it is caught here or not at all.
  constexpr uint8_t kNegativeItem = 1, kNegativeSize = 2, kNegativeStride = 4;
  std::vector<Value> stack;
  std::vector<size_t> marks;
  std::unordered_map<int64_t, Value> memo;
  std::vector<std::pair<int64_t, int64_t>> edges;  // container node -> item node
  std::vector<uint8_t> flags;                      // per node
  auto new_node = [&](uint8_t f) {
    flags.push_back(f);
    return static_cast<int64_t>(flags.size()) - 1;
  };
  auto pop = [&]() -> Value {
    if (stack.empty()) return Value{};  // LibTorch refuses the pickle; nothing nests here
    const Value v = stack.back();
    stack.pop_back();
    return v;
  };
  auto top = [&]() -> int64_t { return stack.empty() ? -1 : stack.back().node; };
  auto link = [&](int64_t container, const Value& item) {
    if (container >= 0 && item.node >= 0) edges.emplace_back(container, item.node);
  };
  // The items above the innermost mark, removed from the stack (with the mark).
  std::vector<Value> items;
  auto pop_mark = [&]() {
    const size_t from = marks.empty() ? stack.size() : std::min(marks.back(), stack.size());
    if (!marks.empty()) marks.pop_back();
    items.assign(stack.begin() + static_cast<std::ptrdiff_t>(from), stack.end());
    stack.resize(from);
  };
  auto flag_of = [&](const Value& v, uint8_t f) { return v.node >= 0 && (flags[static_cast<size_t>(v.node)] & f); };
  // A tuple of `items`: which of the flags above it carries.
  auto tuple = [&]() {
    uint8_t f = 0;
    for (const Value& item : items) f |= item.negative ? kNegativeItem : 0;
    if (items.size() >= 4 && flag_of(items[2], kNegativeItem)) f |= kNegativeSize;
    if (items.size() >= 4 && flag_of(items[3], kNegativeItem)) f |= kNegativeStride;
    const int64_t node = new_node(f);
    for (const Value& item : items) link(node, item);
    stack.push_back(Value{node});
  };
  // Key/value pairs going into a dict: the first tensor with a negative size or stride is named.
  auto pairs = [&](const std::vector<Value>& kv) {
    for (size_t i = 0; i + 1 < kv.size() && shape.negative_view_key.empty(); i += 2) {
      if (!flag_of(kv[i + 1], kNegativeSize | kNegativeStride)) continue;
      shape.negative_view = flag_of(kv[i + 1], kNegativeStride) ? "stride" : "size";
      shape.negative_view_key = kv[i].text ? pkl.substr(kv[i].text_at, kv[i].text_len) : "(a key that is not a string)";
    }
  };
  for (size_t pos = 0; pos < pkl.size();) {
    const auto op = static_cast<unsigned char>(pkl[pos]);
    const int64_t arg = PickleArgLength(pkl, pos);
    if (arg < 0) {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "0x%02x", op);
      shape.error = absl::StrCat("data.pkl: cannot follow opcode ", hex, " at byte ", pos,
                                 " (not a pickle protocol 2 opcode, or its argument is cut short; torch.save "
                                 "writes protocol 2)");
      return shape;
    }
    if (op == '.') break;  // STOP: LibTorch reads no further
    switch (op) {
      case '(':  // MARK
        marks.push_back(stack.size());
        break;
      case '1':  // POP_MARK
        pop_mark();
        break;
      case '0':  // POP
        pop();
        break;
      case '2':  // DUP
        stack.push_back(stack.empty() ? Value{} : stack.back());
        break;
      case ']':
      case '}':  // EMPTY_LIST, EMPTY_DICT: filled later
        stack.push_back(Value{new_node(0)});
        break;
      case 't':  // TUPLE: the mark's items
        pop_mark();
        tuple();
        break;
      case 'l':
      case 'd':
      case 'o':
      case 'i': {  // LIST, DICT, OBJ, INST: the mark's items -> one container
        pop_mark();
        if (op == 'd') pairs(items);
        const int64_t node = new_node(0);
        for (const Value& item : items) link(node, item);
        stack.push_back(Value{node});
        break;
      }
      case 0x85:
      case 0x86:
      case 0x87: {  // TUPLE1, TUPLE2, TUPLE3
        items.assign(static_cast<size_t>(op - 0x84), Value{});
        for (auto it = items.rbegin(); it != items.rend(); ++it) *it = pop();
        tuple();
        break;
      }
      case 'a': {  // APPEND
        const Value item = pop();
        link(top(), item);
        break;
      }
      case 's': {  // SETITEM
        const Value value = pop();
        const Value key = pop();
        pairs({key, value});
        link(top(), key);
        link(top(), value);
        break;
      }
      case 'e':
      case 'u': {  // APPENDS, SETITEMS: the mark's items into the container below it
        pop_mark();
        if (op == 'u') pairs(items);
        for (const Value& item : items) link(top(), item);
        break;
      }
      case 'b': {  // BUILD: the state goes into the object below it
        const Value state = pop();
        link(top(), state);
        break;
      }
      case 'R':
      case 0x81: {  // REDUCE, NEWOBJ: what the call returns may hold its arguments
        const Value args = pop();
        pop();  // the callable
        const int64_t node = new_node(args.node >= 0 ? flags[static_cast<size_t>(args.node)] : 0);
        link(node, args);
        stack.push_back(Value{node});
        break;
      }
      case 'Q':  // BINPERSID: the id -> a storage
        pop();
        stack.push_back(Value{});
        break;
      case 'p':
      case 'q':
      case 'r': {  // PUT, BINPUT, LONG_BINPUT
        const int64_t slot = PickleMemoSlot(pkl, pos, arg);
        // LibTorch sizes its memo table to the slot (an 11-byte pickle naming slot 2^28 took
        // 4.3 GB); torch.save numbers its slots from 0, one PUT each, so none passes the pickle's size.
        if (slot > static_cast<int64_t>(pkl.size())) {
          shape.error = absl::StrCat("data.pkl: memo slot ", slot, " at byte ", pos, " is past any a pickle of ",
                                     pkl.size(), " bytes fills (torch.save numbers them from 0)");
          return shape;
        }
        if (slot >= 0) memo[slot] = stack.empty() ? Value{} : stack.back();
        break;
      }
      case 'g':
      case 'h':
      case 'j': {  // GET, BINGET, LONG_BINGET
        auto it = memo.find(PickleMemoSlot(pkl, pos, arg));
        stack.push_back(it == memo.end() ? Value{} : it->second);
        break;
      }
      case 0x80:  // PROTO
        break;
      case 'X':  // BINUNICODE: a string (a state dict's keys are these)
        stack.push_back(Value{-1, false, true, pos + 5, static_cast<size_t>(arg - 4)});
        break;
      default:  // a scalar: a number, a string, None, True/False, a global, EMPTY_TUPLE, PERSID, EXT
        stack.push_back(Value{-1, NegativeInt(pkl, pos, arg)});
        break;
    }
    shape.stack_peak = std::max<int64_t>(shape.stack_peak, static_cast<int64_t>(stack.size()));
    pos += 1 + static_cast<size_t>(arg);
  }
  const int64_t nodes = static_cast<int64_t>(flags.size());
  // Longest chain of containers: depth(v) = 1 + the deepest item, by an explicit depth-first walk
  // (a recursive one would overflow here instead). An item met again while it is being walked is a
  // cycle (LibTorch never frees it): that edge is not followed.
  std::vector<int64_t> first(static_cast<size_t>(nodes) + 1, 0);
  for (const auto& [from, to] : edges) ++first[static_cast<size_t>(from) + 1];
  for (int64_t v = 0; v < nodes; ++v) first[v + 1] += first[v];
  std::vector<int64_t> next_slot(first.begin(), first.end() - 1);
  std::vector<int64_t> items_of(edges.size());
  for (const auto& [from, to] : edges) items_of[static_cast<size_t>(next_slot[from]++)] = to;
  std::vector<int64_t> depth(static_cast<size_t>(nodes), 0);  // 0: not walked yet
  std::vector<char> on_path(static_cast<size_t>(nodes), 0);
  std::vector<std::pair<int64_t, int64_t>> path;  // node, index of its next item
  for (int64_t root = 0; root < nodes; ++root) {
    if (depth[root] != 0) continue;
    path.emplace_back(root, first[root]);
    on_path[root] = 1;
    depth[root] = 1;
    while (!path.empty()) {
      auto& [node, at] = path.back();
      if (at < first[node + 1]) {
        const int64_t item = items_of[static_cast<size_t>(at++)];
        if (on_path[item] != 0) continue;
        if (depth[item] == 0) {
          on_path[item] = 1;
          depth[item] = 1;
          path.emplace_back(item, first[item]);
          continue;
        }
        depth[node] = std::max(depth[node], depth[item] + 1);
        continue;
      }
      const int64_t done = node;
      on_path[done] = 0;
      path.pop_back();
      if (!path.empty()) depth[path.back().first] = std::max(depth[path.back().first], depth[done] + 1);
      shape.depth = std::max(shape.depth, depth[done]);
    }
  }
  return shape;
}

// How deep a state dict's values nest (a tensor is 4 levels of tuples at most) and how many its
// pickle holds on its stack at once (SETITEMS batches of 1,000 pairs): a pickle past either is
// refused (ScanPickle).
constexpr int64_t kMaxPickleDepth = 50'000;
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

// Why `t`'s view reaches outside its storage ("" when it does not): LibTorch's unpickler takes
// the sizes, strides and offset a file gives without checking them (torch.load refuses such a
// file); the first use would fail far from the file and key. `*bytes_needed` is how far into the
// storage the view reaches.
std::string ViewOutsideStorage(const at::Tensor& t, int64_t* bytes_needed) {
  *bytes_needed = 0;
  if (t.numel() == 0) return "";
  if (t.storage_offset() < 0) return absl::StrCat("negative storage offset ", t.storage_offset());
  int64_t last = t.storage_offset();
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.stride(d) < 0) {
      return absl::StrCat("negative stride ", t.stride(d), " in dimension ", d, " (strides [",
                          absl::StrJoin(t.strides(), ", "),
                          "]); torch.save never writes one, expected non-negative strides");
    }
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
  *bytes_needed = (last + 1) * item;
  return "";
}

// A storage record as read from the archive: its name and its real size (the pickle declares a
// size of its own, which LibTorch's unpickler trusts).
struct StorageRecord {
  std::string name;
  size_t bytes = 0;
};

// Loads every tensor of a torch.save zip archive. Never throws.
absl::Status Load(const std::string& path, const std::string& file_name, TensorList* out) {
  absl::Status magic = CheckMagic(path, file_name);
  if (!magic.ok()) return magic;
  const std::string prefix = absl::StrCat(file_name, ": not a readable torch.save archive: ");
  if (const std::string oversized = OversizedZipRecord(path); !oversized.empty()) {
    return absl::DataLossError(absl::StrCat(prefix, oversized));
  }
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    if (!reader.hasRecord("data.pkl")) {
      return absl::DataLossError(absl::StrCat(prefix, "zip archive has no data.pkl"));
    }
    // OversizedZipRecord checked every record from the zip's directory; this is for an archive
    // whose directory it could not read but LibTorch's reader can (a 2 MB zip bomb reached 4 GB).
    std::error_code size_error;
    const auto file_bytes = static_cast<size_t>(std::filesystem::file_size(path, size_error));
    auto check_record = [&](const std::string& name) {
      const size_t bytes = reader.getRecordSize(name);
      if (!size_error && bytes > file_bytes) {
        throw std::runtime_error(OversizedRecord(name, bytes, file_bytes));
      }
    };
    check_record("data.pkl");
    // torch.save writes sys.byteorder; torch.load swaps a "big" archive's bytes on a little-endian
    // machine. Read as they are, its numbers would be garbage (NaN logits), so it is refused.
    if (reader.hasRecord("byteorder")) {
      check_record("byteorder");
      auto [order_ptr, order_size] = reader.getRecord("byteorder");
      const std::string order =
          order_size == 0 ? std::string() : std::string(static_cast<const char*>(order_ptr.get()), order_size);
      if (order == "big") {
        return absl::UnimplementedError(absl::StrCat(
            file_name,
            ": record byteorder says \"big\": the archive was saved on a big-endian machine, and glmserve reads "
            "little-endian archives only; load it with torch.load and save it again on a little-endian machine, or "
            "convert it to safetensors"));
      }
      if (order != "little") {
        return absl::DataLossError(absl::StrCat(prefix, "record byteorder holds \"", PrintableText(ShownValue(order)),
                                                "\"; expected \"little\" or \"big\""));
      }
    }
    // What torch::jit::readArchiveAndTensors("data", ...) does (it is also what pickle_load uses),
    // except that the pickle bytes pass through PatchStateDictPickle first.
    auto [pkl_ptr, pkl_size] = reader.getRecord("data.pkl");
    std::string pkl(static_cast<const char*>(pkl_ptr.get()), pkl_size);
    pkl_ptr.clear();
    const PickleShape shape = ScanPickle(pkl);
    if (!shape.error.empty()) return absl::DataLossError(absl::StrCat(prefix, shape.error));
    if (shape.depth > kMaxPickleDepth) {
      return absl::DataLossError(absl::StrCat(prefix, "data.pkl nests ", shape.depth,
                                              " values deep (a state dict nests at most ", kMaxPickleDepth, ")"));
    }
    if (!shape.negative_view_key.empty()) {
      return absl::DataLossError(absl::StrCat(file_name, ": tensor ", PrintableText(shape.negative_view_key),
                                              ": its pickled view has a negative ", shape.negative_view,
                                              " (torch.save never writes one, and LibTorch would silently take "
                                              "another); expected non-negative sizes and strides"));
    }
    if (shape.stack_peak > kMaxPickleStack) {
      return absl::DataLossError(absl::StrCat(prefix, "data.pkl holds ", shape.stack_peak,
                                              " values on its stack at once (a state dict holds at most ",
                                              kMaxPickleStack, ")"));
    }
    const bool unwrap = PatchOrderedDicts(&pkl);
    size_t pos = 0;
    auto read_pickle = [&](char* buf, size_t n) -> size_t {
      const size_t k = std::min(n, pkl.size() - pos);
      std::memcpy(buf, pkl.data() + pos, k);
      pos += k;
      return k;
    };
    std::map<const void*, StorageRecord> records;  // by the address of the bytes read
    auto read_record = [&](const std::string& name) {
      check_record("data/" + name);
      auto [data, bytes] = reader.getRecord("data/" + name);
      records[data.get()] = StorageRecord{"data/" + name, bytes};
      return std::move(data);
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
        return absl::InvalidArgumentError(absl::StrCat(file_name, ": entry ", PrintableText(key), " is a ",
                                                       item.value().tagKind(), ", not a tensor"));
      }
      const at::Tensor& t = item.value().toTensor();
      int64_t needed = 0;
      if (std::string bad = ViewOutsideStorage(t, &needed); !bad.empty()) {
        return absl::DataLossError(absl::StrCat(file_name, ": tensor ", PrintableText(key), ": ", bad));
      }
      // The storage's bytes are the record's: one shorter than the view would be read past its end.
      if (auto it = records.find(t.storage().data_ptr().get()); needed > 0 && it != records.end()) {
        if (static_cast<uint64_t>(needed) > it->second.bytes) {
          return absl::DataLossError(absl::StrCat(file_name, ": tensor ", PrintableText(key), ": needs ", needed,
                                                  " bytes of record ", it->second.name, ", which holds ",
                                                  it->second.bytes, " (the record is cut short)"));
        }
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
