#include "runtime/tokenizer/chat_template.h"

#include "absl/strings/str_cat.h"
#include "runtime/shown_value.h"

namespace glmserve::tokenizer {
namespace {

// zai-org/GLM-4.1V-9B-Thinking's chat template (hub revision 3c1471e5; provenance in
// scripts/make_glm4v_chat_fixtures.py, which writes it into the test fixture). Recognized up to
// Jinja-insignificant whitespace (NormalizeJinjaWhitespace); rendered by RenderGlm4vChat.
constexpr std::string_view kGlm4vTemplate = R"jinja([gMASK]<sop>
{%- for msg in messages %}
    {%- if msg.role == 'system' %}
<|system|>
{{ msg.content }}
    {%- elif msg.role == 'user' %}
<|user|>{{ '\n' }}

        {%- if msg.content is string %}
{{ msg.content }}
        {%- else %}
            {%- for item in msg.content %}
                {%- if item.type == 'video' or 'video' in item %}
<|begin_of_video|><|video|><|end_of_video|>
                {%- elif item.type == 'image' or 'image' in item %}
<|begin_of_image|><|image|><|end_of_image|>
                {%- elif item.type == 'text' %}
{{ item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
    {%- elif msg.role == 'assistant' %}
        {%- if msg.metadata %}
<|assistant|>{{ msg.metadata }}
{{ msg.content }}
        {%- else %}
<|assistant|>
{{ msg.content }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{% if add_generation_prompt %}<|assistant|>
{% endif %})jinja";

// Special tokens that stand for an image or video in GLM-4.1V prompts. Written as text they would
// be parsed to their ids (as transformers does) and announce media that is not there.
constexpr std::string_view kVisionTokens[] = {"<|begin_of_image|>", "<|end_of_image|>", "<|image|>",
                                              "<|begin_of_video|>", "<|end_of_video|>", "<|video|>"};

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// One piece of Jinja source: literal text, or a tag ({{ }}, {% %}, {# #}) with its modifiers.
struct JinjaPiece {
  bool is_tag = false;
  char kind = 0;             // '{' expression, '%' statement, '#' comment
  char left = 0, right = 0;  // '-', '+' or 0 (the modifier after the opening / before the closing)
  std::string text;          // literal text, or the tag body without delimiters and modifiers
};

std::vector<JinjaPiece> SplitJinja(std::string_view src) {
  std::vector<JinjaPiece> pieces;
  size_t i = 0;
  while (i < src.size()) {
    size_t open = i;
    while (open + 1 < src.size() &&
           !(src[open] == '{' && (src[open + 1] == '{' || src[open + 1] == '%' || src[open + 1] == '#'))) {
      ++open;
    }
    if (open + 1 >= src.size()) open = src.size();
    if (open > i) pieces.push_back({false, 0, 0, 0, std::string(src.substr(i, open - i))});
    if (open >= src.size()) break;
    const char kind = src[open + 1];
    const char close0 = kind == '{' ? '}' : kind;
    // Find the closing delimiter; string literals inside expressions and statements may hold it.
    size_t k = open + 2;
    char quote = 0;
    for (; k + 1 < src.size(); ++k) {
      if (quote) {
        if (src[k] == '\\')
          ++k;
        else if (src[k] == quote)
          quote = 0;
      } else if (kind != '#' && (src[k] == '\'' || src[k] == '"')) {
        quote = src[k];
      } else if (src[k] == close0 && src[k + 1] == '}') {
        break;
      }
    }
    if (k + 1 >= src.size()) {  // unterminated: keep the rest as text (such a template matches nothing known)
      pieces.push_back({false, 0, 0, 0, std::string(src.substr(open))});
      break;
    }
    JinjaPiece tag{true, kind, 0, 0, std::string(src.substr(open + 2, k - open - 2))};
    if (!tag.text.empty() && (tag.text.front() == '-' || tag.text.front() == '+')) {
      tag.left = tag.text.front();
      tag.text.erase(0, 1);
    }
    if (!tag.text.empty() && (tag.text.back() == '-' || tag.text.back() == '+')) {
      tag.right = tag.text.back();
      tag.text.pop_back();
    }
    pieces.push_back(std::move(tag));
    i = k + 2;
  }
  return pieces;
}

// Tag body with whitespace runs outside string literals collapsed to one space, ends trimmed.
std::string CollapseTagBody(std::string_view body) {
  std::string out;
  char quote = 0;
  bool pending_space = false;
  for (size_t k = 0; k < body.size(); ++k) {
    const char c = body[k];
    if (quote) {
      out.push_back(c);
      if (c == '\\' && k + 1 < body.size())
        out.push_back(body[++k]);
      else if (c == quote)
        quote = 0;
      continue;
    }
    if (IsSpace(c)) {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space) out.push_back(' ');
    pending_space = false;
    if (c == '\'' || c == '"') quote = c;
    out.push_back(c);
  }
  return out;
}

// Appends one message text, refusing vision special tokens written as text.
absl::Status AppendGlm4vText(std::string_view text, std::string_view path, std::string* out) {
  for (std::string_view t : kVisionTokens) {
    if (text.find(t) != std::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat(std::string(path), ": text contains '", std::string(t),
                                                     "', a GLM-4.1V vision token; send images as image parts"));
    }
  }
  out->append(text);
  return absl::OkStatus();
}

}  // namespace

bool IsKnownGlm4Template(std::string_view tmpl) {
  // The template of the bundled model and of GLM-4 exports that carry the minimal form, compared
  // as Jinja renders them (NormalizeJinjaWhitespace: whitespace in tags, trim_blocks, lstrip_blocks);
  // the text between tags must be the minimal form's (a "\n" more or less is another prompt: such a
  // template is not recognized, and serve says so).
  static const std::string kMinimal = NormalizeJinjaWhitespace(
      "[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
      "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}");
  if (tmpl.find("|>\n{{") == std::string_view::npos) return false;
  std::string s = NormalizeJinjaWhitespace(tmpl);
  std::string alt = s;
  for (size_t p; (p = alt.find("message.role")) != std::string::npos;) alt.replace(p, 12, "message['role']");
  for (size_t p; (p = alt.find("message.content")) != std::string::npos;) alt.replace(p, 15, "message['content']");
  return s == kMinimal || alt == kMinimal;
}

bool IsKnownChatGlm3Template(std::string_view tmpl) { return tmpl.find("[gMASK]sop") != std::string_view::npos; }

std::string NormalizeJinjaWhitespace(std::string_view tmpl) {
  // Jinja drops one trailing newline of the source (keep_trailing_newline is off).
  if (!tmpl.empty() && tmpl.back() == '\n')
    tmpl.remove_suffix(tmpl.size() >= 2 && tmpl[tmpl.size() - 2] == '\r' ? 2 : 1);
  std::vector<JinjaPiece> pieces = SplitJinja(tmpl);
  for (size_t p = 0; p < pieces.size(); ++p) {
    const JinjaPiece& tag = pieces[p];
    if (!tag.is_tag) continue;
    const bool block = tag.kind != '{';  // trim_blocks / lstrip_blocks apply to statements and comments
    if (p > 0 && !pieces[p - 1].is_tag) {
      std::string& before = pieces[p - 1].text;
      if (tag.left == '-') {
        while (!before.empty() && IsSpace(before.back())) before.pop_back();
      } else if (block && tag.left != '+') {
        // lstrip_blocks: spaces and tabs between the start of the line and the tag.
        size_t k = before.size();
        while (k > 0 && (before[k - 1] == ' ' || before[k - 1] == '\t')) --k;
        if (k > 0 ? before[k - 1] == '\n' : p == 1) before.erase(k);
      }
    }
    if (p + 1 < pieces.size() && !pieces[p + 1].is_tag) {
      std::string& after = pieces[p + 1].text;
      if (tag.right == '-') {
        size_t k = 0;
        while (k < after.size() && IsSpace(after[k])) ++k;
        after.erase(0, k);
      } else if (block && tag.right != '+') {
        // trim_blocks: the first newline after a block tag.
        if (after.compare(0, 1, "\n") == 0)
          after.erase(0, 1);
        else if (after.compare(0, 2, "\r\n") == 0)
          after.erase(0, 2);
      }
    }
  }
  std::string out;
  for (const JinjaPiece& piece : pieces) {
    if (!piece.is_tag) {
      out += piece.text;
    } else if (piece.kind != '#') {  // comments output nothing
      absl::StrAppend(&out, piece.kind == '{' ? "{{" : "{%", CollapseTagBody(piece.text),
                      piece.kind == '{' ? "}}" : "%}");
    }
  }
  return out;
}

bool IsKnownGlm4vTemplate(std::string_view tmpl) {
  static const std::string* const kKnown = new std::string(NormalizeJinjaWhitespace(kGlm4vTemplate));
  return NormalizeJinjaWhitespace(tmpl) == *kKnown;
}

absl::Status ValidateRoles(const std::vector<Message>& messages) {
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& r = messages[i].role;
    if (r != "system" && r != "user" && r != "assistant" && r != "observation") {
      return absl::InvalidArgumentError(absl::StrCat("messages[", i, "].role: '", ShownValue(r),
                                                     "' is not one of system, user, assistant, observation"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<Message>> TextOnlyMessages(const std::vector<Message>& messages, Family family) {
  std::vector<Message> out = messages;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i].parts.empty()) continue;
    std::string text;
    for (size_t j = 0; j < out[i].parts.size(); ++j) {
      const MessagePart& part = out[i].parts[j];
      if (part.kind == MessagePart::Kind::kImage) {
        return absl::InvalidArgumentError(absl::StrCat("messages[", i, "].content[", j, "]: an image part, but this ",
                                                       std::string(FamilyName(family)),
                                                       " checkpoint's chat template is text-only (no image input)"));
      }
      text += part.text;
    }
    out[i].content = std::move(text);
    out[i].parts.clear();
  }
  return out;
}

absl::StatusOr<std::string> RenderGlm4vChat(const std::vector<Message>& messages, bool add_generation_prompt) {
  if (auto s = ValidateRoles(messages); !s.ok()) return s;
  std::string out = "[gMASK]<sop>";
  for (size_t i = 0; i < messages.size(); ++i) {
    const Message& m = messages[i];
    if (m.role == "observation") {
      return absl::InvalidArgumentError(absl::StrCat("messages[", i,
                                                     "].role: 'observation' has no turn in the GLM-4.1V chat template "
                                                     "(it renders system, user and assistant only)"));
    }
    absl::StrAppend(&out, "<|", m.role, "|>\n");
    if (m.parts.empty()) {
      if (auto s = AppendGlm4vText(m.content, absl::StrCat("messages[", i, "].content"), &out); !s.ok()) return s;
      continue;
    }
    for (size_t j = 0; j < m.parts.size(); ++j) {
      const MessagePart& part = m.parts[j];
      const std::string path = absl::StrCat("messages[", i, "].content[", j, "]");
      if (part.kind == MessagePart::Kind::kText) {
        if (auto s = AppendGlm4vText(part.text, path, &out); !s.ok()) return s;
      } else if (m.role != "user") {
        // The template prints a non-user message's content as it is: a list would come out as its
        // Python repr and the image would be lost.
        return absl::InvalidArgumentError(absl::StrCat(path, ": an image part in a '", m.role,
                                                       "' message; GLM-4.1V's chat template takes images in user "
                                                       "messages only"));
      } else {
        out += kGlm4vImagePlaceholder;
      }
    }
  }
  if (add_generation_prompt) out += "<|assistant|>\n";
  return out;
}

absl::StatusOr<std::string> RenderGlm4Chat(const std::vector<Message>& messages, bool add_generation_prompt) {
  if (auto s = ValidateRoles(messages); !s.ok()) return s;
  std::string out = "[gMASK]<sop>";
  for (const Message& m : messages) absl::StrAppend(&out, "<|", m.role, "|>\n", m.content);
  if (add_generation_prompt) out += "<|assistant|>";
  return out;
}

}  // namespace glmserve::tokenizer
