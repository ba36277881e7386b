#include "server/commands/cli.h"

#include <cstdio>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "flags/flags.h"
#include "nlohmann/json.hpp"
#include "runtime/bounded_file.h"
#include "runtime/generate_once.h"
#include "runtime/inspect.h"
#include "runtime/json_util.h"
#include "runtime/model_runner.h"
#include "runtime/tokenizer/tokenizer.h"
#ifdef GLMSERVE_WITH_VISION

#include "runtime/checkpoint/model_config.h"
#include "runtime/vision/glm4v_processor.h"
#include "runtime/vision/image_decode.h"
#include "runtime/vision/multimodal_prompt.h"
#endif

namespace glmserve {
namespace {

using json = nlohmann::json;
using flags::FlagSet;

int BadInput(const std::string& message) {
  std::fprintf(stderr, "%s\n", message.c_str());
  return kExitBadInput;
}

// Exit 2 for what the user can fix (flags, checkpoint), 1 for the rest.
int ExitCodeFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kPermissionDenied:  // an unreadable model directory or file
      return kExitBadInput;
    default:
      return kExitFailure;
  }
}

int ExitFor(const absl::Status& status) {
  std::fprintf(stderr, "%s\n", std::string(status.message()).c_str());
  return ExitCodeFor(status);
}

json InfoJson(const ModelInfo& info) {
  return json{{"directory", info.directory},          {"format", info.source_format},
              {"architecture", info.architecture},    {"parameter_count", info.parameter_count},
              {"dtype", info.stored_dtype},           {"layers", info.num_layers},
              {"hidden_size", info.hidden_size},      {"heads", info.num_attention_heads},
              {"kv_heads", info.num_key_value_heads}, {"head_dim", info.head_dim},
              {"vocab_size", info.vocab_size},        {"max_position_embeddings", info.max_position_embeddings},
              {"eos_token_ids", info.eos_token_ids}};
}

absl::Status ParseIds(const std::string& text, std::vector<int32_t>* ids) {
  if (text.empty())
    return absl::InvalidArgumentError("--input-ids: expected a comma-separated list of token ids, got nothing");
  for (absl::string_view piece : absl::StrSplit(text, ',')) {
    int32_t id = 0;
    if (!absl::SimpleAtoi(piece, &id)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--input-ids: '", piece, "' is not a token id; expected comma-separated integers like 1,2,3"));
    }
    if (id < 0)
      return absl::InvalidArgumentError(absl::StrCat("--input-ids: ", id, " is negative; token ids start at 0"));
    ids->push_back(id);
  }
  return absl::OkStatus();
}

std::string TextWithoutSpecials(const tokenizer::Tokenizer& tok, const std::vector<int32_t>& ids) {
  std::vector<int32_t> kept;
  for (int32_t id : ids) {
    if (!tok.IsSpecial(id)) kept.push_back(id);
  }
  return tok.Decode(kept);
}

}  // namespace

int RunTokenize(int argc, char** argv) {
  std::string model, text, chat;
  bool as_json = false, no_special = false;
  FlagSet flags(
      "glmserve tokenize", "--model DIR (--text TEXT | --chat TEXT) [--json] [--no-special-tokens]",
      "Tokenizes text with a model directory's tokenizer (tokenizer.json or tokenizer.model) and prints the ids.");
  flags.Path("model", &model, "model directory").ValueName("DIR");
  flags.String("text", &text, "text to tokenize");
  flags.String("chat", &chat, "instead of --text: one user message rendered with the chat template");
  flags.Switch("no-special-tokens", &no_special, "skip the post-processor's special tokens (e.g. [gMASK]<sop>)");
  flags.Switch("json", &as_json, "print {\"ids\", \"count\", \"format\", \"decoded\"} as one line");
  if (std::optional<int> exit_code = flags.ParseCommandLine(argc, argv)) return *exit_code;
  if (model.empty()) return flags.UsageError("--model: required, the model directory");
  if (flags.was_set("text") == flags.was_set("chat")) {
    return flags.UsageError("--text: required (or --chat), exactly one");
  }
  absl::StatusOr<std::unique_ptr<tokenizer::Tokenizer>> tok = tokenizer::Tokenizer::FromDirectory(model);
  if (!tok.ok()) return ExitFor(tok.status());
  std::vector<int32_t> ids;
  if (flags.was_set("chat")) {
    absl::StatusOr<std::vector<int32_t>> chat_ids = (*tok)->ApplyChatTemplate({{"user", chat}});
    if (!chat_ids.ok()) return ExitFor(chat_ids.status());
    ids = std::move(*chat_ids);
  } else {
    ids = (*tok)->Encode(text, !no_special);
  }
  if (as_json) {
    json out{{"ids", ids}, {"count", ids.size()}, {"format", (*tok)->format()}, {"decoded", (*tok)->Decode(ids)}};
    std::cout << JsonDump(out) << std::endl;
  } else {
    std::printf("%s\n", absl::StrJoin(ids, ",").c_str());
  }
  return kExitOk;
}

#ifdef GLMSERVE_WITH_VISION
// The image processor a glm4v checkpoint's preprocessor_config.json gives, as serve and generate
// --image build it; a refusal names the file.
absl::StatusOr<vision::Glm4vImageProcessor> CheckpointImageProcessor(const std::string& model_dir,
                                                                     const VisionConfig& vc) {
  const std::string preprocessor_path = model_dir + "/preprocessor_config.json";
  absl::StatusOr<vision::Glm4vProcessorOptions> options =
      vision::LoadCheckpointPreprocessing(model_dir, vc.patch_size, vc.temporal_patch_size, vc.spatial_merge_size);
  if (!options.ok()) return absl::InvalidArgumentError(options.status().message());
  if (options->patch_size != vc.patch_size || options->merge_size != vc.spatial_merge_size ||
      options->temporal_patch_size != vc.temporal_patch_size) {
    return absl::FailedPreconditionError(absl::StrCat(
        preprocessor_path, ": patch_size / merge_size / temporal_patch_size (", options->patch_size, "/",
        options->merge_size, "/", options->temporal_patch_size, ") disagree with config.json's vision_config (",
        vc.patch_size, "/", vc.spatial_merge_size, "/", vc.temporal_patch_size, ")"));
  }
  return vision::Glm4vImageProcessor::Create(*options);
}
#endif

int RunInspect(int argc, char** argv) {
  std::string model;
  bool as_json = false, show_mapping = false;
  FlagSet flags("glmserve inspect", "--model DIR [--json] [--show-mapping]",
                "Validates a checkpoint directory strictly and describes it. Exit 0 when loadable, 2 when not.");
  flags.Path("model", &model, "checkpoint directory (config.json + weights)").ValueName("DIR");
  flags.Switch("json", &as_json, "print one JSON object instead of text");
  flags.Switch("show-mapping", &show_mapping, "print how every stored key maps to glmserve's canonical names");
  if (std::optional<int> exit_code = flags.ParseCommandLine(argc, argv)) return *exit_code;
  if (model.empty()) return flags.UsageError("--model: required, the checkpoint directory");

  absl::StatusOr<InspectReport> report = InspectCheckpoint(model);
  if (!report.ok() && as_json) {
    // A script reading --json gets its object, with every key, for a path that is no checkpoint
    // directory too; the object is the whole output, as for a checkpoint with problems.
    json out = InfoJson(ModelInfo{});
    out["directory"] = model;
    out["loadable"] = false;
    out["problems"] = json::array({std::string(report.status().message())});
    std::cout << JsonDump(out) << std::endl;
    return ExitCodeFor(report.status());
  }
  if (!report.ok()) return ExitFor(report.status());
  // Tokenizer files, where there are any, must load as serve loads them (none: ids only).
  if (auto tok = tokenizer::Tokenizer::FromDirectory(model); !tok.ok() && !absl::IsNotFound(tok.status())) {
    report->problems.push_back(std::string(tok.status().message()));
  }
#ifdef GLMSERVE_WITH_VISION
  // A glm4v checkpoint also needs its image preprocessing, which serve builds at start.
  if (absl::StatusOr<ModelConfig> config = LoadModelConfig(model); config.ok() && config->vision.has_value()) {
    if (auto processor = CheckpointImageProcessor(model, *config->vision); !processor.ok()) {
      report->problems.push_back(std::string(processor.status().message()));
    }
  }
#endif
  const ModelInfo& info = report->info;
  if (as_json) {
    json out = InfoJson(info);
    out["loadable"] = report->loadable();
    out["problems"] = report->problems;
    if (report->problems_unlisted > 0) out["problems_unlisted"] = report->problems_unlisted;
    if (show_mapping) out["mapping"] = report->mapping;
    std::cout << JsonDump(out) << std::endl;
    return report->loadable() ? kExitOk : kExitBadInput;
  }
  if (!report->loadable()) {
    std::fprintf(stderr, "checkpoint '%s' cannot be loaded (%s):\n%s\n", model.c_str(),
                 report->ProblemsHeading().c_str(), absl::StrJoin(report->problems, "\n").c_str());
    return kExitBadInput;
  }
  std::printf("model:          %s\n", info.directory.c_str());
  std::printf("format:         %s\n", info.source_format.c_str());
  std::printf("architecture:   %s\n", info.architecture.c_str());
  std::printf("parameters:     %lld\n", static_cast<long long>(info.parameter_count));
  std::printf("dtype:          %s\n", info.stored_dtype.c_str());
  std::printf("layers:         %d\n", info.num_layers);
  std::printf("hidden size:    %d\n", info.hidden_size);
  std::printf("heads:          %d\n", info.num_attention_heads);
  std::printf("kv heads:       %d\n", info.num_key_value_heads);
  std::printf("head dim:       %d\n", info.head_dim);
  std::printf("vocab:          %d\n", info.vocab_size);
  std::printf("max positions:  %d\n", info.max_position_embeddings);
  std::printf("eos ids:        %s\n", absl::StrJoin(info.eos_token_ids, ",").c_str());
  std::printf("validation:     ok (every key mapped, every shape and dtype as expected)\n");
  if (show_mapping) {
    std::printf("mapping:\n");
    for (const std::string& line : report->mapping) std::printf("  %s\n", line.c_str());
  }
  return kExitOk;
}

// generate --image: decodes and preprocesses each file as transformers' Glm4v processor would
// with the checkpoint's preprocessor_config.json, expands each image placeholder in `ids` to the
// image's token count, and builds the prompt's 3-D positions. Errors name the flag and the file.
absl::StatusOr<std::shared_ptr<const MultimodalPrompt>> PrepareImages(const std::string& model_dir,
                                                                      const std::vector<std::string>& paths,
                                                                      std::vector<int32_t>* ids) {
#ifdef GLMSERVE_WITH_VISION
  absl::StatusOr<ModelConfig> config = LoadModelConfig(model_dir);
  if (!config.ok()) return config.status();
  if (!config->vision.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat("--image: ", model_dir, " is a ",
                                                   ArchitectureName(config->architecture),
                                                   " model, which takes no images (glm4v models do)"));
  }
  const VisionConfig& vc = *config->vision;
  absl::StatusOr<vision::Glm4vImageProcessor> processor = CheckpointImageProcessor(model_dir, vc);
  if (!processor.ok()) return processor.status();
  // As transformers loads an image file (load_image: PIL's convert("RGB"), alpha dropped).
  vision::DecodeOptions decode;
  decode.alpha = vision::AlphaMode::kDrop;
  absl::StatusOr<vision::ImageDecoder> decoder = vision::ImageDecoder::Create(decode);
  if (!decoder.ok()) return decoder.status();
  std::vector<ImageInput> images;
  for (const std::string& path : paths) {
    // As serve takes a file:// image: a regular file of at most 64 MiB.
    constexpr std::uintmax_t kMaxImageFileBytes = 64u << 20;
    const absl::StatusOr<std::string> bytes = ReadBoundedFile(path, kMaxImageFileBytes, "--image " + path);
    if (!bytes.ok()) return absl::InvalidArgumentError(bytes.status().message());
    absl::StatusOr<vision::RgbImage> rgb = decoder->Decode(*bytes);
    if (!rgb.ok()) return absl::InvalidArgumentError(absl::StrCat("--image ", path, ": ", rgb.status().message()));
    absl::StatusOr<vision::ProcessedImage> processed = processor->Process(*rgb);
    if (!processed.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--image ", path, ": ", processed.status().message()));
    }
    images.push_back(vision::ToImageInput(std::move(*processed)));
  }
  const vision::ImageTokenIds token_ids{vc.image_token_id, vc.image_start_token_id, vc.image_end_token_id};
  absl::StatusOr<std::vector<int32_t>> expanded = vision::ExpandImageTokens(*ids, images, token_ids);
  if (!expanded.ok()) return absl::InvalidArgumentError(absl::StrCat("--input-ids: ", expanded.status().message()));
  *ids = std::move(*expanded);
  return vision::BuildMultimodalPrompt(*ids, std::move(images), vc.image_token_id, vc.spatial_merge_size);
#else
  (void)model_dir, (void)paths, (void)ids;
  return absl::FailedPreconditionError("--image: this glmserve was built without libpng/libjpeg (image input)");
#endif
}

int RunGenerate(int argc, char** argv) {
  std::string model, input_ids_text;
  flags::Device device;
  flags::Dtype dtype = flags::Dtype::kAuto;
  int32_t max_new_tokens = 16, min_new_tokens = 0, top_k = 0;
  float temperature = 0.0f, top_p = 1.0f;
  uint64_t seed = 0;
  bool as_json = false;
  using flags::kIntMax;
  FlagSet flags("glmserve generate", "--model DIR (--input-ids 1,2,3 | --prompt TEXT | --chat TEXT) [flags]",
                "Runs one prompt (token ids, text or a chat message) through a model and prints the generated ids.");
  flags.Path("model", &model, "checkpoint directory").ValueName("DIR");
  flags.String("input-ids", &input_ids_text, "prompt as comma-separated token ids, e.g. 1,2,3").ValueName("IDS");
  flags.Int("max-new-tokens", &max_new_tokens, 1, kIntMax, "generate at most this many tokens");
  flags.Int("min-new-tokens", &min_new_tokens, 0, kIntMax,
            "eos ids are masked until this many tokens exist; at most --max-new-tokens");
  flags.Number("temperature", &temperature, {0, std::numeric_limits<float>::max()},
               "0 = greedy; otherwise sample at this temperature");
  flags.Number("top-p", &top_p, {0, 1, /*lo_open=*/true}, "nucleus sampling mass");
  flags.Int("top-k", &top_k, 0, kIntMax, "sample among the k most likely tokens; 0 = all");
  flags.Uint64("seed", &seed, "sampling seed");
  flags.Switch("json", &as_json, "print {\"output_ids\", \"first_logits\", \"finish_reason\"} as one line");
  flags.DeviceFlag("device", &device, "where the model runs");
  flags.DtypeFlag("dtype", &dtype, "compute dtype");
  std::string prompt_text, chat_text, system_text;
  flags.String("prompt", &prompt_text,
               "prompt text, tokenized with the model directory's tokenizer (instead of --input-ids)");
  flags.String("chat", &chat_text, "one user message rendered with the model's chat template (instead of --input-ids)");
  flags.String("system", &system_text, "with --chat: a system message before it");
  bool random_weights = false;
  flags.Switch("random-weights", &random_weights,
               "benchmark: random weights of --model's config.json, no weight files");
  std::vector<std::string> image_paths;
  flags.Custom("image", "PATH", "none",
               "glm4v: a PNG or JPEG for the next image placeholder of --input-ids (one image_token_id between "
               "image_start_token_id and image_end_token_id); repeat for each image, in order. Without it the "
               "ids run as text, as transformers runs them without pixel_values (serve refuses placeholders "
               "without images)",
               [&image_paths](const std::string& value) -> std::optional<std::string> {
                 if (value.empty()) return "is empty; expected a PNG or JPEG file";
                 image_paths.push_back(value);
                 return std::nullopt;
               });
  if (std::optional<int> exit_code = flags.ParseCommandLine(argc, argv)) return *exit_code;
  if (model.empty()) return flags.UsageError("--model: required, the checkpoint directory");
  const int inputs = flags.was_set("input-ids") + flags.was_set("prompt") + flags.was_set("chat");
  if (inputs != 1) {
    return flags.UsageError(
        "--input-ids: required (comma-separated token ids like 1,2,3), or --prompt TEXT, or --chat TEXT; exactly one");
  }
  if (flags.was_set("system") && !flags.was_set("chat")) {
    return flags.UsageError(
        "--system: a system message for --chat's template; with --input-ids or --prompt it would be ignored");
  }
  std::vector<int32_t> ids;
  std::unique_ptr<tokenizer::Tokenizer> tok;
  // The flag the prompt came from, in messages about its ids.
  const std::string input_flag = flags.was_set("input-ids") ? "--input-ids"
                                 : flags.was_set("prompt")  ? "--prompt"
                                                            : "--chat";
  if (flags.was_set("input-ids")) {
    if (absl::Status s = ParseIds(input_ids_text, &ids); !s.ok()) return BadInput(std::string(s.message()));
  } else {
    absl::StatusOr<std::unique_ptr<tokenizer::Tokenizer>> loaded = tokenizer::Tokenizer::FromDirectory(model);
    if (!loaded.ok()) return ExitFor(loaded.status());
    tok = std::move(*loaded);
    if (flags.was_set("prompt")) {
      ids = tok->Encode(prompt_text);
    } else {
      std::vector<tokenizer::Message> messages;
      if (flags.was_set("system")) messages.push_back({"system", system_text});  // "" too: an empty turn
      messages.push_back({"user", chat_text});
      absl::StatusOr<std::vector<int32_t>> chat_ids = tok->ApplyChatTemplate(messages);
      if (!chat_ids.ok()) return ExitFor(chat_ids.status());
      ids = std::move(*chat_ids);
    }
    if (ids.empty()) return BadInput(absl::StrCat(input_flag, ": tokenizes to no ids"));
  }
  std::shared_ptr<const MultimodalPrompt> multimodal;
  if (!image_paths.empty()) {
    if (!flags.was_set("input-ids")) {
      return flags.UsageError(
          "--image: takes --input-ids holding one image placeholder per image (not --prompt/--chat)");
    }
    absl::StatusOr<std::shared_ptr<const MultimodalPrompt>> prepared = PrepareImages(model, image_paths, &ids);
    if (!prepared.ok()) return ExitFor(prepared.status());
    multimodal = std::move(*prepared);
  }
  if (min_new_tokens > max_new_tokens) {
    return flags.UsageError(
        absl::StrCat("--min-new-tokens: ", min_new_tokens, " must be in [0, --max-new-tokens=", max_new_tokens, "]"));
  }

  LoadOptions load;
  load.device = device.ToString();
  load.dtype = flags::DtypeName(dtype);
  load.random_weights = random_weights;
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner = ModelRunner::Load(model, load);
  if (!runner.ok()) return ExitFor(runner.status());
  const ModelInfo& info = (*runner)->info();
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] >= info.vocab_size) {
      return BadInput(absl::StrCat(
          input_flag, ": id ", ids[i], " at position ", i, " is outside the vocabulary [0, ", info.vocab_size, ")",
          tok != nullptr ? absl::StrCat(" (", tok->format(), " gives ids past config.json's vocab_size)") : ""));
    }
  }
  if (static_cast<int64_t>(ids.size()) + max_new_tokens > info.max_position_embeddings) {
    return BadInput(absl::StrCat(input_flag, ": ", ids.size(), " prompt tokens + --max-new-tokens ", max_new_tokens,
                                 " exceed the model's max position embeddings (", info.max_position_embeddings, ")"));
  }
  GenerationParams params;
  params.max_new_tokens = max_new_tokens;
  params.min_new_tokens = min_new_tokens;
  params.sampling.temperature = temperature;
  params.sampling.top_p = top_p;
  params.sampling.top_k = top_k;
  params.sampling.seed = seed;
  absl::StatusOr<GenerationOutput> output = GenerateOnce(**runner, ids, params, nullptr, multimodal);
  if (!output.ok()) return ExitFor(output.status());
  if (as_json) {
    json out{{"output_ids", output->output_ids},
             {"first_logits", output->first_logits},
             {"finish_reason", FinishReasonName(output->finish_reason)}};
    if (multimodal != nullptr) {
      std::vector<int32_t> image_tokens;
      for (const ImageInput& image : multimodal->images) image_tokens.push_back(image.num_tokens);
      out["image_tokens"] = image_tokens;
    }
    if (tok != nullptr) {  // text input: also the prompt ids and the text (special tokens omitted)
      out["input_ids"] = ids;
      out["text"] = TextWithoutSpecials(*tok, output->output_ids);
    }
    std::cout << JsonDump(out) << std::endl;
  } else {
    std::printf("output_ids: %s\nfinish_reason: %s\n", absl::StrJoin(output->output_ids, ",").c_str(),
                FinishReasonName(output->finish_reason));
    if (tok != nullptr) std::printf("text: %s\n", TextWithoutSpecials(*tok, output->output_ids).c_str());
  }
  return kExitOk;
}

}  // namespace glmserve
