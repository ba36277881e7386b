// The real Scheduler driven by simulated time: a StepExecutor that answers at once and moves a
// FakeClock by what a cost model says the step would take on a GPU, and closed- or open-loop
// clients. Scheduling policies (prefill caps, thin budgets) can then be compared on a laptop in
// seconds; what it says is only as good as the cost model, which bench/README.md checks against
// the H200's measurements.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/engine/scheduler.h"

namespace glmserve::bench {

// Piecewise-linear in x between (x, y) points sorted by x; flat beyond the ends.
struct Curve {
  std::vector<std::pair<double, double>> points;
  double At(double x) const;
};
// "x:y,x:y,..." with x strictly increasing; INVALID_ARGUMENT naming the bad item otherwise.
absl::StatusOr<Curve> ParseCurve(const std::string& text);

// What a step costs on the device, in ms. Defaults: GLM-4-9B bf16 on an H200
// (bench/results/gpu.md: decode_bench's steps, the seventh session's cost of a prompt token by
// the step's rows, decode_bench's 64-prompt prefill).
struct CostModel {
  // A step of only decode rows, by its rows (decode_bench at 1 / 8 / 32 / 64 / 128 / 256).
  Curve decode_ms{{{1, 5.63}, {8, 6.00}, {32, 5.86}, {64, 6.06}, {128, 7.05}, {256, 10.34}}};
  // What each prompt token adds to a step that also decodes, in us, by the step's rows rounded up
  // to a multiple of 64 (the mixed-step graph buckets).
  // (512: the server's ITL at 256 streams, 17 ms, over decode_bench's 10.3 ms for 256 rows.)
  Curve prompt_token_us{{{64, 10.0}, {128, 14.4}, {192, 24.3}, {256, 18.3}, {320, 20.0}, {512, 26.0}}};
  // A step with nothing decoding: the larger of decode_ms at 1 row and this per prompt token.
  double prefill_only_token_us = 25.7;

  double StepMs(int32_t decode_rows, int32_t prompt_tokens) const;
};

// GLM-4-9B bf16 on an H100 80GB HBM3: decode_bench's steps (1-64 rows the twenty-eighth session's,
// 128 / 256 the eighteenth's and bench/results/gpu.md's H100 runs) and prompt-token costs fitted to
// the twenty-ninth session's 15 s A/B at 64 streams (bench/README.md gives the fit: tok/s and steady
// tok/s within 0.5%, TTFT and ITL p99 within 4%, for the defaults and two thin budgets).
CostModel H100CostModel();

struct SimLoad {
  int32_t concurrency = 0;  // closed loop: this many requests in flight, each finish sends the next
  double rate = 0;          // open loop (when concurrency is 0): Poisson arrivals, requests/s
  int32_t prompt_len = 128;
  int32_t new_tokens = 128;  // every request generates exactly this many (min = max)
  double duration_s = 7;     // sending stops here; requests in flight then finish
  double warmup_s = 1;       // tokens before this are left out of steady_tok_s
  // Closed loop: a client sends its next request this long after its last one finished (and its
  // first this long after the start), drawn uniformly from [0, client_delay_ms]: the network and
  // the client's own work. Without it every stream stays in lockstep forever.
  double client_delay_ms = 1.0;
  uint64_t seed = 1;
};

struct SimResult {
  // glmload's level figure: every token over the whole level, from the level's start to its last
  // token (the first wave of prompts and the drain after sending stops included).
  double tok_s = 0;
  double steady_tok_s = 0;  // tokens that arrived in (warmup_s, duration_s], over that window
  double ttft_p50_ms = 0, ttft_p99_ms = 0;
  double itl_p50_ms = 0, itl_p99_ms = 0;
  int64_t requests = 0;  // finished
  int64_t steps = 0;
};

// INVALID_ARGUMENT for a bad load or scheduler option; INTERNAL when a request fails.
absl::StatusOr<SimResult> Simulate(const SchedulerOptions& options, const CostModel& cost, const SimLoad& load);

}  // namespace glmserve::bench
