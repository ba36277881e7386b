// Batched decode speed of the runtime's executor (the engine's hot path, without scheduling):
// B sequences of P prompt tokens are prefilled together, then decode N-1 steps with all B in
// one batch. Prints a markdown row per batch size: tokens/s, ms per decode step, time to first
// token, the fraction of the HBM roofline (weights + KV bytes read per step over the step time,
// against --hbm-gbps), and the first decode step alone. On CUDA the executor captures every
// batch bucket's decode graph when it is created, as `glmserve serve` does, so no timed step
// includes a capture. An untimed prefill and up to 16 decode steps before the table take the
// process's one-time initialisation out of the first batch size's TTFT and steps.
//   decode_bench --model DIR [--random-weights] --device cuda --dtype bfloat16
//                [--batch-sizes 1,8,32,64] [--prompt-tokens 128] [--new-tokens 128] [--hbm-gbps 3350]
//                [--profile-trace PREFIX] [--overlap-steps false]
// --overlap-steps: each decode step is launched before the one before it is collected (the
// executor's Launch / Collect, as `glmserve serve --overlap-steps` drives it), its tokens the
// previous step's ids on the device: the host's staging runs while the GPU computes.
// --profile-trace: after each batch size's timed run, profiles kProfiledSteps more decode steps
// and writes PREFIX-b<batch>.json (a Chrome trace; bench/summarize_trace.py sums its kernels).
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "bench/model_flags.h"
#include "runtime/model/profiling.h"
#include "runtime/model_runner.h"

namespace {

using Clock = std::chrono::steady_clock;
constexpr int32_t kProfiledSteps = 8;
constexpr int32_t kWarmUpDecodeSteps = 16;  // untimed, after the untimed prefill

double Ms(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

}  // namespace

int main(int argc, char** argv) {
  glmserve::bench::ModelFlags model_flags;
  std::vector<int32_t> batch_sizes = {1, 8, 32, 64};
  int32_t prompt_tokens = 128, new_tokens = 128;
  double hbm_gbps = 3350;  // H100 SXM HBM3
  std::string profile_trace;
  double temperature = 0, top_p = 1;
  bool overlap_steps = false;
  int32_t top_k = 0;
  using glmserve::flags::kIntMax;
  glmserve::flags::FlagSet flags("decode_bench", "--model DIR [flags]",
                                 "Times batched prefill + decode through the paged-KV executor.");
  model_flags.Register(flags, /*with_random_weights=*/true);
  flags.IntList("batch-sizes", &batch_sizes, 1, kIntMax, "batch sizes, one run each");
  flags.Int("prompt-tokens", &prompt_tokens, 1, kIntMax, "prompt length per sequence");
  flags.Int("new-tokens", &new_tokens, 1, kIntMax, "tokens generated per sequence");
  flags.Number("hbm-gbps", &hbm_gbps, {0, 1e9, /*lo_open=*/true},
               "device memory bandwidth in GB/s for the roofline fraction");
  flags.Number("temperature", &temperature, {0, 1e6}, "sampling temperature (0 = greedy)");
  flags.Int("top-k", &top_k, 0, kIntMax, "top-k when sampling (0 = off)");
  flags.Number("top-p", &top_p, {0, 1, /*lo_open=*/true}, "top-p when sampling (1 = off)");
  flags.Bool("overlap-steps", &overlap_steps,
             "launch each decode step before collecting the one before it (the next step's tokens stay on "
             "the device)");
  flags.String("profile-trace", &profile_trace, "write a profile of extra decode steps to PREFIX-b<batch>.json")
      .ValueName("PREFIX");
  if (auto exit_code = glmserve::bench::ParseBenchFlags(flags, model_flags, argc, argv)) return *exit_code;
  const std::string& model = model_flags.model;
  const Clock::time_point load_start = Clock::now();
  auto runner = glmserve::ModelRunner::Load(model, model_flags.ToLoadOptions());
  if (!runner.ok()) {
    std::fprintf(stderr, "%s\n", std::string(runner.status().message()).c_str());
    return 2;
  }
  const glmserve::ModelInfo& info = (*runner)->info();
  std::fprintf(stderr, "loaded %s (%lld parameters, %s on %s) in %.1f s\n", model.c_str(),
               static_cast<long long>(info.parameter_count), info.compute_dtype.c_str(), info.device.c_str(),
               Ms(load_start, Clock::now()) / 1000);
  const int64_t element_bytes = info.compute_dtype == "float32" ? 4 : 2;
  const int64_t kv_bytes_per_token =
      int64_t{2} * info.num_layers * info.num_key_value_heads * info.head_dim * element_bytes;
  const int32_t block_size = 16;
  const int32_t capacity = prompt_tokens + new_tokens + (profile_trace.empty() ? 0 : kProfiledSteps);
  const int32_t blocks_per_seq = (capacity + block_size - 1) / block_size;
  int32_t max_batch = 0;
  for (int32_t b : batch_sizes) max_batch = std::max(max_batch, b);
  glmserve::ExecutorOptions exec_options;
  exec_options.block_size = block_size;
  exec_options.num_blocks = max_batch * blocks_per_seq;
  // As `glmserve serve` does: every batch bucket's decode graph is captured before the first
  // request, so no measured step includes a capture.
  exec_options.capture_decode_batch = max_batch;
  auto executor = (*runner)->CreateExecutor(exec_options);
  if (!executor.ok()) {
    std::fprintf(stderr, "%s\n", std::string(executor.status().message()).c_str());
    return 1;
  }
  glmserve::GenerationParams params;
  params.max_new_tokens = new_tokens;
  params.stop_token_ids = {-1};  // decode the full count
  params.sampling.temperature = static_cast<float>(temperature);
  params.sampling.top_k = top_k;
  params.sampling.top_p = static_cast<float>(top_p);
  params.sampling.seed = 1;

  {
    // One untimed prefill and a few decode steps first: the process's first forwards pay one-time
    // initialisation (kernel modules, cuBLAS handles, allocator growth, the GPU leaving its idle
    // clocks) that a serving process pays once, not per request; without them the first batch
    // size's TTFT carried all of it (226-358 ms) and its steps ran ~0.1 ms slower than the same
    // batch size measured later in the process (H100).
    std::vector<int32_t> prompt;
    for (int32_t i = 0; i < prompt_tokens; ++i) prompt.push_back((i * 7919 + 13) % info.vocab_size);
    glmserve::SequenceStep warm_up;
    warm_up.sequence_id = 0;
    warm_up.tokens = prompt;
    for (int32_t k = 0; k < blocks_per_seq; ++k) warm_up.block_table.push_back(k);
    warm_up.params = &params;
    warm_up.history = &prompt;
    const Clock::time_point warm_up_start = Clock::now();
    auto warmed = (*executor)->Step({warm_up});
    if (!warmed.ok()) {
      std::fprintf(stderr, "warm-up prefill: %s\n", std::string(warmed.status().message()).c_str());
      return 1;
    }
    std::vector<int32_t> history = prompt;
    const int32_t warm_up_steps = std::min(kWarmUpDecodeSteps, new_tokens - 1);  // within its blocks
    for (int32_t step = 0; step < warm_up_steps; ++step) {
      history.push_back(warmed->next_tokens[0]);
      warm_up.start_position = static_cast<int32_t>(history.size()) - 1;
      warm_up.tokens = {history.back()};
      warm_up.num_generated = step + 1;
      warm_up.history = &history;
      warmed = (*executor)->Step({warm_up});
      if (!warmed.ok()) {
        std::fprintf(stderr, "warm-up decode: %s\n", std::string(warmed.status().message()).c_str());
        return 1;
      }
    }
    std::fprintf(stderr, "warm-up prefill + %d decode steps (one-time initialisation, untimed): %.1f ms\n",
                 warm_up_steps, Ms(warm_up_start, Clock::now()));
  }
  std::printf(
      "| batch | tokens/s | ms/step | TTFT ms | HBM roofline | first decode step ms | device idle us a step |\n"
      "|---:|---:|---:|---:|---:|---:|---:|\n");
  for (int32_t batch : batch_sizes) {
    std::vector<std::vector<int32_t>> history(batch);
    std::vector<glmserve::SequenceStep> steps(batch);
    for (int32_t b = 0; b < batch; ++b) {
      for (int32_t i = 0; i < prompt_tokens; ++i) history[b].push_back((b * 131 + i * 7919 + 13) % info.vocab_size);
      glmserve::SequenceStep& s = steps[b];
      s.sequence_id = b;
      s.tokens = history[b];
      s.start_position = 0;
      for (int32_t k = 0; k < blocks_per_seq; ++k) s.block_table.push_back(b * blocks_per_seq + k);
      s.params = &params;
      s.history = &history[b];
    }
    const Clock::time_point start = Clock::now();
    auto first = (*executor)->Step(steps);  // batched prefill: every sequence's first token
    if (!first.ok()) {
      std::fprintf(stderr, "prefill: %s\n", std::string(first.status().message()).c_str());
      return 1;
    }
    const Clock::time_point first_token = Clock::now();
    for (int32_t b = 0; b < batch; ++b) history[b].push_back(first->next_tokens[b]);
    // The GPU's own idle time between the decode steps (StepResult::device_idle_us; none on a CPU).
    double device_idle_us = 0;
    int32_t idle_gaps = 0;
    auto count_idle = [&](const glmserve::StepResult& result) {
      if (result.device_idle_us < 0) return;
      device_idle_us += result.device_idle_us;
      ++idle_gaps;
    };
    // One decode step for every sequence; false after printing the error.
    auto decode_step = [&](int32_t step) {
      for (int32_t b = 0; b < batch; ++b) {
        steps[b].start_position = static_cast<int32_t>(history[b].size()) - 1;
        steps[b].tokens = {history[b].back()};
        steps[b].num_generated = step;
      }
      auto out = (*executor)->Step(steps);
      if (!out.ok()) {
        std::fprintf(stderr, "decode: %s\n", std::string(out.status().message()).c_str());
        return false;
      }
      count_idle(*out);
      for (int32_t b = 0; b < batch; ++b) history[b].push_back(out->next_tokens[b]);
      return true;
    };
    // --overlap-steps: decode step `step` launched, its rows fed the previous step's ids where
    // that step is still out (each history ends in a placeholder for the id its last launched step
    // samples); collecting a step puts its ids in place of the oldest placeholders.
    int32_t out_steps = 0;
    auto launch_step = [&](int32_t step) {
      for (int32_t b = 0; b < batch; ++b) {
        steps[b].start_position = static_cast<int32_t>(history[b].size()) - 1;
        steps[b].tokens = {history[b].back()};
        steps[b].num_generated = step;
      }
      const absl::Status launched = (*executor)->Launch(steps);
      if (!launched.ok()) {
        std::fprintf(stderr, "decode launch: %s\n", std::string(launched.message()).c_str());
        return false;
      }
      for (int32_t b = 0; b < batch; ++b) history[b].push_back(glmserve::kTokenFromPreviousStep);
      ++out_steps;
      return true;
    };
    auto collect_step = [&]() {
      auto out = (*executor)->Collect();
      if (!out.ok()) {
        std::fprintf(stderr, "decode collect: %s\n", std::string(out.status().message()).c_str());
        return false;
      }
      for (int32_t b = 0; b < batch; ++b) history[b][history[b].size() - out_steps] = out->next_tokens[b];
      count_idle(*out);
      --out_steps;
      return true;
    };
    // The first decode step of a batch size, on its own too: a slow one means a one-time cost
    // (a graph capture, a GEMM choice) reached a timed step.
    Clock::time_point first_decode_end = first_token;
    for (int32_t step = 1; step < new_tokens; ++step) {
      if (overlap_steps) {
        if (!launch_step(step)) return 1;
        if (out_steps == 2 && !collect_step()) return 1;
      } else if (!decode_step(step)) {
        return 1;
      }
      if (step == 1) first_decode_end = Clock::now();
    }
    while (out_steps > 0) {
      if (!collect_step()) return 1;
    }
    const Clock::time_point end = Clock::now();
    const double step_ms = Ms(first_token, end) / (new_tokens - 1);
    const double tokens_per_s = batch * (new_tokens - 1) / (Ms(first_token, end) / 1000);
    // Bytes a decode step must read: every weight once, plus each sequence's KV (average context).
    const double avg_context = prompt_tokens + new_tokens / 2.0;
    const double bytes = static_cast<double>(info.parameter_count) * element_bytes +
                         batch * avg_context * static_cast<double>(kv_bytes_per_token);
    const double roofline = (bytes / (step_ms / 1000)) / (hbm_gbps * 1e9);
    const std::string idle = idle_gaps > 0 ? absl::StrFormat("%.1f", device_idle_us / idle_gaps) : "-";
    std::printf("| %d | %.1f | %.2f | %.1f | %.0f%% | %.2f | %s |\n", batch, tokens_per_s, step_ms,
                Ms(start, first_token), roofline * 100, Ms(first_token, first_decode_end), idle.c_str());
    std::fflush(stdout);
    if (!profile_trace.empty()) {
      const std::string path = profile_trace + "-b" + std::to_string(batch) + ".json";
      if (auto started = glmserve::StartDeviceProfile(); !started.ok()) {
        std::fprintf(stderr, "%s\n", std::string(started.message()).c_str());
        return 1;
      }
      for (int32_t step = new_tokens; step < new_tokens + kProfiledSteps; ++step) {
        if (overlap_steps) {  // the same path as the timed steps
          if (!launch_step(step)) return 1;
          if (out_steps == 2 && !collect_step()) return 1;
        } else if (!decode_step(step)) {
          return 1;
        }
      }
      while (out_steps > 0) {
        if (!collect_step()) return 1;
      }
      if (auto stopped = glmserve::StopDeviceProfile(path); !stopped.ok()) {
        std::fprintf(stderr, "%s\n", std::string(stopped.message()).c_str());
        return 1;
      }
      std::fprintf(stderr, "profile of %d decode steps at batch %d: %s\n", kProfiledSteps, batch, path.c_str());
    }
  }
  return 0;
}
