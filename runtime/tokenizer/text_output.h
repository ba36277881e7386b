// Response text for one request: streaming deltas that never split a UTF-8 character, with stop
// strings (generation ends at the first occurrence; the stop string itself is not in the text).
#ifndef GLMSERVE_RUNTIME_TOKENIZER_TEXT_OUTPUT_H_
#define GLMSERVE_RUNTIME_TOKENIZER_TEXT_OUTPUT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/tokenizer/stream_decoder.h"
#include "runtime/tokenizer/tokenizer.h"

namespace glmserve::tokenizer {

// Not thread-safe: fed from one thread (the engine's callbacks run in order).
class TextOutput {
 public:
  // Special tokens produce no text, nor do `stop_ids` (the ids that end generation: the one that
  // does is a delimiter, as a stop string is, and is left out of the text as vLLM does; the output
  // ids keep it). Empty stop strings are ignored. Stop strings end the text only once `min_ids`
  // ids have come (min_new_tokens: the engine holds stop ids that long, vLLM's min_tokens holds
  // both).
  TextOutput(const Tokenizer* tokenizer, std::vector<std::string> stop, std::vector<int32_t> stop_ids = {},
             size_t min_ids = 0);

  // Feeds newly generated ids. Returns how many of them belong to the output (all, or up to and
  // including the id that completed a stop string; 0 once stopped) and appends the text that is
  // now final to *delta. Text that could still be the start of a stop string is held back.
  size_t Add(const std::vector<int32_t>& ids, std::string* delta);
  // End of generation: returns the rest of the text (held-back bytes; "" after a stop). A stop
  // string the flushed bytes complete cuts the text there and sets stopped().
  std::string Finish();

  bool stopped() const { return stopped_; }
  size_t kept_ids() const { return kept_ids_; }
  // Everything emitted so far (after Finish(): the whole response text).
  std::string text() const { return all_.substr(0, emitted_); }

 private:
  // Where the earliest stop string starts in the text not yet emitted (npos: none).
  size_t EarliestStop() const;

  StreamDecoder decoder_;
  std::vector<std::string> stop_;
  std::vector<int32_t> stop_ids_;
  size_t min_ids_ = 0;
  size_t min_text_end_ = 0;  // bytes of all_ the first min_ids_ ids decoded to
  std::string all_;          // decoded text so far
  size_t emitted_ = 0;       // bytes of all_ handed out
  size_t kept_ids_ = 0;
  bool stopped_ = false;
  bool finished_ = false;
};

}  // namespace glmserve::tokenizer

#endif  // GLMSERVE_RUNTIME_TOKENIZER_TEXT_OUTPUT_H_
