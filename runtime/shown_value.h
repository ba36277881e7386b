// A client's value quoted back in an error message, cut short: a 20 KB role or URL echoed whole
// made a gRPC status larger than a client's 16 KB metadata limit (the client then read
// RESOURCE_EXHAUSTED, which it retries, instead of INVALID_ARGUMENT). Header-only: the tokenizer's
// chat template and the server's request parsing share it without a library between them.
#pragma once

#include <string>

#include "absl/strings/str_cat.h"

namespace glmserve {

// `value` whole up to max_bytes, else its first max_bytes (not splitting a UTF-8 character),
// "...", and its size.
inline std::string ShownValue(const std::string& value, size_t max_bytes = 48) {
  if (value.size() <= max_bytes) return value;
  size_t cut = max_bytes;
  while (cut > 0 && (static_cast<unsigned char>(value[cut]) & 0xC0) == 0x80) --cut;  // a continuation byte
  return absl::StrCat(value.substr(0, cut), "... (", value.size(), " bytes)");
}

}  // namespace glmserve
