// Single-sequence generation speed of the runtime (no server): prefill time and decode tokens/s.
//   generate_bench --model DIR [--device cuda --dtype bfloat16] [--prompt-tokens 128] [--new-tokens 128] [--runs 3]
// Prints one JSON line per run plus the median, so scripts can compare against transformers.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "bench/model_flags.h"
#include "runtime/engine/run_request.h"
#include "runtime/generate_once.h"
#include "runtime/model_runner.h"

int main(int argc, char** argv) {
  using Clock = std::chrono::steady_clock;
  glmserve::bench::ModelFlags model_flags;
  int32_t prompt_tokens = 128, new_tokens = 128, runs = 3;
  using glmserve::flags::kIntMax;
  glmserve::flags::FlagSet flags("generate_bench", "--model DIR [flags]", "Times single-sequence greedy generation.");
  model_flags.Register(flags);
  flags.Int("prompt-tokens", &prompt_tokens, 1, kIntMax, "prompt length");
  flags.Int("new-tokens", &new_tokens, 1, kIntMax, "tokens generated per run (eos ignored)");
  flags.Int("runs", &runs, 1, kIntMax, "timed runs after one warm-up");
  if (auto exit_code = glmserve::bench::ParseBenchFlags(flags, model_flags, argc, argv)) return *exit_code;
  auto runner = glmserve::ModelRunner::Load(model_flags.model, model_flags.ToLoadOptions());
  if (!runner.ok()) {
    std::fprintf(stderr, "%s\n", std::string(runner.status().message()).c_str());
    return 2;
  }
  const int32_t vocab = (*runner)->info().vocab_size;
  std::vector<int32_t> prompt(prompt_tokens);
  for (int32_t i = 0; i < prompt_tokens; ++i) prompt[i] = (i * 7919 + 13) % vocab;
  glmserve::GenerationParams params;
  params.max_new_tokens = new_tokens;
  params.stop_token_ids = {-1};  // never stop early: every run decodes the same count
  // One engine for every run, as a server has (the KV pool and decode graphs are made once); each
  // run is one request submitted to it like any client's.
  auto engine = glmserve::CreateSingleSequenceEngine(**runner, int64_t{prompt_tokens} + new_tokens);
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", std::string(engine.status().message()).c_str());
    return 1;
  }
  std::vector<double> decode_rates;
  for (int32_t run = 0; run <= runs; ++run) {
    Clock::time_point start = Clock::now(), first;
    int32_t produced = 0;  // written on the engine thread, read after RunRequest returns
    glmserve::InferenceRequest request;
    request.request_id = "run-" + std::to_string(run);
    request.input_ids = prompt;
    request.params = params;
    auto out = glmserve::RunRequest(**engine, std::move(request), [&](const std::vector<int32_t>& ids) {
      if (produced == 0) first = Clock::now();
      produced += static_cast<int32_t>(ids.size());
    });
    const Clock::time_point end = Clock::now();
    const absl::Status status = out.ok() ? out->status : out.status();
    if (!status.ok()) {
      std::fprintf(stderr, "%s\n", std::string(status.message()).c_str());
      return 1;
    }
    const double prefill_ms = std::chrono::duration<double, std::milli>(first - start).count();
    const double decode_s = std::chrono::duration<double>(end - first).count();
    const double rate = (produced - 1) / decode_s;
    if (run == 0) continue;  // warm-up
    decode_rates.push_back(rate);
    std::printf("{\"run\": %d, \"prefill_ms\": %.2f, \"decode_tokens_per_s\": %.2f}\n", run, prefill_ms, rate);
  }
  std::sort(decode_rates.begin(), decode_rates.end());
  std::printf("{\"median_decode_tokens_per_s\": %.2f, \"device\": \"%s\", \"dtype\": \"%s\"}\n",
              decode_rates[decode_rates.size() / 2], (*runner)->info().device.c_str(),
              (*runner)->info().compute_dtype.c_str());
  (*engine)->Shutdown();
  return 0;
}
