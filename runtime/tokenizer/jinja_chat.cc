#include "runtime/tokenizer/jinja_chat.h"

#include <pthread.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <exception>
#include <functional>
#include <iomanip>
#include <new>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "runtime/tokenizer/jinja_filters.h"
#include "runtime/tokenizer/minja_config.h"

namespace glmserve::tokenizer {
namespace {

using ordered_json = nlohmann::ordered_json;

// Errors from minja can repeat the location at every level of a deep render: the first part says it.
std::string Shorten(std::string message) {
  constexpr size_t kMax = 600;
  if (message.size() > kMax) message = absl::StrCat(message.substr(0, kMax), "...");
  return message;
}

// ---- Python's json.dumps, as transformers' `tojson` filter calls it

struct DumpOptions {
  bool ensure_ascii = false;
  int indent = -1;  // None
  std::string item_separator = ", ";
  std::string key_separator = ": ";
  bool sort_keys = false;
};

void DumpString(const std::string& s, const DumpOptions& o, std::string* out) {
  out->push_back('"');
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const char* escaped = nullptr;
    switch (c) {
      case '"':
        escaped = "\\\"";
        break;
      case '\\':
        escaped = "\\\\";
        break;
      case '\n':
        escaped = "\\n";
        break;
      case '\r':
        escaped = "\\r";
        break;
      case '\t':
        escaped = "\\t";
        break;
      case '\b':
        escaped = "\\b";
        break;
      case '\f':
        escaped = "\\f";
        break;
      default:
        break;
    }
    if (escaped != nullptr) {
      out->append(escaped);
      ++i;
      continue;
    }
    char buffer[16];
    if (c < 0x20) {
      std::snprintf(buffer, sizeof buffer, "\\u%04x", c);
      out->append(buffer);
      ++i;
      continue;
    }
    if (c == 0x7F && o.ensure_ascii) {  // json.dumps escapes what is not ' '..'~'
      out->append("\\u007f");
      ++i;
      continue;
    }
    if (c < 0x80 || !o.ensure_ascii) {
      out->push_back(static_cast<char>(c));
      ++i;
      continue;
    }
    // nlohmann's strings are valid UTF-8: one code point, escaped as Python does (surrogate pairs).
    uint32_t cp = 0;
    int length = 1;
    if ((c & 0xE0) == 0xC0) {
      cp = c & 0x1F, length = 2;
    } else if ((c & 0xF0) == 0xE0) {
      cp = c & 0x0F, length = 3;
    } else {
      cp = c & 0x07, length = 4;
    }
    for (int k = 1; k < length && i + k < s.size(); ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    i += length;
    if (cp >= 0x10000) {
      cp -= 0x10000;
      std::snprintf(buffer, sizeof buffer, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
    } else {
      std::snprintf(buffer, sizeof buffer, "\\u%04x", cp);
    }
    out->append(buffer);
  }
  out->push_back('"');
}

void Dump(const ordered_json& j, const DumpOptions& o, int level, std::string* out) {
  auto newline = [&](int at) {
    out->push_back('\n');
    out->append(static_cast<size_t>(at) * static_cast<size_t>(o.indent), ' ');
  };
  if (j.is_object() || j.is_array()) {
    if (j.empty()) {
      out->append(j.is_object() ? "{}" : "[]");
      return;
    }
    std::vector<std::pair<std::string, const ordered_json*>> items;
    if (j.is_object()) {
      for (auto it = j.begin(); it != j.end(); ++it) items.emplace_back(it.key(), &it.value());
      if (o.sort_keys) {
        std::stable_sort(items.begin(), items.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      }
    } else {
      for (const ordered_json& v : j) items.emplace_back(std::string(), &v);
    }
    out->push_back(j.is_object() ? '{' : '[');
    bool first = true;
    for (const auto& [key, value] : items) {
      if (!first) out->append(o.item_separator);
      first = false;
      if (o.indent >= 0) newline(level + 1);
      if (j.is_object()) {
        DumpString(key, o, out);
        out->append(o.key_separator);
      }
      Dump(*value, o, level + 1, out);
    }
    if (o.indent >= 0) newline(level);
    out->push_back(j.is_object() ? '}' : ']');
  } else if (j.is_string()) {
    DumpString(j.get<std::string>(), o, out);
  } else if (j.is_number_float()) {
    const double d = j.get<double>();
    if (std::isnan(d)) {
      out->append("NaN");
    } else if (std::isinf(d)) {
      out->append(d > 0 ? "Infinity" : "-Infinity");
    } else {
      out->append(j.dump());
    }
  } else {
    out->append(j.dump());  // null, true / false, integers: JSON's and Python's spellings agree
  }
}

minja::Value MakeToJson() {
  return minja::Value::callable([](const std::shared_ptr<minja::Context>&, minja::ArgumentsValue& args) {
    if (args.args.empty()) throw std::runtime_error("tojson: no value given");
    DumpOptions o;
    minja::Value indent, separators;
    // transformers' tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
    if (args.args.size() > 1) o.ensure_ascii = args.args[1].to_bool();
    if (args.args.size() > 2) indent = args.args[2];
    for (auto& [name, value] : args.kwargs) {
      if (name == "indent") {
        indent = value;
      } else if (name == "ensure_ascii") {
        o.ensure_ascii = value.to_bool();
      } else if (name == "separators") {
        separators = value;
      } else if (name == "sort_keys") {
        o.sort_keys = value.to_bool();
      } else {
        throw std::runtime_error("tojson: unexpected keyword argument '" + name + "'");
      }
    }
    if (!indent.is_null()) o.indent = static_cast<int>(std::clamp<int64_t>(indent.get<int64_t>(), -1, 64));
    if (o.indent >= 0) o.item_separator = ",";  // json.dumps' default with an indent
    if (!separators.is_null()) {
      o.item_separator = separators.at(minja::Value(int64_t{0})).get<std::string>();
      o.key_separator = separators.at(minja::Value(int64_t{1})).get<std::string>();
    }
    std::string out;
    Dump(args.args[0].get<ordered_json>(), o, 0, &out);
    return minja::Value(out);
  });
}

minja::Value MakeStrftimeNow() {
  return minja::Value::callable([](const std::shared_ptr<minja::Context>&, minja::ArgumentsValue& args) {
    args.expectArgs("strftime_now", {1, 1}, {0, 0});
    const std::string format = args.args[0].get<std::string>();
    const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
    std::tm local{};
    localtime_r(&now, &local);
    std::ostringstream text;
    text << std::put_time(&local, format.c_str());
    return minja::Value(text.str());
  });
}

// The deepest nesting of brackets and of block tags in `source`. Parsing takes time quadratic in
// it (2,000 nested parentheses: 1 s; 2,000 nested ifs: 10 s), so a hostile template is refused
// before the parser sees it. Counted over the whole text: prose nests far less than the cap.
int NestingDepth(std::string_view source) {
  int brackets = 0, blocks = 0, deepest = 0;
  static constexpr std::string_view kOpeners[] = {"if", "for", "macro", "call", "filter", "raw", "generation"};
  for (size_t i = 0; i < source.size(); ++i) {
    const char c = source[i];
    if (c == '(' || c == '[' || c == '{') {
      ++brackets;
    } else if (c == ')' || c == ']' || c == '}') {
      brackets = std::max(0, brackets - 1);
    }
    if (c == '{' && i + 1 < source.size() && source[i + 1] == '%') {
      size_t k = i + 2;
      while (k < source.size() && (source[k] == '-' || source[k] == '+' || source[k] == ' ' || source[k] == '\t' ||
                                   source[k] == '\n' || source[k] == '\r')) {
        ++k;
      }
      std::string_view rest = source.substr(k);
      // Only the end tags of the counted blocks close one (an endset / endblock closed a block
      // never counted, and a template could nest past the cap unseen).
      const bool closing = rest.rfind("end", 0) == 0;
      if (closing) rest.remove_prefix(3);
      for (std::string_view opener : kOpeners) {
        if (rest.rfind(opener, 0) == 0 && rest.size() > opener.size() &&
            !std::isalnum(static_cast<unsigned char>(rest[opener.size()])) && rest[opener.size()] != '_') {
          blocks = closing ? std::max(0, blocks - 1) : blocks + 1;
          break;
        }
      }
    }
    deepest = std::max({deepest, brackets, blocks});
  }
  return deepest;
}

// Runs `work` on a thread of its own with a 256 MiB stack (reserved, touched only as used), and
// waits for it. std::regex (minja's tokenizer) recurses a frame a character of a long comment or
// string, and values nested deep recurse as they are printed or freed: a thread's usual 8 MiB
// ended the process at 40-60 KB of template. False if no thread could be started.
bool RunOnLargeStack(const std::function<void()>& work) {
  pthread_attr_t attr;
  if (pthread_attr_init(&attr) != 0) return false;
  pthread_attr_setstacksize(&attr, size_t{256} << 20);
  pthread_t thread;
  auto trampoline = [](void* arg) -> void* {
    (*static_cast<const std::function<void()>*>(arg))();
    return nullptr;
  };
  const bool started = pthread_create(&thread, &attr, trampoline, const_cast<std::function<void()>*>(&work)) == 0;
  pthread_attr_destroy(&attr);
  if (started) pthread_join(thread, nullptr);
  return started;
}

}  // namespace

struct JinjaChatTemplate::Parsed {
  std::shared_ptr<minja::TemplateNode> root;
};

JinjaChatTemplate::~JinjaChatTemplate() = default;

absl::StatusOr<std::unique_ptr<JinjaChatTemplate>> JinjaChatTemplate::Create(
    std::string_view source, std::string where, std::map<std::string, std::string> variables) {
  if (source.size() > kMaxChatTemplateBytes) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", source.size(), " bytes, over the ",
                                                   kMaxChatTemplateBytes, " a chat template may have"));
  }
  if (const int depth = NestingDepth(source); depth > kMaxChatTemplateNesting) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": brackets or blocks nested ", depth, " deep, over the ",
                                                   kMaxChatTemplateNesting, " a chat template may have"));
  }
  auto parsed = std::make_unique<Parsed>();
  // Jinja's lexer takes \r\n as a newline (trim_blocks removes it); minja only \n.
  const std::string text = absl::StrReplaceAll(absl::string_view(source.data(), source.size()), {{"\r\n", "\n"}});
  absl::Status status;
  const bool ran = RunOnLargeStack([&] {
    try {
      // As transformers configures Jinja for chat templates.
      parsed->root = minja::Parser::parse(text, minja::Options{/*trim_blocks=*/true,
                                                               /*lstrip_blocks=*/true,
                                                               /*keep_trailing_newline=*/false});
    } catch (const std::bad_alloc&) {
      status = absl::InvalidArgumentError(absl::StrCat(where, ": out of memory parsing it"));
    } catch (const std::exception& e) {
      status = absl::InvalidArgumentError(
          absl::StrCat(where, ": not a Jinja template glmserve can run: ", Shorten(e.what())));
    }
  });
  if (!ran) return absl::ResourceExhaustedError(absl::StrCat(where, ": no thread to parse it on"));
  if (!status.ok()) return status;
  std::unique_ptr<JinjaChatTemplate> t(new JinjaChatTemplate());
  t->parsed_ = std::move(parsed);
  t->where_ = std::move(where);
  t->variables_ = std::move(variables);
  return t;
}

absl::StatusOr<std::string> JinjaChatTemplate::Render(const std::vector<Message>& messages,
                                                      bool add_generation_prompt) const {
  if (messages.empty()) {  // transformers refuses it too
    return absl::InvalidArgumentError("messages: empty; the chat template needs at least one message");
  }
  absl::StatusOr<std::string> result;
  if (!RunOnLargeStack([&] { result = RenderHere(messages, add_generation_prompt); })) {
    return absl::ResourceExhaustedError(absl::StrCat(where_, ": no thread to render it on"));
  }
  return result;
}

absl::StatusOr<std::string> JinjaChatTemplate::RenderHere(const std::vector<Message>& messages,
                                                          bool add_generation_prompt) const {
  try {
    ordered_json vars = ordered_json::object();
    // The special tokens first: transformers passes them beside the fixed names, which win.
    for (const auto& [name, text] : variables_) vars[name] = text;
    ordered_json list = ordered_json::array();
    for (const Message& m : messages) list.push_back(ordered_json{{"role", m.role}, {"content", m.content}});
    vars["messages"] = std::move(list);
    vars["tools"] = nullptr;
    vars["documents"] = nullptr;
    vars["add_generation_prompt"] = add_generation_prompt;
    // Filters in a scope of their own, apart from the variables (minja::Context::variable).
    std::shared_ptr<minja::Context> filters = minja::Context::make(minja::Value::object());
    filters->mark_filters();
    AddJinjaFilters(filters);
    filters->set("tojson", MakeToJson());
    filters->set("strftime_now", MakeStrftimeNow());
    std::shared_ptr<minja::Context> context = minja::Context::make(minja::Value(vars), filters);
    return parsed_->root->render(context);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(where_, ": rendering these messages ran out of memory"));
  } catch (const std::exception& e) {
    // minja wraps a bad_alloc deep in a render into its own error: still the memory's.
    const std::string what = e.what();
    if (what.find("bad_alloc") != std::string::npos) {
      return absl::ResourceExhaustedError(absl::StrCat(where_, ": rendering these messages ran out of memory"));
    }
    return absl::InvalidArgumentError(
        absl::StrCat("messages: the checkpoint's chat template (", where_, ") refused them: ", Shorten(what)));
  }
}

std::string JinjaChatTemplate::PythonJsonDumps(std::string_view json_text, bool ensure_ascii, int indent,
                                               std::string_view item_separator, std::string_view key_separator,
                                               bool sort_keys) {
  DumpOptions o;
  o.ensure_ascii = ensure_ascii;
  o.indent = indent;
  o.item_separator = std::string(item_separator);
  o.key_separator = std::string(key_separator);
  o.sort_keys = sort_keys;
  std::string out;
  Dump(ordered_json::parse(json_text), o, 0, &out);
  return out;
}

}  // namespace glmserve::tokenizer
