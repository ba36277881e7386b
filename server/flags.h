// A small command-line flag parser: `--name value` or `--name=value`, booleans as `--name`.
// Every error names the flag and what was expected; --help prints each flag with its default.
#pragma once

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace glmserve {

class FlagParser {
 public:
  FlagParser(std::string command, std::string summary);

  void AddString(const std::string& name, std::string* target, const std::string& help);
  void AddInt(const std::string& name, int32_t* target, const std::string& help);
  void AddInt64(const std::string& name, int64_t* target, const std::string& help);
  void AddUint64(const std::string& name, uint64_t* target, const std::string& help);
  void AddDouble(const std::string& name, double* target, const std::string& help);
  void AddFloat(const std::string& name, float* target, const std::string& help);
  void AddBool(const std::string& name, bool* target, const std::string& help);

  // INVALID_ARGUMENT naming the flag on an unknown flag, a missing or malformed value.
  absl::Status Parse(int argc, char** argv);
  bool help_requested() const { return help_requested_; }
  bool was_set(const std::string& name) const { return set_.count(name) > 0; }
  std::string Usage() const;

 private:
  struct Flag {
    std::string name;
    std::string help;
    std::string default_text;
    bool is_bool = false;
    std::function<bool(const std::string&)> assign;  // false when the value is malformed
    std::string expected;                            // what a valid value looks like
  };
  void Add(Flag flag);

  std::string command_;
  std::string summary_;
  std::vector<Flag> flags_;
  std::set<std::string> set_;
  bool help_requested_ = false;
};

}  // namespace glmserve
