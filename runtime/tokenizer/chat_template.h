// Chat-template recognition: the known GLM templates are rendered in code; other templates run on
// the Jinja engine (jinja_chat.h; README.md).
#ifndef GLMSERVE_RUNTIME_TOKENIZER_CHAT_TEMPLATE_H_
#define GLMSERVE_RUNTIME_TOKENIZER_CHAT_TEMPLATE_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/tokenizer/tokenizer.h"

namespace glmserve::tokenizer {

// True when `tmpl` renders exactly as RenderGlm4Chat for plain role/content messages.
bool IsKnownGlm4Template(std::string_view tmpl);
// True when `tmpl` is ChatGLM3's template (rendered by ChatGLM3's build_chat_input rules).
bool IsKnownChatGlm3Template(std::string_view tmpl);
// True when `tmpl` is GLM-4.1V-9B-Thinking's template, up to whitespace that Jinja (as
// transformers configures it: trim_blocks, lstrip_blocks) does not output.
bool IsKnownGlm4vTemplate(std::string_view tmpl);

// "[gMASK]<sop>" + "<|role|>\ncontent" per message + "<|assistant|>" (when asked).
absl::StatusOr<std::string> RenderGlm4Chat(const std::vector<Message>& messages, bool add_generation_prompt);

// GLM-4.1V's template for role/content messages and content parts: "[gMASK]<sop>", then
// "<|system|>\n" / "<|user|>\n" / "<|assistant|>\n" + content per message (an image part of a
// user message: kGlm4vImagePlaceholder), then "<|assistant|>\n" when asked. Refusals:
// Tokenizer::ApplyChatTemplate's comment.
absl::StatusOr<std::string> RenderGlm4vChat(const std::vector<Message>& messages, bool add_generation_prompt);

// Roles every GLM chat format has a special token for.
absl::Status ValidateRoles(const std::vector<Message>& messages);

// `messages` with each message's text parts joined into `content`, for a text-only `family`; an
// image part is INVALID_ARGUMENT naming messages[i].content[j].
absl::StatusOr<std::vector<Message>> TextOnlyMessages(const std::vector<Message>& messages, Family family);

// Jinja source reduced to what matters for its output under trim_blocks + lstrip_blocks: the
// whitespace that `-` modifiers, trim_blocks and lstrip_blocks remove is removed, whitespace inside
// tags (outside string literals) is collapsed, one trailing newline of the source is dropped
// (keep_trailing_newline is off). Two templates with equal forms render identically.
std::string NormalizeJinjaWhitespace(std::string_view tmpl);

}  // namespace glmserve::tokenizer

#endif  // GLMSERVE_RUNTIME_TOKENIZER_CHAT_TEMPLATE_H_
