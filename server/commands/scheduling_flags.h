// The engine's scheduling flags (--max-batch, the step budgets, the thin-prefill and hold rules,
// prefix caching), one table for `glmserve serve` and bench/schedule_sim, so the simulator
// schedules with the flags, defaults and checks the server has. No gRPC, no LibTorch.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "flags/flags.h"
#include "runtime/engine/scheduler.h"

namespace glmserve {

// A flag left unset takes this on a GPU (the CPU keeps SchedulerOptions' own default):
// --max-prefill-tokens-with-decodes: a mixed step then takes at most ~1.5x a decode step at 64
// streams on an H200 (bench/results/gpu.md).
inline constexpr int32_t kGpuPrefillTokensWithDecodes = 256;
// --mixed-step-rows: up to 256 rows the layer GEMMs of GLM-4-9B cost ~6 us per extra row on an
// H200, past it ~11 (bench/results/gpu.md).
inline constexpr int32_t kGpuMixedStepRows = 256;
// --max-batch-tokens: a phone agent's step (a 3,108-token screenshot charged twice, encoder and
// tokens, plus ~1,400 of text) then prefills in one step instead of four: 208 instead of 227 ms to
// the first token on an H200 (bench/results/gpu.md); a burst of text prompts prefills in fewer,
// larger GEMMs.
inline constexpr int32_t kGpuTokensPerStep = 8192;

// Binds the flags to `options` (whose values are the defaults --help shows); Resolve() then moves
// the values held in other units, or unset, into it.
class SchedulingFlags {
 public:
  explicit SchedulingFlags(SchedulerOptions* options);
  void Register(flags::FlagSet& set);
  // `gpu`: the unset flags take the GPU defaults above. INVALID_ARGUMENT naming the flags when two
  // of them conflict.
  absl::Status Resolve(bool gpu) const;

 private:
  SchedulerOptions* const options_;
  int64_t queue_delay_us_ = 0;
  int64_t prefill_hold_us_ = 0;
  int64_t thin_prefill_wait_ms_ = 0;
  int64_t prefill_cap_ = -1;      // unset: chosen by the device in Resolve
  int64_t mixed_step_rows_ = -1;  // likewise
  int64_t tokens_per_step_ = -1;  // likewise
};

}  // namespace glmserve
