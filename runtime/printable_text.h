// Text from outside (a checkpoint's keys and records, a client's values) made safe to print in
// a message or a log line. Header-only, no dependencies: the checkpoint readers and the logger
// both use it.
#pragma once

#include <cstdio>
#include <string>
#include <string_view>

namespace glmserve {

// `value` as a message or a text log line shows it: newline, carriage return and tab as \n, \r,
// \t, every other control byte and every byte that is not part of well-formed UTF-8 as \xNN. A
// NUL printed with the rest would end a report there, a newline would make one problem (or one
// log line) two, and a stray byte made `inspect --json` abort (the JSON writer refuses it).
inline std::string PrintableText(std::string_view value) {
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
      if (lead == '\n') {
        out += "\\n";
      } else if (lead == '\r') {
        out += "\\r";
      } else if (lead == '\t') {
        out += "\\t";
      } else {
        char hex[8];
        std::snprintf(hex, sizeof(hex), "\\x%02x", lead);
        out += hex;
      }
      len = 1;
    } else {
      out.append(value.substr(i, len));
    }
    i += len;
  }
  return out;
}

}  // namespace glmserve
