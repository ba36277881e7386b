#include "runtime/tokenizer/text_output.h"

#include <algorithm>

namespace glmserve::tokenizer {

TextOutput::TextOutput(const Tokenizer* tokenizer, std::vector<std::string> stop, std::vector<int32_t> stop_ids,
                       size_t min_ids)
    : decoder_(tokenizer, /*skip_special_tokens=*/true), stop_ids_(std::move(stop_ids)), min_ids_(min_ids) {
  for (std::string& s : stop) {
    if (!s.empty()) stop_.push_back(std::move(s));
  }
}

size_t TextOutput::Add(const std::vector<int32_t>& ids, std::string* delta) {
  if (stopped_ || finished_) return 0;
  size_t kept = 0;
  for (int32_t id : ids) {
    ++kept;
    ++kept_ids_;
    if (std::find(stop_ids_.begin(), stop_ids_.end(), id) == stop_ids_.end()) all_ += decoder_.Add(id);
    if (kept_ids_ == min_ids_) min_text_end_ = all_.size();
    const size_t stop_at = EarliestStop();
    if (stop_at != std::string::npos) {
      delta->append(all_, emitted_, stop_at - emitted_);
      all_.resize(stop_at);
      emitted_ = stop_at;
      stopped_ = true;
      return kept;
    }
    // Hold back the longest suffix that is a proper prefix of some stop string.
    size_t hold = 0;
    for (const std::string& s : stop_) {
      for (size_t k = std::min(s.size() - 1, all_.size() - emitted_); k > hold; --k) {
        if (all_.compare(all_.size() - k, k, s, 0, k) == 0) {
          hold = k;
          break;
        }
      }
    }
    const size_t safe = all_.size() - hold;
    if (safe > emitted_) {
      delta->append(all_, emitted_, safe - emitted_);
      emitted_ = safe;
    }
  }
  return kept;
}

size_t TextOutput::EarliestStop() const {
  // As vLLM's min_tokens: only once more than min_ids ids have come, and only a stop string that
  // ends in their text (not one the first min_ids ids completed, maybe still held back).
  if (kept_ids_ <= min_ids_) return std::string::npos;
  // Emitted text never holds the start of a possible stop string (Add holds such a suffix back).
  size_t stop_at = std::string::npos;
  for (const std::string& s : stop_) {
    const size_t ends_past_min = min_text_end_ + 1 > s.size() ? min_text_end_ + 1 - s.size() : 0;
    const size_t p = all_.find(s, std::max(emitted_, ends_past_min));
    if (p != std::string::npos) stop_at = std::min(stop_at, p);
  }
  return stop_at;
}

std::string TextOutput::Finish() {
  if (stopped_ || finished_) return "";
  finished_ = true;
  all_ += decoder_.Finish();
  // The flush can complete a stop string: held-back bytes of a character cut short become U+FFFD.
  const size_t stop_at = EarliestStop();
  if (stop_at != std::string::npos) {
    all_.resize(stop_at);
    stopped_ = true;
  }
  std::string rest = all_.substr(emitted_);
  emitted_ = all_.size();
  return rest;
}

}  // namespace glmserve::tokenizer
