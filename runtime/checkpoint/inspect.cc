// InspectCheckpoint (runtime/inspect.h) and the plan ModelRunner::Load reads: LibTorch-free
// except that listing a .bin unpickles it (pytorch_bin.h).
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "runtime/checkpoint/checkpoint_plan.h"
#include "runtime/printable_text.h"

namespace glmserve {

ModelInfo DescribeModel(const std::string& directory, const ModelConfig& config) {
  ModelInfo info;
  info.directory = directory;
  info.architecture = ArchitectureName(config.architecture);
  info.num_layers = config.num_layers;
  info.num_attention_heads = config.num_attention_heads;
  info.num_key_value_heads = config.num_key_value_heads;
  info.head_dim = config.head_dim;
  info.hidden_size = config.hidden_size;
  info.vocab_size = config.vocab_size;
  info.max_position_embeddings = config.max_position_embeddings;
  info.eos_token_ids = config.eos_token_ids;
  return info;
}

namespace {

// The sizes weight shapes are derived from are usable (positive, heads in whole groups, the rotary
// part within a head, layer counts within LoadModelConfig's bounds), whatever else is wrong.
bool ShapesSound(const ModelConfig& c) {
  const bool text = c.num_layers > 0 && c.num_layers <= kMaxConfigLayers && c.hidden_size > 0 &&
                    c.intermediate_size > 0 && c.num_attention_heads > 0 && c.num_key_value_heads > 0 &&
                    c.num_attention_heads % c.num_key_value_heads == 0 && c.head_dim > 0 && c.vocab_size > 0 &&
                    c.rotary_dim >= 0 && c.rotary_dim <= c.head_dim;
  if (!text || !c.vision.has_value()) return text;
  const VisionConfig& v = *c.vision;
  return v.depth > 0 && v.depth <= kMaxConfigLayers && v.hidden_size > 0 && v.num_heads > 0 &&
         v.intermediate_size > 0 && v.out_hidden_size > 0 && v.patch_size > 0 && v.spatial_merge_size > 0 &&
         v.temporal_patch_size > 0 && v.image_size >= v.patch_size &&
         v.image_size / v.patch_size <= kMaxVisionPositionsSide && v.in_channels > 0;
}

}  // namespace

namespace {

// Problems a report lists, then one line saying how many more there were: a file that names
// 100,000 tensors is refused with a page, not 100,000 lines (and a serve error message as long).
constexpr size_t kMaxListedProblems = 200;

// The report as printed: whatever a file says (a key, a shard name) with its control bytes escaped
// (PrintableText), so that a NUL does not end the text report early nor a newline split a problem.
InspectReport Printable(InspectReport report) {
  if (report.problems.size() > kMaxListedProblems) {
    report.problems_unlisted = static_cast<int64_t>(report.problems.size() - kMaxListedProblems);
    report.problems.resize(kMaxListedProblems);
  }
  for (std::string& line : report.problems) line = PrintableText(line);
  for (std::string& line : report.mapping) line = PrintableText(line);
  return report;
}

absl::StatusOr<InspectReport> Plan(const std::string& directory, CheckpointPlan* parsed) {
  if (absl::Status usable = CheckModelDirectory(directory); !usable.ok()) return usable;
  InspectReport report;
  report.info.directory = directory;
  std::vector<std::string> config_problems;
  absl::StatusOr<ModelConfig> config = LoadModelConfigWithProblems(directory, &config_problems);
  absl::StatusOr<CheckpointListing> listing = ListCheckpoint(directory);
  if (!config.ok()) {  // one problem a line, as the message joins them
    for (absl::string_view line : absl::StrSplit(config.status().message(), '\n', absl::SkipEmpty())) {
      report.problems.emplace_back(line);
    }
  } else {
    report.problems = config_problems;
  }
  if (!listing.ok()) report.problems.push_back(std::string(listing.status().message()));
  parsed->missing = absl::IsNotFound(listing.status());
  if (listing.ok()) report.info.source_format = CheckpointFormatName(listing->format);
  // The weights are checked against a config with problems too (a bad hidden_act must not hide a
  // missing key), as long as the shapes it gives are sound.
  if (!config.ok() || !listing.ok() || !ShapesSound(*config)) {
    if (listing.ok()) {
      report.problems.insert(report.problems.end(), listing->problems.begin(), listing->problems.end());
    }
    return report;
  }
  parsed->config = *config;
  parsed->listing = *std::move(listing);
  parsed->plan = PlanWeights(parsed->config, parsed->listing);
  report.info = DescribeModel(directory, parsed->config);
  report.info.source_format = CheckpointFormatName(parsed->listing.format);
  report.info.stored_dtype = parsed->plan.stored_dtype;
  report.info.parameter_count = parsed->plan.parameter_count;
  report.mapping = parsed->plan.mapping;
  report.problems.insert(report.problems.end(), parsed->plan.problems.begin(), parsed->plan.problems.end());
  return report;
}

}  // namespace

std::string InspectReport::ProblemsHeading() const {
  const int64_t total = static_cast<int64_t>(problems.size()) + problems_unlisted;
  return absl::StrCat(total, total == 1 ? " problem" : " problems",
                      problems_unlisted > 0 ? absl::StrCat(", the first ", problems.size(), " listed") : "");
}

absl::StatusOr<InspectReport> PlanCheckpoint(const std::string& directory, CheckpointPlan* parsed) {
  absl::StatusOr<InspectReport> report = Plan(directory, parsed);
  if (!report.ok()) return report;
  return Printable(*std::move(report));
}

absl::StatusOr<InspectReport> InspectCheckpoint(const std::string& directory) {
  CheckpointPlan plan;
  return PlanCheckpoint(directory, &plan);
}

}  // namespace glmserve
