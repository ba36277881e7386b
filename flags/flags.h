// One command-line flag library for every glmserve binary (serve, the CLI commands, doctor,
// glmload, the benchmarks). A FlagSet is a table: each row binds `--name` to a typed target,
// its range or choices, its help and its default; the same table parses argv and writes the
// usage text, so the two cannot drift. Values are checked while parsing, so a bad value is
// refused before the command binds a port or loads a model. No LibTorch, no protobuf.
//
// Syntax: `--name value` or `--name=value`; switches are bare (`--json`, or `--json=false`).
// The word after a valued flag is always its value, even when it starts with '-' (negative
// numbers). Every error is INVALID_ARGUMENT and starts with the flag, then the value in quotes:
// "--port: '70000' is not an integer in [0, 65535]".
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace glmserve::flags {

// The exit status of every command for a bad flag or flag value (and of `glmserve` itself).
inline constexpr int kExitUsage = 2;
// Upper bounds for Int flags: the largest value an int32_t target holds, and "forever" for the
// time flags (ms or us) that stays far from overflow when converted to a finer unit.
inline constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
inline constexpr int64_t kTimeMax = int64_t{1} << 40;

// Where the model runs, parsed once from --device. Spellings: "cpu", "cuda", "cuda:N".
struct Device {
  enum class Kind { kCpu, kCuda };
  Kind kind = Kind::kCpu;
  // CUDA ordinal; -1 for plain "cuda", which the runtime maps to device 0. Kept apart from 0 so
  // ToString() gives back what the user wrote and logs keep their wording.
  int index = -1;

  bool is_cuda() const { return kind == Kind::kCuda; }
  // "cpu", "cuda" or "cuda:N": the spelling LoadOptions::device takes.
  std::string ToString() const;
  bool operator==(const Device& o) const { return kind == o.kind && index == o.index; }
};

// INVALID_ARGUMENT naming `flag` and `text` unless text is cpu, cuda or cuda:N (N decimal, >= 0).
absl::StatusOr<Device> ParseDevice(absl::string_view flag, absl::string_view text);

// Compute dtype from --dtype; kAuto (flag not given) is float32 on CPU and bfloat16 on CUDA.
enum class Dtype { kAuto, kFloat32, kBFloat16, kFloat16 };
// "float32", "bfloat16", "float16"; "" for kAuto (LoadOptions::dtype's "per device").
const char* DtypeName(Dtype dtype);

// A base-10 integer in [lo, hi], the whole text. Also used for values found inside other values
// (list items, prompt files), so `flag` may be any label.
absl::Status ParseIntValue(absl::string_view flag, absl::string_view text, int64_t lo, int64_t hi, int64_t* out);

// Closed [lo, hi], or (lo, hi] when lo_open: the range a number flag accepts.
struct NumberRange {
  double lo = 0;
  double hi = 0;
  bool lo_open = false;  // lo itself is refused (e.g. top-p in (0, 1])
};
// A finite number in `range`, the whole text.
absl::Status ParseNumberValue(absl::string_view flag, absl::string_view text, NumberRange range, double* out);

// "30" (seconds), "30s", "500ms", "2m" or "1h" -> seconds, within [min_s, max_s].
absl::Status ParseDurationValue(absl::string_view flag, absl::string_view text, double min_s, double max_s,
                                double* seconds);

class FlagSet {
 public:
  // One row of the table. The setters refine how the row parses and how --help shows it.
  class Flag {
   public:
    // The placeholder after the name in --help ("DIR", "N"); each type has its own default.
    Flag& ValueName(std::string name) {
      value_name_ = std::move(name);
      return *this;
    }
    // Replaces the default that --help prints (taken from the target's value when registered),
    // for defaults that are resolved later ("the model's max context - 1"). "" prints none.
    Flag& DefaultText(std::string text) {
      default_text_ = std::move(text);
      return *this;
    }
    // Refuse an empty value: for names of files, hosts and other things that cannot be "".
    Flag& NotEmpty() {
      not_empty_ = true;
      return *this;
    }
    // Lists: empty items ("1,,2", a trailing comma) are dropped instead of refused.
    Flag& SkipEmptyItems() {
      skip_empty_items_ = true;
      return *this;
    }

   private:
    friend class FlagSet;
    std::string name_;  // without the dashes
    std::string help_;
    std::string section_;
    std::string value_name_;
    std::string default_text_;
    bool is_switch_ = false;  // no value: --name alone sets true
    bool not_empty_ = false;
    bool skip_empty_items_ = false;
    // Parses and stores the value; the error names the flag ("--name") and the value.
    std::function<absl::Status(const Flag& flag, const std::string& value)> set_;
  };

  // `program` is what the user types ("glmserve serve"); `synopsis` follows it on the usage line
  // ("--model DIR [flags]"); `description` is the paragraph under that line.
  FlagSet(std::string program, std::string synopsis, std::string description);
  FlagSet(const FlagSet&) = delete;
  FlagSet& operator=(const FlagSet&) = delete;

  // Flags registered after this call are listed under `title` in the usage text.
  void Section(std::string title);
  // Printed after the flag list (exit codes, notes that concern several flags).
  void Epilogue(std::string text);

  // Any text, "" included unless NotEmpty().
  Flag& String(std::string name, std::string* target, std::string help);
  // A file or directory: any non-empty text (existence is the command's business: a later error
  // can say more than "does not exist").
  Flag& Path(std::string name, std::string* target, std::string help);
  // An integer in [lo, hi]; T is any integer type that holds that range.
  template <typename T>
  Flag& Int(std::string name, T* target, int64_t lo, int64_t hi, std::string help);
  // Any unsigned 64-bit integer (seeds).
  Flag& Uint64(std::string name, uint64_t* target, std::string help);
  // A finite number in `range`; T is float or double.
  template <typename T>
  Flag& Number(std::string name, T* target, NumberRange range, std::string help);
  // --name true|false (also 1|0): a value is required.
  Flag& Bool(std::string name, bool* target, std::string help);
  // --name alone sets true; --name=false|true and --name true|false (that word next) also work.
  Flag& Switch(std::string name, bool* target, std::string help);
  // One of `choices`; the usage shows them as a|b|c.
  Flag& Choice(std::string name, std::string* target, std::vector<std::string> choices, std::string help);
  template <typename E>
  Flag& Enum(std::string name, E* target, std::vector<std::pair<std::string, E>> choices, std::string help);
  // A duration (see ParseDurationValue), stored in seconds.
  Flag& Duration(std::string name, double* seconds, double min_s, double max_s, std::string help);
  // Comma-separated integers, each in [lo, hi]; at least one.
  Flag& IntList(std::string name, std::vector<int32_t>* target, int64_t lo, int64_t hi, std::string help);
  // Comma-separated texts.
  Flag& StringList(std::string name, std::vector<std::string>* target, std::string help);
  // --device cpu|cuda|cuda:N.
  Flag& DeviceFlag(std::string name, Device* target, std::string help);
  // --dtype float32|bfloat16|float16 (kAuto when not given).
  Flag& DtypeFlag(std::string name, Dtype* target, std::string help);
  // A value type of the command's own: `parse` gets the value and returns the error message
  // tail on failure ("is not N, fixed:N or uniform:A:B"), which is prefixed with the flag and
  // the value.
  Flag& Custom(std::string name, std::string value_name, std::string default_text, std::string help,
               std::function<std::optional<std::string>(const std::string& value)> parse);

  // Words that are not flags (tokenizer_bench's directories); without this they are refused.
  void Positional(std::string value_name, std::vector<std::string>* target, std::string help);

  // Parses argv[1..argc). Stops at --help/-h (then help_requested()). INVALID_ARGUMENT naming
  // the flag (and the value) on an unknown flag, a missing value or a bad value.
  absl::Status Parse(int argc, char** argv);
  bool help_requested() const { return help_requested_; }
  // Whether --name appeared on the command line (a value equal to the default counts).
  bool was_set(absl::string_view name) const { return set_.count(std::string(name)) > 0; }

  // The usage text, from the table: synopsis, description, each section's flags with help and
  // default, the epilogue.
  std::string Usage() const;

  // Parse() for a command's main: nullopt to go on; otherwise the exit status after printing
  // the usage (stdout, 0) for --help or "<program>: <error>" and a pointer to --help (stderr,
  // kExitUsage) for a bad flag.
  std::optional<int> ParseCommandLine(int argc, char** argv);
  // For errors found after Parse() (flags that conflict, a required flag missing): prints as a
  // bad flag does and returns kExitUsage.
  int UsageError(absl::string_view message) const;

 private:
  Flag& Add(std::string name, std::string help, std::string value_name, std::string default_text);
  const Flag* Find(absl::string_view name) const;

  std::string program_;
  std::string synopsis_;
  std::string description_;
  std::string epilogue_;
  std::string section_;
  std::deque<Flag> flags_;  // deque: Flag& handed out stay valid as rows are added
  std::vector<std::string>* positional_ = nullptr;
  std::string positional_name_, positional_help_;
  std::set<std::string> set_;
  bool help_requested_ = false;
};

template <typename T>
FlagSet::Flag& FlagSet::Int(std::string name, T* target, int64_t lo, int64_t hi, std::string help) {
  Flag& f = Add(std::move(name), std::move(help), "N", absl::StrCat(*target));
  f.set_ = [target, lo, hi](const Flag& flag, const std::string& value) {
    int64_t v = 0;
    if (absl::Status s = ParseIntValue(absl::StrCat("--", flag.name_), value, lo, hi, &v); !s.ok()) return s;
    *target = static_cast<T>(v);
    return absl::OkStatus();
  };
  return f;
}

template <typename T>
FlagSet::Flag& FlagSet::Number(std::string name, T* target, NumberRange range, std::string help) {
  Flag& f = Add(std::move(name), std::move(help), "X", absl::StrCat(*target));
  f.set_ = [target, range](const Flag& flag, const std::string& value) {
    double v = 0;
    if (absl::Status s = ParseNumberValue(absl::StrCat("--", flag.name_), value, range, &v); !s.ok()) return s;
    // A float target rounds: 1e-50 for (0, 1] became 0, refused later in words naming no flag.
    const double stored = static_cast<double>(static_cast<T>(v));
    if (range.lo_open ? !(stored > range.lo) : !(stored >= range.lo)) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag.name_, ": '", value, "' rounds to ", stored,
                                                     ", outside ", range.lo_open ? "(" : "[", range.lo, ", ", range.hi,
                                                     "]"));
    }
    *target = static_cast<T>(v);
    return absl::OkStatus();
  };
  return f;
}

template <typename E>
FlagSet::Flag& FlagSet::Enum(std::string name, E* target, std::vector<std::pair<std::string, E>> choices,
                             std::string help) {
  std::string names, current;
  for (const auto& [text, value] : choices) {
    absl::StrAppend(&names, names.empty() ? "" : "|", text);
    if (value == *target) current = text;
  }
  Flag& f = Add(std::move(name), std::move(help), names, current);
  f.set_ = [target, choices, names](const Flag& flag, const std::string& value) {
    for (const auto& [text, v] : choices) {
      if (text == value) {
        *target = v;
        return absl::OkStatus();
      }
    }
    return absl::InvalidArgumentError(absl::StrCat("--", flag.name_, ": '", value, "' is not ", names));
  };
  return f;
}

}  // namespace glmserve::flags
