#include "runtime/tokenizer/stream_decoder.h"

namespace glmserve::tokenizer {

std::string StreamDecoder::Add(int32_t id) {
  if (skip_special_ && tokenizer_->IsSpecial(id)) return "";
  pending_ += tokenizer_->StreamBytes(id, &state_);
  const size_t n = CompleteUtf8Prefix(pending_);
  std::string out = SanitizeUtf8(std::string_view(pending_).substr(0, n), tokenizer_->replaces_each_invalid_byte());
  pending_.erase(0, n);
  return out;
}

std::string StreamDecoder::Add(const std::vector<int32_t>& ids) {
  std::string out;
  for (int32_t id : ids) out += Add(id);
  return out;
}

std::string StreamDecoder::Finish() {
  std::string out = SanitizeUtf8(pending_, tokenizer_->replaces_each_invalid_byte());
  pending_.clear();
  return out;
}

}  // namespace glmserve::tokenizer
