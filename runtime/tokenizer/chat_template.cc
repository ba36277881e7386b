#include "runtime/tokenizer/chat_template.h"

#include "absl/strings/str_cat.h"

namespace glmserve::tokenizer {
namespace {

std::string StripSpace(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') out.push_back(c);
  }
  return out;
}

}  // namespace

bool IsKnownGlm4Template(std::string_view tmpl) {
  // The template of the bundled model and of GLM-4 exports that carry the minimal form; whitespace
  // inside {% %} tags is ignored, but the literal "\n" after the role must be present.
  static const std::string kMinimal = StripSpace(
      "[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
      "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}");
  if (tmpl.find("|>\n{{") == std::string_view::npos) return false;
  std::string s = StripSpace(tmpl);
  std::string alt = s;
  for (size_t p; (p = alt.find("message.role")) != std::string::npos;) alt.replace(p, 12, "message['role']");
  for (size_t p; (p = alt.find("message.content")) != std::string::npos;) alt.replace(p, 15, "message['content']");
  return s == kMinimal || alt == kMinimal;
}

bool IsKnownChatGlm3Template(std::string_view tmpl) { return tmpl.find("[gMASK]sop") != std::string_view::npos; }

absl::Status ValidateRoles(const std::vector<Message>& messages) {
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& r = messages[i].role;
    if (r != "system" && r != "user" && r != "assistant" && r != "observation") {
      return absl::InvalidArgumentError(
          absl::StrCat("messages[", i, "].role: '", r, "' is not one of system, user, assistant, observation"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> RenderGlm4Chat(const std::vector<Message>& messages, bool add_generation_prompt) {
  if (auto s = ValidateRoles(messages); !s.ok()) return s;
  std::string out = "[gMASK]<sop>";
  for (const Message& m : messages) absl::StrAppend(&out, "<|", m.role, "|>\n", m.content);
  if (add_generation_prompt) out += "<|assistant|>";
  return out;
}

}  // namespace glmserve::tokenizer
