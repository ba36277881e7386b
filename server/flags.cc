#include "server/flags.h"

#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace glmserve {

FlagParser::FlagParser(std::string command, std::string summary)
    : command_(std::move(command)), summary_(std::move(summary)) {}

void FlagParser::Add(Flag flag) { flags_.push_back(std::move(flag)); }

void FlagParser::AddString(const std::string& name, std::string* target, const std::string& help) {
  Add({name, help, target->empty() ? "\"\"" : *target, false,
       [target](const std::string& v) { *target = v; return true; }, "a string"});
}

void FlagParser::AddInt(const std::string& name, int32_t* target, const std::string& help) {
  Add({name, help, absl::StrCat(*target), false,
       [target](const std::string& v) { return absl::SimpleAtoi(v, target); }, "an integer"});
}

void FlagParser::AddInt64(const std::string& name, int64_t* target, const std::string& help) {
  Add({name, help, absl::StrCat(*target), false,
       [target](const std::string& v) { return absl::SimpleAtoi(v, target); }, "an integer"});
}

void FlagParser::AddUint64(const std::string& name, uint64_t* target, const std::string& help) {
  Add({name, help, absl::StrCat(*target), false,
       [target](const std::string& v) { return absl::SimpleAtoi(v, target); }, "a non-negative integer"});
}

void FlagParser::AddDouble(const std::string& name, double* target, const std::string& help) {
  Add({name, help, absl::StrCat(*target), false,
       [target](const std::string& v) { return absl::SimpleAtod(v, target) && std::isfinite(*target); },
       "a number"});
}

void FlagParser::AddFloat(const std::string& name, float* target, const std::string& help) {
  Add({name, help, absl::StrCat(*target), false,
       [target](const std::string& v) { return absl::SimpleAtof(v, target) && std::isfinite(*target); },
       "a number"});
}

void FlagParser::AddBool(const std::string& name, bool* target, const std::string& help) {
  Add({name, help, *target ? "true" : "false", true,
       [target](const std::string& v) { return absl::SimpleAtob(v, target); }, "true or false"});
}

absl::Status FlagParser::Parse(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      help_requested_ = true;
      return absl::OkStatus();
    }
    if (arg.rfind("--", 0) != 0 || arg.size() == 2) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "': flags look like --name value"));
    }
    std::string name = arg.substr(2), value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    const Flag* flag = nullptr;
    for (const Flag& f : flags_) {
      if (f.name == name) flag = &f;
    }
    if (flag == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, ": unknown flag for '", command_,
                                                     "' (see glmserve ", command_, " --help)"));
    }
    if (!has_value) {
      if (flag->is_bool) {
        value = "true";
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        return absl::InvalidArgumentError(absl::StrCat("--", name, ": missing value, expected ", flag->expected));
      }
    }
    if (!flag->assign(value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, ": '", value, "' is not valid, expected ", flag->expected));
    }
    set_.insert(name);
  }
  return absl::OkStatus();
}

std::string FlagParser::Usage() const {
  std::string out = absl::StrCat("usage: glmserve ", command_, " [flags]\n\n", summary_, "\n\nflags:\n");
  for (const Flag& f : flags_) {
    absl::StrAppend(&out, "  --", f.name, f.is_bool ? "" : " VALUE", "\n      ", f.help, " (default: ",
                    f.default_text, ")\n");
  }
  return out;
}

}  // namespace glmserve
