// nlohmann::json helpers the checkpoint reader, the tokenizers, the CLI and the front ends share
// (header-only: no library between them): an exception's text as a user reads it, a dump that never
// throws, and an integer's range.
#pragma once

#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/strings/str_cat.h"
#include "runtime/shown_value.h"

namespace glmserve {

// e.what() without the "[json.exception.<kind>.<id>] " prefix, and the text the parser quotes (as
// "last read: '...'" or "number overflow parsing '...'") cut short: an unterminated string quoted
// a whole 4 MiB prompt, and a 99 MB run of digits in a safetensors header came back whole (a
// 104 MB message and log line).
inline std::string JsonErrorText(const nlohmann::json::exception& e) {
  std::string what = e.what();
  const size_t at = what.find("] ");
  if (what.rfind("[json.exception.", 0) == 0 && at != std::string::npos) what = what.substr(at + 2);
  for (const char* marker : {"; last read: '", "overflow parsing '"}) {
    const size_t quoted = what.find(marker);
    if (quoted == std::string::npos) continue;
    const size_t from = quoted + std::strlen(marker);
    // The quote ends before the parser's own "; expected <token name>" (a few words at the end),
    // else at the message's last quote; the quoted text is the input's and may hold that string.
    size_t to = what.rfind("'; expected ");
    if (to == std::string::npos || to < from || what.size() - to > 40) {
      to = what.size() > from && what.back() == '\'' ? what.size() - 1 : what.size();
    }
    what = absl::StrCat(what.substr(0, from), ShownValue(what.substr(from, to - from)), what.substr(to));
  }
  return what;
}

// The JSON text of `j`, bytes that are not UTF-8 (a generated text cut inside a character, a
// file's stray byte quoted in a message) as U+FFFD: nlohmann's dump() throws on them, which
// ended `inspect --json` with an abort.
inline std::string JsonDump(const nlohmann::json& j, int indent = -1) {
  return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

// True when `value` is a JSON integer in [lo, hi]: what get<int32_t>() and the like return
// unchanged (they wrap silently otherwise; an unsigned one past 2^63 is out of every range here).
inline bool JsonIntegerIn(const nlohmann::json& value, int64_t lo, int64_t hi) {
  if (!value.is_number_integer()) return false;
  if (value.is_number_unsigned()) {  // the parser's type for every non-negative literal, 0 included
    const uint64_t u = value.get<uint64_t>();
    return hi >= 0 && u <= static_cast<uint64_t>(hi) && (lo <= 0 || u >= static_cast<uint64_t>(lo));
  }
  const int64_t v = value.get<int64_t>();
  return v >= lo && v <= hi;
}

// The shape of a JSON text before it is built into a tree: nlohmann parses any depth, but its
// dump() (quoting a value in a message) recurses once a level (a 200 KB file of 100,000 '[' ended
// inspect and serve with SIGSEGV), and a tree takes ~40x the text's bytes (a 100 MB header of '{}'
// took 4 GB). A file a checkpoint or tokenizer reader takes nests a few levels; `max_values` is
// the most scalars, objects and arrays it may hold. "" when within both, else why not.
inline std::string JsonShapeProblem(const std::string& text, int max_depth, uint64_t max_values) {
  struct Shape final : nlohmann::json_sax<nlohmann::json> {
    int depth = 0, max_depth = 0;
    uint64_t values = 0, max_values = 0;
    std::string problem;
    bool value() {
      if (++values <= max_values) return true;
      problem = absl::StrCat("holds more than ", max_values, " JSON values");
      return false;
    }
    bool open() {
      if (!value()) return false;
      if (++depth <= max_depth) return true;
      problem = absl::StrCat("nests deeper than ", max_depth, " levels");
      return false;
    }
    bool key(string_t&) override { return true; }
    bool start_object(std::size_t) override { return open(); }
    bool end_object() override { return --depth, true; }
    bool start_array(std::size_t) override { return open(); }
    bool end_array() override { return --depth, true; }
    bool null() override { return value(); }
    bool boolean(bool) override { return value(); }
    bool number_integer(number_integer_t) override { return value(); }
    bool number_unsigned(number_unsigned_t) override { return value(); }
    bool number_float(number_float_t, const string_t&) override { return value(); }
    bool string(string_t&) override { return value(); }
    bool binary(binary_t&) override { return value(); }
    // Syntax errors are the full parse's to report, with their position.
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }
  } shape;
  shape.max_depth = max_depth;
  shape.max_values = max_values;
  nlohmann::json::sax_parse(text, &shape, nlohmann::json::input_format_t::json, /*strict=*/false);
  return shape.problem;
}

}  // namespace glmserve
