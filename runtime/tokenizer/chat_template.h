// Chat-template recognition. There is no maintained C++ Jinja engine in Debian 12, so glmserve
// renders the GLM family formats in code and recognizes the known GLM templates (README.md).
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

// "[gMASK]<sop>" + "<|role|>\ncontent" per message + "<|assistant|>" (when asked).
absl::StatusOr<std::string> RenderGlm4Chat(const std::vector<Message>& messages, bool add_generation_prompt);

// Roles every GLM chat format has a special token for.
absl::Status ValidateRoles(const std::vector<Message>& messages);

}  // namespace glmserve::tokenizer

#endif  // GLMSERVE_RUNTIME_TOKENIZER_CHAT_TEMPLATE_H_
