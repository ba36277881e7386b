#include "runtime/model_runner.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/checkpoint.h"
#include "runtime/checkpoint_tensors.h"
#include "runtime/glm_model.h"
#include "runtime/inspect.h"
#include "runtime/model_config.h"
#include "runtime/sampler.h"
#include "runtime/status_macros.h"
#include "runtime/weight_map.h"

namespace glmserve {
namespace {

// Runs `body`, turning LibTorch exceptions into statuses (OOM -> RESOURCE_EXHAUSTED).
template <typename Body>
absl::Status GuardTorch(const char* what, Body&& body) {
  try {
    body();
    return absl::OkStatus();
  } catch (const c10::OutOfMemoryError& e) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": out of memory: ", e.what_without_backtrace()));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what()));
  }
}

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

struct Parsed {
  ModelConfig config;
  CheckpointListing listing;
  WeightPlan plan;
};

// Config + listing + plan, with every problem gathered.
absl::StatusOr<InspectReport> Inspect(const std::string& directory, Parsed* parsed) {
  std::error_code ec;
  if (!std::filesystem::is_directory(directory, ec)) {
    return absl::NotFoundError(absl::StrCat("model directory '", directory, "' does not exist or is not a directory"));
  }
  InspectReport report;
  report.info.directory = directory;
  absl::StatusOr<ModelConfig> config = LoadModelConfig(directory);
  absl::StatusOr<CheckpointListing> listing = ListCheckpoint(directory);
  if (!config.ok()) report.problems.push_back(std::string(config.status().message()));
  if (!listing.ok()) report.problems.push_back(std::string(listing.status().message()));
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

absl::StatusOr<at::Device> ParseDevice(const std::string& device) {
  if (device == "cpu") return at::Device(at::kCPU);
  if (device.rfind("cuda", 0) == 0) {
#ifdef GLMSERVE_TORCH_CUDA
    int index = 0;
    if (device.size() > 5 && device[4] == ':') index = std::atoi(device.c_str() + 5);
    return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index));
#else
    return absl::FailedPreconditionError(
        absl::StrCat("--device '", device, "': this build of glmserve has no CUDA support (build against a CUDA LibTorch)"));
#endif
  }
  return absl::InvalidArgumentError(absl::StrCat("--device '", device, "': expected \"cpu\" or \"cuda[:N]\""));
}

absl::StatusOr<at::ScalarType> ParseDtype(const std::string& dtype, const at::Device& device) {
  if (dtype.empty()) return device.is_cpu() ? at::kFloat : at::kBFloat16;
  if (dtype == "float32") return at::kFloat;
  if (dtype == "bfloat16") return at::kBFloat16;
  if (dtype == "float16") return at::kHalf;
  return absl::InvalidArgumentError(absl::StrCat("--dtype '", dtype, "': expected float32, bfloat16 or float16"));
}

const char* DtypeName(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    default: return "unknown";
  }
}

class PagedExecutor final : public StepExecutor {
 public:
  PagedExecutor(const GlmModel* model, KvPool pool) : model_(model), pool_(std::move(pool)) {}
  int32_t block_size() const override { return pool_.block_size; }
  int32_t num_blocks() const override { return pool_.num_blocks; }

  absl::StatusOr<StepResult> Step(const std::vector<SequenceStep>& batch) override {
    StepResult result;
    at::Tensor logits;
    GLM_RETURN_IF_ERROR(GuardTorch("forward step", [&] { logits = model_->Forward(batch, pool_).contiguous().cpu(); }));
    result.next_tokens.assign(batch.size(), -1);
    const float* data = logits.data_ptr<float>();
    const int32_t vocab = model_->config().vocab_size;
    int64_t row = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      if (!batch[i].sample) continue;
      const GenerationParams& params = *batch[i].params;
      const std::vector<int32_t>& stops =
          params.stop_token_ids.empty() ? model_->config().eos_token_ids : params.stop_token_ids;
      result.next_tokens[i] = SampleNextToken(data + row * vocab, vocab, params, stops, batch[i].num_generated);
      ++row;
    }
    return result;
  }

 private:
  const GlmModel* model_;
  KvPool pool_;
};

class ModelRunnerImpl final : public ModelRunner {
 public:
  ModelRunnerImpl(ModelInfo info, std::unique_ptr<GlmModel> model) : info_(std::move(info)), model_(std::move(model)) {}
  const ModelInfo& info() const override { return info_; }

  absl::StatusOr<GenerationOutput> Generate(const std::vector<int32_t>& input_ids, const GenerationParams& params,
                                            const std::function<bool(int32_t)>& on_token) override {
    const ModelConfig& c = model_->config();
    if (input_ids.empty()) return absl::InvalidArgumentError("input_ids: expected at least one token id");
    for (size_t i = 0; i < input_ids.size(); ++i) {
      if (input_ids[i] < 0 || input_ids[i] >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("input_ids[", i, "] = ", input_ids[i],
                                                       ": expected an id in [0, ", c.vocab_size, ")"));
      }
    }
    if (params.max_new_tokens <= 0) return absl::InvalidArgumentError("max_new_tokens: expected a positive count");
    const int64_t needed = static_cast<int64_t>(input_ids.size()) + params.max_new_tokens;
    if (needed > c.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat(
          "input_ids: ", input_ids.size(), " prompt tokens + max_new_tokens ", params.max_new_tokens,
          " exceed the model's max position embeddings ", c.max_position_embeddings));
    }
    constexpr int32_t kBlock = 16;
    const int32_t blocks = static_cast<int32_t>((needed + kBlock - 1) / kBlock);
    GenerationOutput output;
    const std::vector<int32_t>& stops = params.stop_token_ids.empty() ? c.eos_token_ids : params.stop_token_ids;
    absl::Status status = GuardTorch("generate", [&] {
      KvPool pool = model_->AllocateKv(blocks, kBlock);
      std::vector<int32_t> table(blocks);
      for (int32_t b = 0; b < blocks; ++b) table[b] = b;
      SequenceStep step;
      step.block_table = table;
      step.tokens = input_ids;
      step.params = &params;
      int32_t position = 0;
      output.finish_reason = FinishReason::kLength;
      while (static_cast<int32_t>(output.output_ids.size()) < params.max_new_tokens) {
        step.start_position = position;
        step.num_generated = static_cast<int32_t>(output.output_ids.size());
        at::Tensor logits = model_->Forward({step}, pool).contiguous().cpu();
        const float* row = logits.data_ptr<float>();
        if (output.output_ids.empty()) output.first_logits.assign(row, row + c.vocab_size);
        const int32_t next = SampleNextToken(row, c.vocab_size, params, stops, step.num_generated);
        position += static_cast<int32_t>(step.tokens.size());
        output.output_ids.push_back(next);
        if (on_token && !on_token(next)) {
          output.finish_reason = FinishReason::kCancelled;
          break;
        }
        if (std::find(stops.begin(), stops.end(), next) != stops.end()) {
          output.finish_reason = FinishReason::kStop;
          break;
        }
        step.tokens = {next};
      }
    });
    GLM_RETURN_IF_ERROR(status);
    return output;
  }

  absl::StatusOr<std::unique_ptr<StepExecutor>> CreateExecutor(const ExecutorOptions& options) override {
    if (options.block_size <= 0) return absl::InvalidArgumentError("block_size: expected a positive token count");
    int64_t blocks = options.num_blocks;
    if (blocks <= 0) {
      if (!(options.kv_memory_fraction > 0 && options.kv_memory_fraction <= 1)) {
        return absl::InvalidArgumentError("kv_memory_fraction: expected a value in (0, 1]");
      }
      const int64_t per_block = model_->kv_bytes_per_token() * options.block_size;
      int64_t budget = static_cast<int64_t>(options.kv_cpu_budget_bytes * options.kv_memory_fraction);
      blocks = budget / per_block;
    }
    if (blocks <= 0) return absl::InvalidArgumentError("num_blocks: the KV budget holds no block");
    KvPool pool;
    GLM_RETURN_IF_ERROR(GuardTorch("allocating the KV cache", [&] {
      pool = model_->AllocateKv(static_cast<int32_t>(blocks), options.block_size);
    }));
    return std::unique_ptr<StepExecutor>(new PagedExecutor(model_.get(), std::move(pool)));
  }

 private:
  ModelInfo info_;
  std::unique_ptr<GlmModel> model_;
};

}  // namespace

absl::StatusOr<InspectReport> InspectCheckpoint(const std::string& directory) {
  Parsed parsed;
  return Inspect(directory, &parsed);
}

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Load(const std::string& directory,
                                                               const LoadOptions& options) {
  GLM_ASSIGN_OR_RETURN(at::Device device, ParseDevice(options.device));
  GLM_ASSIGN_OR_RETURN(at::ScalarType dtype, ParseDtype(options.dtype, device));
  Parsed parsed;
  GLM_ASSIGN_OR_RETURN(InspectReport report, Inspect(directory, &parsed));
  if (!report.loadable()) {
    return absl::FailedPreconditionError(absl::StrCat("checkpoint '", directory, "' cannot be loaded (",
                                                      report.problems.size(), " problem",
                                                      report.problems.size() == 1 ? "" : "s", "):\n",
                                                      absl::StrJoin(report.problems, "\n")));
  }
  GLM_ASSIGN_OR_RETURN(auto stored, ReadCheckpointTensors(parsed.listing));
  std::unique_ptr<GlmModel> model;
  absl::Status built = GuardTorch("building the model", [&] {
    auto result = GlmModel::Build(parsed.config, parsed.plan, &stored, dtype, device);
    if (!result.ok()) throw std::runtime_error(std::string(result.status().message()));
    model = *std::move(result);
  });
  GLM_RETURN_IF_ERROR(built);
  ModelInfo info = report.info;
  info.compute_dtype = DtypeName(dtype);
  info.device = device.str();
  return std::unique_ptr<ModelRunner>(new ModelRunnerImpl(std::move(info), std::move(model)));
}

}  // namespace glmserve
