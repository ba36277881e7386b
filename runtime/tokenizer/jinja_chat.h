// A checkpoint's chat template run by a Jinja engine (third_party/minja), for the templates the
// built-in renderers do not recognize (GLM-4-0414, GLM-Z1, edited or fine-tuned templates): the
// text transformers' apply_chat_template(messages, tokenize=False, add_generation_prompt=...) gives,
// byte for byte on the templates in tests/fixtures/chat_templates (README.md there).
//
// As transformers configures Jinja: trim_blocks and lstrip_blocks on, keep_trailing_newline off;
// `tojson` is Python's json.dumps (ensure_ascii off unless asked, indent, separators, sort_keys),
// `strftime_now(format)` the local time, `raise_exception(msg)` fails the render with msg; the
// variables are `messages` (role and content strings), `tools` and `documents` (None),
// `add_generation_prompt` and the tokenizer's named special tokens (tokenizer_config.json's
// top-level "*_token" keys: eos_token, pad_token, ...; an absent one renders empty, as in Jinja).
//
// A bad checkpoint template never takes the process down: over kMaxChatTemplateBytes, brackets or
// blocks nested past kMaxChatTemplateNesting (parsing is quadratic in depth) or a parse error are
// refused when the template is loaded; a render that raises, recurses past minja's depth limit
// (a macro calling itself) or runs out of memory is an error for that request.
#ifndef GLMSERVE_RUNTIME_TOKENIZER_JINJA_CHAT_H_
#define GLMSERVE_RUNTIME_TOKENIZER_JINJA_CHAT_H_

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/tokenizer/tokenizer.h"

namespace glmserve::tokenizer {

inline constexpr size_t kMaxChatTemplateBytes = size_t{256} << 10;
inline constexpr int kMaxChatTemplateNesting = 200;

class JinjaChatTemplate {
 public:
  // Parses `source`. `where` names the template in messages (e.g. "DIR/tokenizer_config.json's
  // chat_template"); `variables`: the special tokens' names and texts. INVALID_ARGUMENT: the
  // template is too large, too deeply nested or does not parse (minja's row and column).
  static absl::StatusOr<std::unique_ptr<JinjaChatTemplate>> Create(std::string_view source, std::string where,
                                                                   std::map<std::string, std::string> variables);
  ~JinjaChatTemplate();

  // Role / content messages (parts already joined: Tokenizer::ApplyChatTemplate). INVALID_ARGUMENT
  // with the template's own words when it raises (e.g. a role it does not take).
  absl::StatusOr<std::string> Render(const std::vector<Message>& messages, bool add_generation_prompt) const;

  // Python's json.dumps(value, ensure_ascii, indent, separators, sort_keys) of a JSON text, as the
  // templates' `tojson` gives it; indent < 0 is None. For tests.
  static std::string PythonJsonDumps(std::string_view json_text, bool ensure_ascii, int indent,
                                     std::string_view item_separator, std::string_view key_separator, bool sort_keys);

 private:
  struct Parsed;
  JinjaChatTemplate() = default;
  // Render's work, on the calling thread (Render runs it on a thread with a large stack).
  absl::StatusOr<std::string> RenderHere(const std::vector<Message>& messages, bool add_generation_prompt) const;
  std::unique_ptr<Parsed> parsed_;
  std::string where_;
  std::map<std::string, std::string> variables_;
};

}  // namespace glmserve::tokenizer

#endif  // GLMSERVE_RUNTIME_TOKENIZER_JINJA_CHAT_H_
