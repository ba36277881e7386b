// glm4v (GLM-4.1V) prompts with images through the engine over the real model: many at once, with
// an out-of-memory storm in the steps that run the vision encoder (the executor's real
// OutOfMemoryError path, injected after the forward), and every request still gives transformers'
// recorded ids (tests/fixtures/glm4v/expected.json: 8 tokens, EOS masked).
#include <ATen/Parallel.h>

#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/checkpoint/model_config.h"
#include "runtime/engine.h"
#include "runtime/engine/engine_impl.h"
#include "runtime/model_runner.h"
#include "runtime/vision/glm4v_processor.h"
#include "runtime/vision/image_decode.h"
#include "runtime/vision/multimodal_prompt.h"

namespace glmserve {
namespace {

using json = nlohmann::json;

const std::string kRoot = std::string(GLMSERVE_FIXTURES_DIR) + "/glm4v/";
const std::string kModel = kRoot + "tiny-safetensors-sharded";

struct ImageCase {
  std::string name;
  std::vector<int32_t> ids;  // expanded
  std::shared_ptr<const MultimodalPrompt> prompt;
  std::vector<int32_t> expected;
};

// The recorded cases as the CLI and the server prepare them (alpha dropped, as transformers'
// load_image; the checkpoint's preprocessor_config.json).
std::vector<ImageCase> LoadCases() {
  std::ifstream in(kRoot + "expected.json");
  const json expected = json::parse(in);
  const ModelConfig config = LoadModelConfig(kModel).value();
  const VisionConfig& vc = *config.vision;
  vision::DecodeOptions decode;
  decode.alpha = vision::AlphaMode::kDrop;
  const vision::ImageDecoder decoder = vision::ImageDecoder::Create(decode).value();
  const vision::Glm4vImageProcessor processor =
      vision::Glm4vImageProcessor::Create(vision::LoadPreprocessorConfig(kModel + "/preprocessor_config.json").value())
          .value();
  std::vector<ImageCase> cases;
  for (const json& c : expected["cases"]) {
    std::vector<ImageInput> images;
    for (const json& path : c["images"]) {
      std::ifstream file(kRoot + path.get<std::string>(), std::ios::binary);
      std::ostringstream bytes;
      bytes << file.rdbuf();
      images.push_back(vision::ToImageInput(processor.Process(decoder.Decode(bytes.str()).value()).value()));
    }
    ImageCase ic;
    ic.name = c["name"].get<std::string>();
    ic.ids = vision::ExpandImageTokens(c["input_ids"].get<std::vector<int32_t>>(), images,
                                       {vc.image_token_id, vc.image_start_token_id, vc.image_end_token_id})
                 .value();
    ic.prompt =
        vision::BuildMultimodalPrompt(ic.ids, std::move(images), vc.image_token_id, vc.spatial_merge_size).value();
    ic.expected = c["output_ids"].get<std::vector<int32_t>>();
    cases.push_back(std::move(ic));
  }
  return cases;
}

TEST(Glm4vEngineTest, ImagePromptsThroughAnOomStormGiveTransformersIds) {
  at::set_num_threads(1);
  const std::vector<ImageCase> cases = LoadCases();
  ASSERT_GE(cases.size(), 8u);
  LoadOptions load;
  std::unique_ptr<ModelRunner> runner = ModelRunner::Load(kModel, load).value();
  ExecutorOptions executor_options;
  executor_options.num_blocks = 256;
  executor_options.log = [](const std::string&) {};
  // The executor's real path: the forward (vision encoder included) runs, then OutOfMemoryError.
  executor_options.inject_oom_above_sequences = 3;
  EngineOptions engine_options;
  engine_options.scheduler.max_batch_size = 16;
  engine_options.scheduler.aimd_increase_after_steps = 2;
  // Small steps: images split across chunks, encoder charges against the budget.
  engine_options.scheduler.max_tokens_per_step = 24;
  engine_options.scheduler.log = [](const std::string&) {};
  std::unique_ptr<InferenceEngine> engine =
      CreateInferenceEngine(std::move(engine_options), runner->CreateExecutor(executor_options).value(), runner->info())
          .value();

  constexpr int kCopies = 3;  // every case three times, all submitted at once
  std::mutex mu;
  std::condition_variable cv;
  std::vector<RequestResult> results(cases.size() * kCopies);
  size_t done = 0;
  for (size_t i = 0; i < results.size(); ++i) {
    const ImageCase& c = cases[i % cases.size()];
    InferenceRequest request;
    request.request_id = absl::StrCat(c.name, "-", i);
    request.input_ids = c.ids;
    request.params.max_new_tokens = static_cast<int32_t>(c.expected.size());
    request.params.min_new_tokens = request.params.max_new_tokens;
    request.multimodal = c.prompt;
    RequestCallbacks callbacks;
    callbacks.on_done = [&, i](const RequestResult& r) {
      std::lock_guard<std::mutex> lock(mu);
      results[i] = r;
      ++done;
      cv.notify_all();
    };
    ASSERT_TRUE(engine->Submit(std::move(request), std::move(callbacks)).ok());
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(240), [&] { return done == results.size(); }))
        << done << " of " << results.size() << " finished";
  }
  EXPECT_TRUE(engine->WaitIdle(std::chrono::seconds(30)));  // stats refresh after the last step
  const EngineStats stats = engine->stats();
  engine->Shutdown();
  int ok = 0;
  for (size_t i = 0; i < results.size(); ++i) {
    const ImageCase& c = cases[i % cases.size()];
    ASSERT_TRUE(results[i].status.ok()) << c.name << ": " << results[i].status;
    EXPECT_EQ(results[i].output_ids, c.expected) << c.name << " copy " << i / cases.size();
    ok += results[i].output_ids == c.expected;
  }
  std::printf("[ glm4v OOM storm ] sent=%zu ok=%d lost=0 oom_events=%lld preemptions=%lld steps=%lld\n", results.size(),
              ok, static_cast<long long>(stats.oom_events), static_cast<long long>(stats.preemptions),
              static_cast<long long>(stats.steps));
  EXPECT_GT(stats.oom_events, 0);
  EXPECT_EQ(stats.blocks_used, 0);
}

}  // namespace
}  // namespace glmserve
