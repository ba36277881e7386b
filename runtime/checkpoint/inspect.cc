// InspectCheckpoint (runtime/inspect.h) and the plan ModelRunner::Load reads: LibTorch-free
// except that listing a .bin unpickles it (pytorch_bin.h).
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "runtime/checkpoint/checkpoint_plan.h"

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

absl::StatusOr<InspectReport> PlanCheckpoint(const std::string& directory, CheckpointPlan* parsed) {
  std::error_code ec;
  if (!std::filesystem::is_directory(directory, ec)) {
    return absl::NotFoundError(absl::StrCat("model directory '", directory, "' does not exist or is not a directory"));
  }
  InspectReport report;
  report.info.directory = directory;
  absl::StatusOr<ModelConfig> config = LoadModelConfig(directory);
  absl::StatusOr<CheckpointListing> listing = ListCheckpoint(directory);
  if (!config.ok()) {  // one problem a line, as LoadModelConfig joins them
    for (absl::string_view line : absl::StrSplit(config.status().message(), '\n', absl::SkipEmpty())) {
      report.problems.emplace_back(line);
    }
  }
  if (!listing.ok()) report.problems.push_back(std::string(listing.status().message()));
  parsed->missing = absl::IsNotFound(listing.status());
  if (listing.ok()) report.info.source_format = CheckpointFormatName(listing->format);
  if (!config.ok() || !listing.ok()) {
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
  report.problems = parsed->plan.problems;
  return report;
}

absl::StatusOr<InspectReport> InspectCheckpoint(const std::string& directory) {
  CheckpointPlan plan;
  return PlanCheckpoint(directory, &plan);
}

}  // namespace glmserve
