// What the CLI tests share: the glmserve binary and fixtures their target names
// (GLMSERVE_BINARY, GLMSERVE_FIXTURES_DIR), a recorded JSON file, ids as a --input-ids value.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "tests/testutil/read_file.h"
#include "tests/testutil/run_binary.h"

namespace glmserve::testing {

inline RunResult Glmserve(const std::vector<std::string>& args) { return RunBinary(GLMSERVE_BINARY, args); }

inline std::filesystem::path Fixtures() { return std::filesystem::path(GLMSERVE_FIXTURES_DIR); }

inline nlohmann::json ReadJson(const std::filesystem::path& path) {
  return nlohmann::json::parse(ReadWholeFile(path.string()));
}

// [1, 2, 3] -> "1,2,3".
inline std::string Join(const nlohmann::json& ids) { return absl::StrJoin(ids.get<std::vector<int>>(), ","); }

}  // namespace glmserve::testing
