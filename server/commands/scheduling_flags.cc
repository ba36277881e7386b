#include "server/commands/scheduling_flags.h"

#include <chrono>

#include "absl/strings/str_cat.h"

namespace glmserve {
namespace {

using flags::kIntMax;
using flags::kTimeMax;

}  // namespace

SchedulingFlags::SchedulingFlags(SchedulerOptions* options)
    : options_(options),
      queue_delay_us_(options->max_queue_delay.count()),
      prefill_hold_us_(options->max_prefill_hold.count()),
      thin_prefill_wait_ms_(
          std::chrono::duration_cast<std::chrono::milliseconds>(options->thin_prefill_max_wait).count()) {}

void SchedulingFlags::Register(flags::FlagSet& set) {
  SchedulerOptions& o = *options_;
  set.Int("max-batch", &o.max_batch_size, 1, 1 << 16, "sequences running at once");
  set.Int("max-batch-tokens", &tokens_per_step_, 1, kIntMax,
          "tokens per step (chunked prefill; a prompt's images charge their tokens too)")
      .DefaultText(absl::StrCat(kGpuTokensPerStep, " on a GPU, ", o.max_tokens_per_step, " on the CPU"));
  set.Int("max-prefill-tokens-with-decodes", &prefill_cap_, 0, kIntMax,
          "prefill tokens in a step that also decodes (flat ITL while prompts arrive)")
      .DefaultText(absl::StrCat(kGpuPrefillTokensWithDecodes, " on a GPU, ", o.max_prefill_tokens_with_decodes,
                                " (no cap) on the CPU"));
  set.Int("mixed-step-rows", &mixed_step_rows_, 0, kIntMax,
          "rows a step that decodes is filled to with prefill while its decodes take a quarter or less")
      .DefaultText(absl::StrCat(kGpuMixedStepRows, " on a GPU, ", o.mixed_step_rows, " (off) on the CPU"));
  set.Int("prefill-spread-steps", &o.prefill_spread_steps, 0, kIntMax,
          "while others decode, spread the waiting prompt tokens over about this many steps (0 = off)");
  set.Int("prefill-spread-min-tokens", &o.prefill_spread_min_tokens, 1, kIntMax,
          "the least prefill --prefill-spread-steps cuts a step that decodes to");
  set.Int("thin-prefill-tokens", &o.thin_prefill_tokens, 0, kIntMax,
          "while others decode and at most N sequences are in the server, at most N prefill tokens a step "
          "until a prompt has waited --thin-prefill-max-wait-ms for its first token (0 = off)")
      .ValueName("N");
  set.Bool("thin-prefill-auto", &o.thin_prefill_auto,
           "the thin budget from the load (instead of --thin-prefill-tokens): sequences in the server x "
           "prompt / output tokens seen, while a prompt takes at most --thin-prefill-auto-prompt-steps steps at it "
           "and the decodes at most a quarter of --mixed-step-rows; for closed-loop clients (fixed concurrency)");
  set.Int("thin-prefill-auto-prompt-steps", &o.thin_prefill_auto_prompt_steps, 1, kIntMax,
          "--thin-prefill-auto applies while a prompt takes at most this many steps at its budget");
  set.Int("thin-prefill-backlog-steps", &o.thin_prefill_backlog_steps, 0, kIntMax,
          "--thin-prefill-auto takes in the waiting prompt tokens within this many steps (a burst drains fast; "
          "0 = off)");
  set.Int("thin-prefill-max-wait-ms", &thin_prefill_wait_ms_, 0, kTimeMax,
          "how long a prompt may wait before the thin budget gives way to the caps");
  set.Int("max-queue-delay-us", &queue_delay_us_, 0, kTimeMax, "batching window while idle");
  set.Int("max-prefill-hold-us", &prefill_hold_us_, 0, kTimeMax,
          "while others decode, hold new prompts until they fill a step's prefill budget, at most this long");
  set.Bool("prefix-caching", &o.prefix_caching,
           "reuse the KV blocks of prompt prefixes seen before (system prompts, conversation history)");
  set.Bool("overlap-steps", &o.overlap_steps,
           "experimental: launch each step before the one before it is committed, so the engine plans, stages "
           "and streams while the accelerator computes (same ids; a request that stops on a stop id has run one "
           "discarded row)");
}

absl::Status SchedulingFlags::Resolve(bool gpu) const {
  SchedulerOptions& o = *options_;
  o.max_queue_delay = std::chrono::microseconds(queue_delay_us_);
  o.max_prefill_hold = std::chrono::microseconds(prefill_hold_us_);
  o.thin_prefill_max_wait = std::chrono::milliseconds(thin_prefill_wait_ms_);
  // The CPU, where a prefill token costs what a decode row costs, keeps no cap and no fill.
  if (prefill_cap_ >= 0) {
    o.max_prefill_tokens_with_decodes = static_cast<int32_t>(prefill_cap_);
  } else if (gpu) {
    o.max_prefill_tokens_with_decodes = kGpuPrefillTokensWithDecodes;
  }
  if (mixed_step_rows_ >= 0) {
    o.mixed_step_rows = static_cast<int32_t>(mixed_step_rows_);
  } else if (gpu) {
    o.mixed_step_rows = kGpuMixedStepRows;
  }
  if (tokens_per_step_ >= 0) {
    o.max_tokens_per_step = static_cast<int32_t>(tokens_per_step_);
  } else if (gpu) {
    o.max_tokens_per_step = kGpuTokensPerStep;
  }
  if (o.thin_prefill_auto && o.thin_prefill_tokens > 0) {
    return absl::InvalidArgumentError(absl::StrCat("--thin-prefill-tokens ", o.thin_prefill_tokens,
                                                   " and --thin-prefill-auto both choose the thin budget: give one"));
  }
  if (o.max_tokens_per_step < o.max_batch_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-batch-tokens: ", o.max_tokens_per_step, " must be >= --max-batch ", o.max_batch_size));
  }
  return absl::OkStatus();
}

}  // namespace glmserve
