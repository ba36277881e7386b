// schedule_sim: glmserve's scheduler under closed- and open-loop load in simulated time, a step
// costing what --card's cost model (GLM-4-9B on an H200 or an H100) or --decode-ms /
// --prompt-token-us say. Prints one markdown row per load level. No model, no GPU; seconds per run.
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "bench/schedule_sim.h"
#include "flags/flags.h"
#include "server/commands/scheduling_flags.h"

namespace {

using glmserve::SchedulerOptions;
using glmserve::bench::CostModel;
using glmserve::bench::Curve;

// A --decode-ms / --prompt-token-us value: its curve, or the parse error as the flag's message.
// Kept apart from --card's model and laid over it once every flag is read, so the order of the
// flags does not matter.
std::function<std::optional<std::string>(const std::string&)> CurveFlag(std::optional<Curve>* target) {
  return [target](const std::string& value) -> std::optional<std::string> {
    absl::StatusOr<Curve> curve = glmserve::bench::ParseCurve(value);
    if (!curve.ok()) return std::string(curve.status().message());
    *target = *curve;
    return std::nullopt;
  };
}

std::string CurveText(const Curve& curve) {
  std::string text;
  for (const auto& [x, y] : curve.points) absl::StrAppend(&text, text.empty() ? "" : ",", x, ":", y);
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int32_t> concurrency = {32, 64};
  std::vector<std::string> rates;
  glmserve::bench::SimLoad load;
  // Scheduling as `glmserve serve --device cuda` runs it, at scripts/gpu-serve-bench.sh's --max-batch 256.
  SchedulerOptions options;
  options.max_batch_size = 256;
  glmserve::SchedulingFlags scheduling(&options);
  std::string card = "h200";
  std::optional<Curve> decode_ms, prompt_token_us;
  const CostModel h200;  // the default card's model, for --help
  double prefill_only_token_us = h200.prefill_only_token_us;

  glmserve::flags::FlagSet set("schedule_sim", "[flags]",
                               "glmserve's scheduler under load in simulated time, each step costing what the "
                               "cost model says (GLM-4-9B on an H200 or an H100, --card); bench/README.md.");
  set.Section("load");
  set.IntList("concurrency", &concurrency, 1, 100000, "closed-loop levels (each finish sends the next request)")
      .SkipEmptyItems();
  set.StringList("rates", &rates, "open-loop levels: Poisson arrivals, requests/s").DefaultText("none");
  set.Int("prompt-len", &load.prompt_len, 1, 1 << 20, "prompt tokens of every request");
  set.Int("new-tokens", &load.new_tokens, 1, 1 << 20, "tokens every request generates");
  set.Duration("duration", &load.duration_s, 1e-3, 1e6, "sending per level (simulated)");
  set.Duration("warmup", &load.warmup_s, 0, 1e6, "tokens before this are left out of steady tok/s");
  set.Number("client-delay-ms", &load.client_delay_ms, {0, 1e6},
             "closed loop: each next request is sent up to this long (uniform) after a finish");
  set.Uint64("seed", &load.seed, "open-loop arrivals and client delays");
  set.Section("scheduling (glmserve serve's flags and their GPU defaults; prefix caching off unless given)");
  scheduling.Register(set);
  set.Section("cost model (ms a step; --card's, with any of the three below laid over it)");
  set.Choice("card", &card, {"h200", "h100"},
             "GLM-4-9B bf16 on this card: h200 (the seventh session's profiles), h100 (decode_bench's "
             "steps; prompt-token costs fitted to the twenty-ninth session's 64-stream measurements)");
  set.Custom("decode-ms", "X:Y,...", "--card's; h200: " + CurveText(h200.decode_ms),
             "a step of Y ms at X decode rows, none prefilling", CurveFlag(&decode_ms));
  set.Custom("prompt-token-us", "X:Y,...", "--card's; h200: " + CurveText(h200.prompt_token_us),
             "Y us more a prompt token in a step that decodes, X its rows rounded up to a multiple of 64",
             CurveFlag(&prompt_token_us));
  set.Number("prefill-only-token-us", &prefill_only_token_us, {0, 1e6},
             "us a prompt token in a step with no decodes, at least --decode-ms at 1 row")
      .DefaultText("--card's; h200: " + absl::StrCat(h200.prefill_only_token_us));
  if (auto exit_code = set.ParseCommandLine(argc, argv)) return *exit_code;
  CostModel cost = card == "h100" ? glmserve::bench::H100CostModel() : h200;
  if (decode_ms) cost.decode_ms = *decode_ms;
  if (prompt_token_us) cost.prompt_token_us = *prompt_token_us;
  if (set.was_set("prefill-only-token-us")) cost.prefill_only_token_us = prefill_only_token_us;
  if (load.warmup_s >= load.duration_s) return set.UsageError("--warmup must be shorter than --duration");
  if (absl::Status resolved = scheduling.Resolve(/*gpu=*/true); !resolved.ok())
    return set.UsageError(resolved.message());

  std::vector<glmserve::bench::SimLoad> levels;
  for (int32_t c : concurrency) {
    levels.push_back(load);
    levels.back().concurrency = c;
  }
  for (const std::string& text : rates) {
    double rate = 0;
    if (!absl::SimpleAtod(text, &rate) || !(rate > 0)) {
      return set.UsageError(absl::StrCat("--rates: '", text, "' is not a positive number"));
    }
    levels.push_back(load);
    levels.back().rate = rate;
  }
  std::printf("| load | tok/s | steady tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms | requests | steps |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|\n");
  for (const glmserve::bench::SimLoad& level : levels) {
    absl::StatusOr<glmserve::bench::SimResult> r = glmserve::bench::Simulate(options, cost, level);
    if (!r.ok()) {
      std::fprintf(stderr, "schedule_sim: %s\n", r.status().ToString().c_str());
      return 1;
    }
    const std::string name =
        level.concurrency > 0 ? absl::StrCat(level.concurrency, " streams") : absl::StrCat(level.rate, " requests/s");
    std::printf("| %s | %.1f | %.1f | %.1f / %.1f | %.2f / %.2f | %lld | %lld |\n", name.c_str(), r->tok_s,
                r->steady_tok_s, r->ttft_p50_ms, r->ttft_p99_ms, r->itl_p50_ms, r->itl_p99_ms,
                static_cast<long long>(r->requests), static_cast<long long>(r->steps));
  }
  return 0;
}
