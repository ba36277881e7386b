// The fixture models (tests/fixtures/models, made by scripts/make_fixtures.py), found the same
// way by every test that walks them. The including test defines GLMSERVE_FIXTURES_DIR.
#pragma once

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

namespace glmserve::testing {

inline std::filesystem::path FixtureModelDir(const std::string& name) {
  return std::filesystem::path(GLMSERVE_FIXTURES_DIR) / "models" / name;
}

// Names of the fixture models that carry transformers' recorded outputs (expected.json), sorted.
inline std::vector<std::string> RecordedFixtureModels() {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(FixtureModelDir(""))) {
    if (std::filesystem::exists(entry.path() / "expected.json")) names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace glmserve::testing
