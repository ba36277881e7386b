// Regex pre-tokenization (HF Split / ByteLevel(use_regex) / tiktoken pat_str) on RE2.
#ifndef GLMSERVE_RUNTIME_TOKENIZER_PRETOKENIZER_H_
#define GLMSERVE_RUNTIME_TOKENIZER_PRETOKENIZER_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace re2 {
class RE2;
}

namespace glmserve::tokenizer {

// GPT-2's pattern (HF ByteLevel with use_regex=true).
extern const char kGpt2Pattern[];
// GLM-4-9B's tiktoken pattern (also the Split regex of GLM-4-9B-chat-hf's tokenizer.json).
extern const char kGlm4Pattern[];

// Splits text into pieces with a tokenizer regex; unmatched gaps are pieces too (HF "Isolated").
// RE2 has no lookahead: the only one these patterns use is the trailing `\s+(?!\S)|\s+`, which is
// emulated (see README.md). `\s`/`\S` are rewritten to Unicode White_Space, as the reference
// engines (Oniguruma in HF tokenizers, fancy-regex in tiktoken) interpret them.
class RegexSplitter {
 public:
  static absl::StatusOr<std::unique_ptr<RegexSplitter>> Create(std::string_view pattern);
  ~RegexSplitter();
  void Split(std::string_view text, std::vector<std::string_view>* pieces) const;

 private:
  RegexSplitter() = default;
  std::unique_ptr<re2::RE2> re_;    // head|\s+  (or the whole pattern if no lookahead)
  std::unique_ptr<re2::RE2> head_;  // the alternatives before \s+(?!\S)
};

// Unicode White_Space.
bool IsUnicodeSpace(uint32_t cp);
// Decodes one code point at s[i] (invalid: the byte itself, length 1).
uint32_t DecodeUtf8(std::string_view s, size_t i, size_t* len);

}  // namespace glmserve::tokenizer

#endif  // GLMSERVE_RUNTIME_TOKENIZER_PRETOKENIZER_H_
