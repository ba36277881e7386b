// Streaming detokenization: text deltas that never split a UTF-8 character.
#ifndef GLMSERVE_RUNTIME_TOKENIZER_STREAM_DECODER_H_
#define GLMSERVE_RUNTIME_TOKENIZER_STREAM_DECODER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/tokenizer/tokenizer.h"

namespace glmserve::tokenizer {

// Feed ids as they are generated; each call returns the new text that is complete. Bytes of a
// character still being produced (a multi-byte sequence split across tokens) are held back until
// the sequence completes; invalid bytes become U+FFFD, so every delta is valid UTF-8 and the
// concatenated deltas + Finish() equal Decode(all ids). Not thread-safe (one per request).
class StreamDecoder {
 public:
  // skip_special_tokens: special ids (e.g. <|user|>, <|endoftext|>) produce no text, as with
  // HF's decode(skip_special_tokens=True); the server's response text uses this.
  explicit StreamDecoder(const Tokenizer* tokenizer, bool skip_special_tokens = false)
      : tokenizer_(tokenizer), skip_special_(skip_special_tokens) {}
  std::string Add(int32_t id);
  std::string Add(const std::vector<int32_t>& ids);
  // Flushes held-back bytes (an incomplete sequence at the end becomes U+FFFD).
  std::string Finish();

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_;
  std::string pending_;
  Tokenizer::StreamState state_;
};

}  // namespace glmserve::tokenizer

#endif  // GLMSERVE_RUNTIME_TOKENIZER_STREAM_DECODER_H_
