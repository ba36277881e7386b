// Engine throughput and latency in-process (no gRPC): ModelRunner -> PagedExecutor -> engine.
// For each concurrency C, C closed-loop clients each keep one request in flight (a new one is
// submitted as soon as one finishes) until --requests-per-client each have finished; batching
// on (max batch --max-batch) vs off (max batch 1). Prints a markdown table.
//   engine_bench --model models/glm4-tiny [--concurrency 1,8,32] [--prompt-tokens 32]
//                [--new-tokens 32] [--requests-per-client 4] [--max-batch 64] [--device cpu]
//                [--threads N]   (LibTorch intra-op threads; 0 = LibTorch's default)
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/closed_loop.h"
#include "bench/model_flags.h"
#include "runtime/engine.h"
#include "runtime/engine/engine_impl.h"
#include "runtime/model_runner.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Row {
  std::string batching;
  int32_t concurrency = 0;
  int32_t requests = 0;
  int64_t tokens = 0;
  double seconds = 0;
  double p50_ms = 0, p95_ms = 0, ttft_p50_ms = 0;
  int32_t errors = 0;
};

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5));
  return v[i];
}

// Runs one closed-loop measurement on a fresh engine.
Row Measure(glmserve::ModelRunner* runner, const glmserve::ExecutorOptions& exec_options, int32_t max_batch,
            int32_t concurrency, int32_t requests_per_client, int32_t prompt_tokens, int32_t new_tokens) {
  Row row;
  row.batching = max_batch > 1 ? absl::StrCat("on (max ", max_batch, ")") : "off (max 1)";
  row.concurrency = concurrency;
  auto executor = runner->CreateExecutor(exec_options);
  if (!executor.ok()) {
    std::fprintf(stderr, "%s\n", std::string(executor.status().message()).c_str());
    std::exit(1);
  }
  glmserve::EngineOptions options;
  options.scheduler.max_batch_size = max_batch;
  options.scheduler.max_tokens_per_step = std::max(2048, max_batch);
  options.scheduler.log = [](const std::string&) {};
  auto engine = glmserve::CreateInferenceEngine(options, *std::move(executor), runner->info());
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", std::string(engine.status().message()).c_str());
    std::exit(1);
  }
  const int32_t vocab = runner->info().vocab_size;
  glmserve::bench::ClosedLoopOptions loop;
  loop.clients = concurrency;
  loop.max_requests = int64_t{concurrency} * requests_per_client;
  const Clock::time_point start = Clock::now();
  absl::StatusOr<std::vector<glmserve::RequestResult>> done =
      glmserve::bench::RunClosedLoop(engine->get(), loop, [&](int64_t id) {
        glmserve::InferenceRequest r;
        r.request_id = absl::StrCat("bench-", id);
        for (int32_t i = 0; i < prompt_tokens; ++i)
          r.input_ids.push_back(static_cast<int32_t>((id * 7919 + i * 13 + 1) % vocab));
        r.params.max_new_tokens = new_tokens;
        r.params.min_new_tokens = new_tokens;  // every request generates exactly new_tokens
        return r;
      });
  if (!done.ok()) {
    std::fprintf(stderr, "%s\n", done.status().ToString().c_str());
    std::exit(1);
  }
  row.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<double> latency, ttft;
  for (const auto& r : *done) {
    if (!r.status.ok()) {
      ++row.errors;
      continue;
    }
    row.tokens += static_cast<int64_t>(r.output_ids.size());
    latency.push_back(r.total_ms);
    ttft.push_back(r.ttft_ms);
  }
  row.requests = static_cast<int32_t>(done->size());
  row.p50_ms = Percentile(latency, 0.5);
  row.p95_ms = Percentile(latency, 0.95);
  row.ttft_p50_ms = Percentile(ttft, 0.5);
  (*engine)->Shutdown();
  return row;
}

}  // namespace

int main(int argc, char** argv) {
  glmserve::bench::ModelFlags model_flags;
  model_flags.model = "models/glm4-tiny";
  std::vector<int32_t> concurrencies = {1, 8, 32};
  int32_t prompt_tokens = 32, new_tokens = 32, requests_per_client = 4, max_batch = 64, threads = 0;
  using glmserve::flags::kIntMax;
  glmserve::flags::FlagSet flags("engine_bench", "[flags]", "Engine tokens/s and latency, batching on vs off.");
  model_flags.Register(flags);
  flags.IntList("concurrency", &concurrencies, 1, kIntMax, "client counts, one run each").SkipEmptyItems();
  flags.Int("prompt-tokens", &prompt_tokens, 1, kIntMax, "prompt length");
  flags.Int("new-tokens", &new_tokens, 1, kIntMax, "tokens generated per request (eos ignored)");
  flags.Int("requests-per-client", &requests_per_client, 1, kIntMax, "requests each closed-loop client sends");
  flags.Int("max-batch", &max_batch, 1, 1 << 16, "max batch size with batching on");
  flags.Int("threads", &threads, 0, 1 << 16, "LibTorch intra-op threads (0: LibTorch's default)");
  if (auto exit_code = glmserve::bench::ParseBenchFlags(flags, model_flags, argc, argv)) return *exit_code;
  if (threads > 0) at::set_num_threads(threads);
  auto runner = glmserve::ModelRunner::Load(model_flags.model, model_flags.ToLoadOptions());
  if (!runner.ok()) {
    std::fprintf(stderr, "%s\n", std::string(runner.status().message()).c_str());
    return 2;
  }
  const glmserve::ModelInfo& info = (*runner)->info();
  glmserve::ExecutorOptions exec_options;
  // Enough KV for every client's sequence at once, with room to spare.
  const int32_t max_concurrency = *std::max_element(concurrencies.begin(), concurrencies.end());
  exec_options.block_size = 16;
  exec_options.num_blocks = max_concurrency * ((prompt_tokens + new_tokens + 15) / 16 + 1) + 16;
  exec_options.log = [](const std::string&) {};

  // Warm-up (allocator, thread pools).
  Measure(runner->get(), exec_options, max_batch, 2, 1, prompt_tokens, std::min(new_tokens, 4));

  std::vector<Row> rows;
  for (int32_t batch : {max_batch, 1}) {
    for (int32_t c : concurrencies) {
      rows.push_back(Measure(runner->get(), exec_options, batch, c, requests_per_client, prompt_tokens, new_tokens));
      const Row& r = rows.back();
      std::fprintf(stderr, "batching %s, concurrency %d: %.1f tok/s\n", r.batching.c_str(), c,
                   static_cast<double>(r.tokens) / r.seconds);
    }
  }
  std::printf(
      "model: %s (%s, %d layers, hidden %d, vocab %d, %s on %s); prompt %d tokens, %d new tokens, "
      "%d requests per client, %d LibTorch threads, %u CPUs\n\n",
      model_flags.model.c_str(), info.architecture.c_str(), info.num_layers, info.hidden_size, info.vocab_size,
      info.compute_dtype.c_str(), info.device.c_str(), prompt_tokens, new_tokens, requests_per_client,
      at::get_num_threads(), std::thread::hardware_concurrency());
  std::printf(
      "| batching | concurrency | requests | generated tok/s | latency p50 ms | latency p95 ms | TTFT p50 ms | errors "
      "|\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const Row& r : rows) {
    std::printf("| %s | %d | %d | %.1f | %.1f | %.1f | %.1f | %d |\n", r.batching.c_str(), r.concurrency, r.requests,
                static_cast<double>(r.tokens) / r.seconds, r.p50_ms, r.p95_ms, r.ttft_p50_ms, r.errors);
  }
  return 0;
}
