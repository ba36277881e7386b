#include "runtime/step_executor.h"

#include <unordered_map>

#include "absl/strings/str_cat.h"

namespace glmserve {

absl::Status StepExecutor::Launch(const std::vector<SequenceStep>& batch) {
  if (launched_.size() >= 2) {
    return absl::FailedPreconditionError("executor: Launch with two launched steps not collected");
  }
  const std::vector<SequenceStep>* run = &batch;
  bool from_previous = false;
  for (const SequenceStep& s : batch) from_previous |= !s.tokens.empty() && s.tokens.back() == kTokenFromPreviousStep;
  if (from_previous) {
    // The ids the step launched last sampled, by sequence (it ran at its Launch, so they exist).
    std::unordered_map<int64_t, int32_t> previous;
    if (!launched_.empty()) {
      const LaunchedStep& last = launched_.back();
      const std::vector<int32_t>& ids = last.result.next_tokens;
      for (size_t i = 0; i < last.sequence_ids.size() && i < ids.size(); ++i) {
        if (ids[i] >= 0) previous[last.sequence_ids[i]] = ids[i];
      }
    }
    resolved_batch_ = batch;
    resolved_histories_.clear();
    for (SequenceStep& s : resolved_batch_) {
      if (s.tokens.size() != 1 || s.tokens[0] != kTokenFromPreviousStep) continue;
      auto it = previous.find(s.sequence_id);
      if (it == previous.end()) {
        return absl::InternalError(absl::StrCat("executor: sequence ", s.sequence_id,
                                                " feeds the previous step's id, but the step launched before "
                                                "sampled none for it"));
      }
      s.tokens[0] = it->second;
      if (s.history != nullptr && !s.history->empty() && s.history->back() == kTokenFromPreviousStep) {
        resolved_histories_.push_back(std::make_unique<std::vector<int32_t>>(*s.history));
        resolved_histories_.back()->back() = it->second;
        s.history = resolved_histories_.back().get();
      }
    }
    run = &resolved_batch_;
  }
  absl::StatusOr<StepResult> result = Step(*run);
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
