// One tensor as a checkpoint file stores it: what the format readers (safetensors.h,
// pytorch_bin.h) produce and checkpoint.h collects. Its own header so that the readers sit below
// the checkpoint listing and never include it.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace glmserve {

struct TensorRecord {
  std::string name;   // key exactly as stored (before any remapping)
  std::string file;   // file name relative to the checkpoint directory
  std::string dtype;  // safetensors spelling: "F32", "F16", "BF16", "F64", "I8", ...
  std::vector<int64_t> shape;
  uint64_t data_offset = 0;  // safetensors: absolute byte offset of the data in `file`
  uint64_t data_bytes = 0;   // safetensors: byte length of the data
};

// `value` (a key, a file name, a record's text, a parser's quote: whatever a file says) as a
// message shows it: every control byte and every byte that is not part of well-formed UTF-8 as
// \xNN. A NUL printed with the rest would end the report there, a newline would make one problem
// two lines, and a stray byte made `inspect --json` abort (the JSON writer refuses it).
inline std::string ShownName(const std::string& value) {
  std::string out;
  out.reserve(value.size());
  auto byte_at = [&](size_t i) { return i < value.size() ? static_cast<unsigned char>(value[i]) : 0u; };
  for (size_t i = 0; i < value.size();) {
    const unsigned char lead = byte_at(i);
    size_t len = 0;  // of a well-formed sequence starting at i, 0 when none
    if (lead >= 0x20 && lead < 0x7f) {
      len = 1;
    } else if (lead >= 0xc2 && lead <= 0xf4) {
      const size_t want = lead < 0xe0 ? 2 : lead < 0xf0 ? 3 : 4;
      // The second byte's range excludes overlong forms, surrogates and code points past U+10FFFF.
      const unsigned char lo = lead == 0xe0 ? 0xa0 : lead == 0xf0 ? 0x90 : 0x80;
      const unsigned char hi = lead == 0xed ? 0x9f : lead == 0xf4 ? 0x8f : 0xbf;
      bool ok = byte_at(i + 1) >= lo && byte_at(i + 1) <= hi;
      for (size_t k = 2; ok && k < want; ++k) ok = (byte_at(i + k) & 0xc0) == 0x80;
      if (ok) len = want;
    }
    if (len == 0) {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "\\x%02x", lead);
      out += hex;
      len = 1;
    } else {
      out.append(value, i, len);
    }
    i += len;
  }
  return out;
}

}  // namespace glmserve
