#include "flags/flags.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string_view>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace glmserve::flags {
namespace {

// Usage layout: the flag and its value name, then the help from this column, wrapped at kWidth.
constexpr size_t kHelpColumn = 34;
constexpr size_t kWidth = 100;

// LibTorch's device index is an int8_t: a larger N would wrap around to another device.
constexpr int64_t kMaxDeviceIndex = 127;

bool ParseBoolText(const std::string& text, bool* out) {
  if (text == "true" || text == "1") {
    *out = true;
  } else if (text == "false" || text == "0") {
    *out = false;
  } else {
    return false;
  }
  return true;
}

// Appends `text` wrapped at kWidth, every line after the first indented to kHelpColumn; explicit
// newlines in help start a new line there too.
void AppendWrapped(std::string* out, size_t column, const std::string& text) {
  bool first_paragraph = true;
  for (absl::string_view paragraph : absl::StrSplit(text, '\n')) {
    if (!first_paragraph) {
      absl::StrAppend(out, "\n", std::string(kHelpColumn, ' '));
      column = kHelpColumn;
    }
    first_paragraph = false;
    bool first_word = true;
    for (absl::string_view word : absl::StrSplit(paragraph, ' ', absl::SkipEmpty())) {
      if (!first_word && column + 1 + word.size() > kWidth) {
        absl::StrAppend(out, "\n", std::string(kHelpColumn, ' '));
        column = kHelpColumn;
        first_word = true;
      }
      if (!first_word) {
        out->push_back(' ');
        ++column;
      }
      absl::StrAppend(out, word);
      column += word.size();
      first_word = false;
    }
  }
}

}  // namespace

std::string Device::ToString() const {
  if (kind == Kind::kCpu) return "cpu";
  return index < 0 ? "cuda" : absl::StrCat("cuda:", index);
}

absl::StatusOr<Device> ParseDevice(absl::string_view flag, absl::string_view text) {
  Device d;
  if (text == "cpu") return d;
  d.kind = Device::Kind::kCuda;
  if (text == "cuda") return d;
  if (absl::StartsWith(text, "cuda:")) {
    const absl::string_view n = text.substr(5);
    int64_t index = 0;
    // Digits only: SimpleAtoi alone would take "+1" and " 1".
    const bool digits = !n.empty() && n.find_first_not_of("0123456789") == absl::string_view::npos;
    if (digits && ParseIntValue(flag, n, 0, kMaxDeviceIndex, &index).ok()) {
      d.index = static_cast<int>(index);
      return d;
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat(flag, ": '", text, "' is not cpu, cuda or cuda:N (N an integer in [0, ", kMaxDeviceIndex, "])"));
}

const char* DtypeName(Dtype dtype) {
  switch (dtype) {
    case Dtype::kFloat32:
      return "float32";
    case Dtype::kBFloat16:
      return "bfloat16";
    case Dtype::kFloat16:
      return "float16";
    case Dtype::kAuto:
      break;
  }
  return "";
}

absl::Status ParseIntValue(absl::string_view flag, absl::string_view text, int64_t lo, int64_t hi, int64_t* out) {
  // strtoll, not SimpleAtoi: SimpleAtoi skips surrounding blanks, and " 5" is not what was meant.
  const std::string s(text);
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || errno != 0 || v < lo || v > hi || std::isspace(static_cast<unsigned char>(s[0]))) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": '", text, "' is not an integer in [", lo, ", ", hi, "]"));
  }
  *out = v;
  return absl::OkStatus();
}

absl::Status ParseNumberValue(absl::string_view flag, absl::string_view text, NumberRange range, double* out) {
  const std::string s(text);
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  const bool above_lo = range.lo_open ? v > range.lo : v >= range.lo;
  if (s.empty() || *end != '\0' || errno != 0 || !std::isfinite(v) || !above_lo || v > range.hi ||
      std::isspace(static_cast<unsigned char>(s[0]))) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": '", text, "' is not a number in ",
                                                   range.lo_open ? "(" : "[", range.lo, ", ", range.hi, "]"));
  }
  *out = v;
  return absl::OkStatus();
}

absl::Status ParseDurationValue(absl::string_view flag, absl::string_view text, double min_s, double max_s,
                                double* seconds) {
  absl::string_view number = text;
  double scale = 1;
  // "ms" first: it also ends with "s".
  if (absl::ConsumeSuffix(&number, "ms")) {
    scale = 1e-3;
  } else if (absl::ConsumeSuffix(&number, "m")) {
    scale = 60;
  } else if (absl::ConsumeSuffix(&number, "h")) {
    scale = 3600;
  } else {
    absl::ConsumeSuffix(&number, "s");
  }
  double v = 0;
  if (ParseNumberValue(flag, number, {-std::numeric_limits<double>::max(), std::numeric_limits<double>::max()}, &v)
          .ok() &&
      v * scale >= min_s && v * scale <= max_s) {
    *seconds = v * scale;
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(flag, ": '", text, "' is not a duration in [", min_s, "s, ", max_s, "s] (30, 30s, 500ms, 2m, 1h)"));
}

FlagSet::FlagSet(std::string program, std::string synopsis, std::string description)
    : program_(std::move(program)), synopsis_(std::move(synopsis)), description_(std::move(description)) {}

void FlagSet::Section(std::string title) { section_ = std::move(title); }

void FlagSet::Epilogue(std::string text) { epilogue_ = std::move(text); }

FlagSet::Flag& FlagSet::Add(std::string name, std::string help, std::string value_name, std::string default_text) {
  Flag& f = flags_.emplace_back();
  f.name_ = std::move(name);
  f.help_ = std::move(help);
  f.section_ = section_;
  f.value_name_ = std::move(value_name);
  f.default_text_ = std::move(default_text);
  return f;
}

const FlagSet::Flag* FlagSet::Find(absl::string_view name) const {
  for (const Flag& f : flags_) {
    if (f.name_ == name) return &f;
  }
  return nullptr;
}

FlagSet::Flag& FlagSet::String(std::string name, std::string* target, std::string help) {
  Flag& f = Add(std::move(name), std::move(help), "TEXT", *target);
  f.set_ = [target](const Flag&, const std::string& value) {
    *target = value;
    return absl::OkStatus();
  };
  return f;
}

FlagSet::Flag& FlagSet::Path(std::string name, std::string* target, std::string help) {
  return String(std::move(name), target, std::move(help)).ValueName("PATH").NotEmpty();
}

FlagSet::Flag& FlagSet::Uint64(std::string name, uint64_t* target, std::string help) {
  Flag& f = Add(std::move(name), std::move(help), "N", absl::StrCat(*target));
  f.set_ = [target](const Flag& flag, const std::string& value) {
    uint64_t v = 0;
    if (value.empty() || value.find_first_not_of("0123456789") != std::string::npos || !absl::SimpleAtoi(value, &v)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag.name_, ": '", value, "' is not an integer in [0, ", UINT64_MAX, "]"));
    }
    *target = v;
    return absl::OkStatus();
  };
  return f;
}

FlagSet::Flag& FlagSet::Bool(std::string name, bool* target, std::string help) {
  Flag& f = Add(std::move(name), std::move(help), "true|false", *target ? "true" : "false");
  f.set_ = [target](const Flag& flag, const std::string& value) {
    if (!ParseBoolText(value, target)) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag.name_, ": '", value, "' is not true|false"));
    }
    return absl::OkStatus();
  };
  return f;
}

FlagSet::Flag& FlagSet::Switch(std::string name, bool* target, std::string help) {
  Flag& f = Bool(std::move(name), target, std::move(help));
  f.is_switch_ = true;
  f.value_name_.clear();
  if (!*target) f.default_text_.clear();  // a switch is off unless given; saying so is noise
  return f;
}

FlagSet::Flag& FlagSet::Choice(std::string name, std::string* target, std::vector<std::string> choices,
                               std::string help) {
  const std::string names = absl::StrJoin(choices, "|");
  Flag& f = Add(std::move(name), std::move(help), names, *target);
  f.set_ = [target, choices = std::move(choices), names](const Flag& flag, const std::string& value) {
    for (const std::string& c : choices) {
      if (c == value) {
        *target = value;
        return absl::OkStatus();
      }
    }
    return absl::InvalidArgumentError(absl::StrCat("--", flag.name_, ": '", value, "' is not ", names));
  };
  return f;
}

FlagSet::Flag& FlagSet::Duration(std::string name, double* seconds, double min_s, double max_s, std::string help) {
  Flag& f = Add(std::move(name), std::move(help), "T", absl::StrCat(*seconds, "s"));
  f.set_ = [seconds, min_s, max_s](const Flag& flag, const std::string& value) {
    return ParseDurationValue(absl::StrCat("--", flag.name_), value, min_s, max_s, seconds);
  };
  return f;
}

FlagSet::Flag& FlagSet::IntList(std::string name, std::vector<int32_t>* target, int64_t lo, int64_t hi,
                                std::string help) {
  Flag& f = Add(std::move(name), std::move(help), "N,N,...", absl::StrJoin(*target, ","));
  f.set_ = [target, lo, hi](const Flag& flag, const std::string& value) {
    const std::string label = absl::StrCat("--", flag.name_);
    std::vector<int32_t> values;
    for (absl::string_view piece : absl::StrSplit(value, ',')) {
      if (piece.empty() && flag.skip_empty_items_) continue;
      int64_t v = 0;
      if (absl::Status s = ParseIntValue(label, piece, lo, hi, &v); !s.ok()) return s;
      values.push_back(static_cast<int32_t>(v));
    }
    if (values.empty()) return absl::InvalidArgumentError(absl::StrCat(label, ": '", value, "' lists no integers"));
    *target = std::move(values);
    return absl::OkStatus();
  };
  return f;
}

FlagSet::Flag& FlagSet::StringList(std::string name, std::vector<std::string>* target, std::string help) {
  Flag& f = Add(std::move(name), std::move(help), "A,B,...", absl::StrJoin(*target, ","));
  f.set_ = [target](const Flag& flag, const std::string& value) {
    std::vector<std::string> values;
    for (absl::string_view piece : absl::StrSplit(value, ',')) {
      if (piece.empty() && flag.skip_empty_items_) continue;
      values.emplace_back(piece);
    }
    *target = std::move(values);
    return absl::OkStatus();
  };
  return f;
}

FlagSet::Flag& FlagSet::DeviceFlag(std::string name, Device* target, std::string help) {
  Flag& f = Add(std::move(name), std::move(help), "cpu|cuda[:N]", target->ToString());
  f.set_ = [target](const Flag& flag, const std::string& value) {
    absl::StatusOr<Device> d = ParseDevice(absl::StrCat("--", flag.name_), value);
    if (!d.ok()) return d.status();
    *target = *d;
    return absl::OkStatus();
  };
  return f;
}

FlagSet::Flag& FlagSet::DtypeFlag(std::string name, Dtype* target, std::string help) {
  Flag& f = Enum(std::move(name), target,
                 {{"float32", Dtype::kFloat32}, {"bfloat16", Dtype::kBFloat16}, {"float16", Dtype::kFloat16}},
                 std::move(help));
  if (*target == Dtype::kAuto) f.default_text_ = "float32 on CPU, bfloat16 on CUDA";
  return f;
}

FlagSet::Flag& FlagSet::Custom(std::string name, std::string value_name, std::string default_text, std::string help,
                               std::function<std::optional<std::string>(const std::string& value)> parse) {
  Flag& f = Add(std::move(name), std::move(help), std::move(value_name), std::move(default_text));
  f.set_ = [parse = std::move(parse)](const Flag& flag, const std::string& value) {
    if (std::optional<std::string> why = parse(value)) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag.name_, ": '", value, "' ", *why));
    }
    return absl::OkStatus();
  };
  return f;
}

void FlagSet::Positional(std::string value_name, std::vector<std::string>* target, std::string help) {
  positional_ = target;
  positional_name_ = std::move(value_name);
  positional_help_ = std::move(help);
}

absl::Status FlagSet::Parse(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      help_requested_ = true;
      return absl::OkStatus();
    }
    if (arg.size() <= 2 || arg.rfind("--", 0) != 0) {
      if (positional_ != nullptr) {
        positional_->push_back(arg);
        continue;
      }
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "': flags look like --name value"));
    }
    std::string name = arg.substr(2), value;
    const size_t eq = name.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) {
      value = name.substr(eq + 1);
      name.resize(eq);
    }
    const Flag* flag = Find(name);
    if (flag == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag '--", name, "' (see ", program_, " --help)"));
    }
    if (!inline_value) {
      if (flag->is_switch_) {
        // A switch also takes a separate true|false, as a --name true|false flag does: scripts
        // written for either form keep working when a flag becomes a switch.
        const bool spelled =
            i + 1 < argc && (std::string_view(argv[i + 1]) == "true" || std::string_view(argv[i + 1]) == "false");
        value = spelled ? argv[++i] : "true";
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        return absl::InvalidArgumentError(absl::StrCat("--", name, ": needs a value (", flag->value_name_, ")"));
      }
    }
    if (flag->not_empty_ && value.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, ": must not be empty"));
    }
    if (absl::Status s = flag->set_(*flag, value); !s.ok()) return s;
    set_.insert(name);
  }
  return absl::OkStatus();
}

std::string FlagSet::Usage() const {
  std::string out = absl::StrCat("usage: ", program_, " ", synopsis_, "\n");
  if (!description_.empty()) absl::StrAppend(&out, "\n", description_, description_.back() == '\n' ? "" : "\n");
  absl::StrAppend(&out, "Flags take '--flag value' or '--flag=value'; switches stand alone.\n");
  std::string section = "\x01";  // differs from every title, "" included
  for (const Flag& f : flags_) {
    if (f.section_ != section) {
      section = f.section_;
      absl::StrAppend(&out, "\n", section.empty() ? "flags" : section, ":\n");
    }
    std::string head = absl::StrCat("  --", f.name_, f.value_name_.empty() ? "" : " ", f.value_name_);
    out += head;
    size_t column = head.size();
    if (column + 1 >= kHelpColumn) {
      absl::StrAppend(&out, "\n", std::string(kHelpColumn, ' '));
    } else {
      out.append(kHelpColumn - column, ' ');
    }
    std::string help = f.help_;
    if (!f.default_text_.empty()) absl::StrAppend(&help, help.empty() ? "" : " ", "(default: ", f.default_text_, ")");
    AppendWrapped(&out, kHelpColumn, help);
    out += "\n";
  }
  if (positional_ != nullptr) {
    absl::StrAppend(&out, "\narguments:\n  ", positional_name_);
    out.append(kHelpColumn > positional_name_.size() + 2 ? kHelpColumn - positional_name_.size() - 2 : 1, ' ');
    AppendWrapped(&out, kHelpColumn, positional_help_);
    out += "\n";
  }
  if (!epilogue_.empty()) absl::StrAppend(&out, "\n", epilogue_, epilogue_.back() == '\n' ? "" : "\n");
  return out;
}

int FlagSet::UsageError(absl::string_view message) const {
  std::fprintf(stderr, "%s: %s\nusage: %s %s (%s --help lists every flag)\n", program_.c_str(),
               std::string(message).c_str(), program_.c_str(), synopsis_.c_str(), program_.c_str());
  return kExitUsage;
}

std::optional<int> FlagSet::ParseCommandLine(int argc, char** argv) {
  const absl::Status parsed = Parse(argc, argv);
  if (!parsed.ok()) return UsageError(parsed.message());
  if (help_requested_) {
    std::fputs(Usage().c_str(), stdout);
    return 0;
  }
  return std::nullopt;
}

}  // namespace glmserve::flags
