// Single-sequence generation speed of the runtime (no server): prefill time and decode tokens/s.
//   generate_bench --model DIR [--device cuda --dtype bfloat16] [--prompt-tokens 128] [--new-tokens 128] [--runs 3]
// Prints one JSON line per run plus the median, so scripts can compare against transformers.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "runtime/model_runner.h"
#include "server/flags.h"

int main(int argc, char** argv) {
  using Clock = std::chrono::steady_clock;
  std::string model, device = "cpu", dtype;
  int32_t prompt_tokens = 128, new_tokens = 128, runs = 3;
  glmserve::FlagParser flags("generate_bench", "Times single-sequence greedy generation.");
  flags.AddString("model", &model, "checkpoint directory");
  flags.AddString("device", &device, "cpu or cuda[:N]");
  flags.AddString("dtype", &dtype, "float32, bfloat16 or float16 (empty: per device)");
  flags.AddInt("prompt-tokens", &prompt_tokens, "prompt length");
  flags.AddInt("new-tokens", &new_tokens, "tokens generated per run (eos ignored)");
  flags.AddInt("runs", &runs, "timed runs after one warm-up");
  if (auto s = flags.Parse(argc, argv); !s.ok() || flags.help_requested() || model.empty()) {
    std::fprintf(stderr, "%s\n%s", s.ok() ? "" : std::string(s.message()).c_str(), flags.Usage().c_str());
    return 2;
  }
  glmserve::LoadOptions load;
  load.device = device;
  load.dtype = dtype;
  auto runner = glmserve::ModelRunner::Load(model, load);
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
  std::vector<double> decode_rates;
  for (int32_t run = 0; run <= runs; ++run) {
    Clock::time_point start = Clock::now(), first;
    int32_t produced = 0;
    auto out = (*runner)->Generate(prompt, params, [&](int32_t) {
      if (produced++ == 0) first = Clock::now();
      return true;
    });
    const Clock::time_point end = Clock::now();
    if (!out.ok()) {
      std::fprintf(stderr, "%s\n", std::string(out.status().message()).c_str());
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
  return 0;
}
