// The seam between the LibTorch-free scheduler/engine and whatever runs the model.
// The engine decides what runs each step; the executor runs it. Tests inject a fake executor.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/generation.h"

namespace glmserve {

// Overlapped steps (SchedulerOptions::overlap_steps): a fed token that stands for the id the
// previous launched step samples for the same sequence, not known on the host when this step is
// launched. It only ever appears as a decode row's one token, and as its history's last entry.
inline constexpr int32_t kTokenFromPreviousStep = -1;

// One sequence's share of a step.
struct SequenceStep {
  int64_t sequence_id = 0;
  // Tokens fed this step: a prefill chunk, or the single last token when decoding.
  std::vector<int32_t> tokens;
  // Position of tokens[0] in the sequence (0 for the first prefill chunk). KV for positions
  // [0, start_position) is already in the blocks of `block_table`.
  int32_t start_position = 0;
  // Physical KV block ids of this sequence, in logical order; covers start_position + tokens.size().
  std::vector<int32_t> block_table;
  // True when the last token fed is the sequence's newest token, so a next token is sampled.
  // False for all but the last chunk of a chunked prefill.
  bool sample = true;
  // New tokens the sequence already has (min_new_tokens masking; the sampler's RNG stream is
  // a pure function of (seed, num_generated) so batching and recompute never change the ids).
  int32_t num_generated = 0;
  const GenerationParams* params = nullptr;  // owned by the engine, valid during Step()
  // Ids the sequence holds so far (prompt + generated), for samplers that need history.
  const std::vector<int32_t>* history = nullptr;
  // glm4v prompts with images: their images and 3-D rotary positions, on every step of the
  // sequence (prefill chunks place image features and 3-D positions; decode rows rotate at
  // index + rope_delta). Null for text. Owned by the engine, valid during Step().
  const MultimodalPrompt* multimodal = nullptr;
};

// The 1-D rotary position of sequence index `index` of `step`'s sequence: the index itself for
// text, Position(0, index) for a multimodal prompt (meaningful where IsPlain(index)).
inline int64_t RotaryPosition(const SequenceStep& step, int64_t index) {
  return step.multimodal == nullptr ? index : step.multimodal->Position(0, index);
}
// True when some token fed by `step` needs 3-D rotary positions or an image's features (the
// executor's multimodal path); false for text and for every decode row.
inline bool StepNeedsMultimodal(const SequenceStep& step) {
  const MultimodalPrompt* mm = step.multimodal;
  if (mm == nullptr || step.start_position >= mm->prompt_len) return false;
  const int64_t end = step.start_position + static_cast<int64_t>(step.tokens.size());
  for (size_t k = 0; k < mm->images.size(); ++k) {
    const int64_t begin = mm->image_offsets[k];
    if (begin < end && begin + mm->images[k].num_tokens > step.start_position) return true;
  }
  for (int64_t i = step.start_position; i < end; ++i) {
    if (!mm->IsPlain(i)) return true;
  }
  return false;
}

struct StepResult {
  // One entry per SequenceStep, same order: the sampled id, or -1 where sample was false.
  std::vector<int32_t> next_tokens;
  // Raw fp32 logits of the first sampled position, filled only when asked for (tests, CLI).
  std::vector<std::vector<float>> logits;
  // Of the Step call's time, how long the host waited for an accelerator's results (microseconds;
  // 0 where the model runs on the host). The rest of the call is host work: the engine's step
  // phase metrics (EngineStats) tell GPU time from host time with it.
  double device_wait_us = 0;
  // The accelerator's own timing of the step (its events, microseconds): from its first to its last
  // piece of device work, and the device's idle time from the end of the step before to this
  // step's start. -1 where not timed (a CPU, the first step).
  double device_busy_us = -1;
  double device_idle_us = -1;
};

// Called only from the engine thread, one Step at a time. The full list of what a SequenceStep
// promises and what the engine expects back is in runtime/engine/README.md.
// True when some row of `batch` feeds kTokenFromPreviousStep.
bool FeedsPreviousStepIds(const std::vector<SequenceStep>& batch);
// `batch` with every kTokenFromPreviousStep replaced by id_of(sequence_id), in the row's tokens and
// as its history's last entry (a copy of the history, kept in `histories` while the batch is
// used). INTERNAL naming the sequence where id_of answers < 0 (the previous step sampled none).
absl::StatusOr<std::vector<SequenceStep>> ResolvePreviousStepIds(
    const std::vector<SequenceStep>& batch, const std::function<int32_t(int64_t sequence_id)>& id_of,
    std::vector<std::unique_ptr<std::vector<int32_t>>>* histories);

class StepExecutor {
 public:
  virtual ~StepExecutor() = default;
  virtual int32_t block_size() const = 0;  // tokens per KV block
  virtual int32_t num_blocks() const = 0;  // KV blocks in the pool
  // Runs one forward pass over `batch` writing KV into the given blocks.
  // RESOURCE_EXHAUSTED means out of device memory: nothing was committed and the engine may
  // retry with a smaller batch (empty allocator caches before returning it). Any other error
  // fails the requests of this batch. Don't throw: exceptions become INTERNAL for the batch.
  virtual absl::StatusOr<StepResult> Step(const std::vector<SequenceStep>& batch) = 0;
  // The engine is done with `sequence_id` for now (finished, failed, cancelled or preempted):
  // per-sequence state the executor keeps across steps (a multimodal prompt's encoded images) may
  // go. A preempted sequence comes back with its prefill from position 0.
  virtual void ReleaseSequence(int64_t sequence_id) { (void)sequence_id; }

  // Overlapped steps: Launch starts `batch` and may return before its ids exist; Collect returns
  // the result of the oldest launched step not collected yet (FAILED_PRECONDITION when there is
  // none). The engine launches step N+1 before it collects step N (so the host plans and stages
  // N+1 while the accelerator runs N), never has more than two steps uncollected, and launches
  // no step while two are. A decode row of step N+1 whose sequence sampled in step N feeds
  // kTokenFromPreviousStep: the executor takes N's id for it (on the device, where it can). An
  // error from Launch means the step did not start (nothing of it was committed, as for Step);
  // the engine then collects the step before it. Launch's default runs Step at once with those
  // tokens replaced by the previous result's ids (and the history's last entry with them), so
  // every executor is correct under overlap; an accelerator's executor overrides both to
  // overlap for real. Called only from the engine thread.
  virtual absl::Status Launch(const std::vector<SequenceStep>& batch);
  virtual absl::StatusOr<StepResult> Collect();

 private:
  // The default Launch/Collect: results of launched steps not yet collected, and the ids each
  // sequence sampled in the step launched last (for its kTokenFromPreviousStep).
  struct LaunchedStep {
    StepResult result;  // a step whose Step failed was never launched
    std::vector<int64_t> sequence_ids;
  };
  std::deque<LaunchedStep> launched_;
};

}  // namespace glmserve
