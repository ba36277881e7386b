#include "runtime/step_executor.h"

#include <unordered_map>

#include "absl/strings/str_cat.h"

namespace glmserve {

bool FeedsPreviousStepIds(const std::vector<SequenceStep>& batch) {
  for (const SequenceStep& s : batch) {
    if (!s.tokens.empty() && s.tokens.back() == kTokenFromPreviousStep) return true;
  }
  return false;
}

absl::StatusOr<std::vector<SequenceStep>> ResolvePreviousStepIds(
    const std::vector<SequenceStep>& batch, const std::function<int32_t(int64_t sequence_id)>& id_of,
    std::vector<std::unique_ptr<std::vector<int32_t>>>* histories) {
  std::vector<SequenceStep> resolved = batch;
  for (SequenceStep& s : resolved) {
    if (s.tokens.empty() || s.tokens.back() != kTokenFromPreviousStep) continue;
    const int32_t id = id_of(s.sequence_id);
    if (id < 0) {
      return absl::InternalError(absl::StrCat("executor: sequence ", s.sequence_id,
                                              " feeds the previous step's id, but the step launched before "
                                              "sampled none for it"));
    }
    s.tokens.back() = id;
    if (s.history != nullptr && !s.history->empty() && s.history->back() == kTokenFromPreviousStep) {
      histories->push_back(std::make_unique<std::vector<int32_t>>(*s.history));
      histories->back()->back() = id;
      s.history = histories->back().get();
    }
  }
  return resolved;
}

absl::Status StepExecutor::Launch(const std::vector<SequenceStep>& batch) {
  if (launched_.size() >= 2) {
    return absl::FailedPreconditionError("executor: Launch with two launched steps not collected");
  }
  absl::StatusOr<StepResult> result;
  if (FeedsPreviousStepIds(batch)) {
    // The ids the step launched last sampled, by sequence (it ran at its Launch, so they exist).
    std::unordered_map<int64_t, int32_t> previous;
    if (!launched_.empty()) {
      const LaunchedStep& last = launched_.back();
      const std::vector<int32_t>& ids = last.result.next_tokens;
      for (size_t i = 0; i < last.sequence_ids.size() && i < ids.size(); ++i) {
        if (ids[i] >= 0) previous[last.sequence_ids[i]] = ids[i];
      }
    }
    std::vector<std::unique_ptr<std::vector<int32_t>>> histories;
    absl::StatusOr<std::vector<SequenceStep>> resolved = ResolvePreviousStepIds(
        batch,
        [&previous](int64_t sequence_id) {
          auto it = previous.find(sequence_id);
          return it == previous.end() ? -1 : it->second;
        },
        &histories);
    if (!resolved.ok()) return resolved.status();
    result = Step(*resolved);
  } else {
    result = Step(batch);
  }
  if (!result.ok()) return result.status();  // not started: nothing to collect
  LaunchedStep step;
  step.result = std::move(*result);
  step.sequence_ids.reserve(batch.size());
  for (const SequenceStep& s : batch) step.sequence_ids.push_back(s.sequence_id);
  launched_.push_back(std::move(step));
  return absl::OkStatus();
}

absl::StatusOr<StepResult> StepExecutor::Collect() {
  if (launched_.empty()) return absl::FailedPreconditionError("executor: Collect with no launched step");
  StepResult result = std::move(launched_.front().result);
  launched_.pop_front();
  return result;
}

}  // namespace glmserve
