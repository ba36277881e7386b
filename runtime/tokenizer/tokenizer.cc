#include "runtime/tokenizer/tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "runtime/bounded_file.h"
#include "runtime/json_util.h"
#include "runtime/tokenizer/bpe.h"
#include "runtime/tokenizer/chat_template.h"
#include "runtime/tokenizer/jinja_chat.h"
#include "runtime/tokenizer/pretokenizer.h"
#include "runtime/tokenizer/sp_wrapper.h"

namespace glmserve::tokenizer {
namespace fs = std::filesystem;
using json = nlohmann::json;

// ---------------------------------------------------------------- UTF-8 helpers

namespace {

// Length of a valid sequence starting at s[i] (0 if invalid); *need is the full length expected
// from the lead byte (for incomplete-at-end detection); *valid_so_far counts valid bytes.
size_t Utf8SequenceAt(std::string_view s, size_t i, size_t* valid_so_far) {
  const unsigned char c = s[i];
  *valid_so_far = 0;
  if (c < 0x80) {
    *valid_so_far = 1;
    return 1;
  }
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF)
    n = 2;
  else if (c >= 0xE0 && c <= 0xEF)
    n = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
  else if (c >= 0xF0 && c <= 0xF4)
    n = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
  else
    return 0;
  *valid_so_far = 1;
  for (size_t k = 1; k < n; ++k) {
    if (i + k >= s.size()) return 0;
    const unsigned char d = s[i + k];
    if (k == 1 ? (d < lo || d > hi) : (d < 0x80 || d > 0xBF)) return 0;
    *valid_so_far = k + 1;
  }
  return n;
}

}  // namespace

size_t CompleteUtf8Prefix(std::string_view s) {
  for (size_t back = 1; back <= 3 && back <= s.size(); ++back) {
    const size_t i = s.size() - back;
    const unsigned char c = s[i];
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: look further back
    size_t valid;
    if (c >= 0xC2 && c <= 0xF4 && Utf8SequenceAt(s, i, &valid) == 0 && valid == back) return i;
    return s.size();
  }
  return s.size();
}

std::string SanitizeUtf8(std::string_view s, bool each_byte) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    size_t valid;
    const size_t n = Utf8SequenceAt(s, i, &valid);
    if (n > 0) {
      out.append(s.data() + i, n);
      i += n;
    } else {
      out += "\xEF\xBF\xBD";
      i += each_byte ? 1 : std::max<size_t>(valid, 1);
    }
  }
  return out;
}

// ---------------------------------------------------------------- base

std::string Tokenizer::DecodeBytes(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) out += TokenBytes(id);
  return out;
}

std::string Tokenizer::StreamBytes(int32_t id, StreamState* state) const {
  state->at_text_start = false;
  return TokenBytes(id);
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids) const {
  return SanitizeUtf8(DecodeBytes(ids), replaces_each_invalid_byte());
}

std::string_view FamilyName(Family family) {
  switch (family) {
    case Family::kGlm4:
      return "GLM-4";
    case Family::kChatGlm3:
      return "ChatGLM3";
    case Family::kGlm4v:
      return "GLM-4.1V";
  }
  return "unknown";
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::ApplyChatTemplate(const std::vector<Message>& messages,
                                                                  bool add_generation_prompt) const {
  if (auto s = ValidateRoles(messages); !s.ok()) return s;
  // The vision template renders parts itself; text-only formats see parts joined into content.
  const bool has_parts =
      std::any_of(messages.begin(), messages.end(), [](const Message& m) { return !m.parts.empty(); });
  if (accepts_images() || !has_parts) return ChatIds(messages, add_generation_prompt);
  absl::StatusOr<std::vector<Message>> text_only = TextOnlyMessages(messages, family_);
  if (!text_only.ok()) return text_only.status();
  return ChatIds(*text_only, add_generation_prompt);
}

bool Tokenizer::IsSpecial(int32_t id) const { return std::binary_search(special_ids_.begin(), special_ids_.end(), id); }

std::optional<int32_t> Tokenizer::SpecialTokenId(std::string_view text) const {
  for (const auto& [t, id] : added_tokens_) {
    if (t == text) return id;
  }
  return std::nullopt;
}

std::vector<int32_t> Tokenizer::DefaultStopIds() const {
  std::vector<int32_t> out;
  for (std::string_view t :
       {std::string_view(eos_token_), std::string_view("<|user|>"), std::string_view("<|observation|>")}) {
    if (auto id = SpecialTokenId(t); id && std::find(out.begin(), out.end(), *id) == out.end()) out.push_back(*id);
  }
  return out;
}

namespace {

// The largest tokenizer file read (GLM-4's tokenizer.json is ~20 MB): a link to /dev/zero or a
// runaway file must not be read until memory runs out.
constexpr std::uintmax_t kMaxTokenizerFileBytes = 512u << 20;

// An integer JSON value in [0, kMaxTokenId).
bool TokenIdFits(const json& v) { return JsonIntegerIn(v, 0, kMaxTokenId - 1); }

// `parent[key]`, or null when `parent` is no object or has no such member.
const json* Member(const json& parent, const std::string& key) {
  if (!parent.is_object()) return nullptr;
  const auto it = parent.find(key);
  return it == parent.end() ? nullptr : &*it;
}

absl::StatusOr<std::string> ReadFile(const fs::path& p) {
  return ReadBoundedFile(p, kMaxTokenizerFileBytes, p.string());
}

// Splits text on special tokens (leftmost, longest at a position) and encodes the rest with
// `encode_text`.
template <typename F>
void EncodeWithSpecials(std::string_view text, const std::vector<std::pair<std::string, int32_t>>& by_len,
                        const bool* first_byte, std::vector<int32_t>* out, F encode_text) {
  size_t start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (!first_byte[static_cast<unsigned char>(text[i])]) continue;
    for (const auto& [t, id] : by_len) {
      if (text.compare(i, t.size(), t) == 0) {
        if (i > start) encode_text(text.substr(start, i - start), out);
        out->push_back(id);
        start = i + t.size();
        i = start - 1;
        break;
      }
    }
  }
  if (start < text.size()) encode_text(text.substr(start), out);
}

// `text`, the contents of the JSON file `where`; INVALID_ARGUMENT naming the file and where and why
// the parser stopped (cut short, bad UTF-8, ...).
absl::StatusOr<json> ParseJsonText(const std::string& where, const std::string& text) {
  // GLM-4's tokenizer.json holds ~500,000 values; a vocabulary of 2^24 tokens with its merges fits.
  if (std::string shape = JsonShapeProblem(text, /*max_depth=*/64, /*max_values=*/64'000'000); !shape.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", shape));
  }
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": invalid JSON: ", JsonErrorText(e)));
  }
}

// tokenizer_config.json fields glmserve uses: chat_template (or chat_template.jinja), eos_token, and
// what makes tokens special besides tokenizer.json; config.json's model_type, which picks the
// family default when no known template is found.
struct TokenizerConfig {
  std::string chat_template;
  std::string chat_template_where;  // the file it came from, for messages
  // Top-level "*_token" keys and their texts (eos_token, pad_token, ...): transformers passes its
  // special_tokens_map to the chat template as variables.
  std::map<std::string, std::string> named_tokens;
  std::string eos_token;
  std::string model_type;  // "glm4v": GLM-4.1V's chat format is the default
  // Strings transformers registers as special tokens: the values of top-level "*_token" keys
  // (bos/eos/unk/sep/pad/cls/mask_token and model-specific ones such as image_token; a string or an
  // AddedToken object's "content") and of an extra_special_tokens object.
  std::vector<std::string> special_token_strings;
  // added_tokens_decoder entries with "special": true (id, content).
  std::vector<std::pair<int32_t, std::string>> special_decoder_entries;
};

// The text of a "*_token" value: a string, or an AddedToken object's "content"; empty otherwise
// (null, numbers, booleans name no token; transformers ignores them for non-standard keys).
std::string TokenString(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return "";
}

// A missing tokenizer_config.json leaves the defaults (it is optional, and the chat template has
// its family fallback); one that is there must be a JSON object (a damaged one was taken as absent,
// and its chat template silently replaced by the family's; transformers refuses it).
// read_specials (tokenizer.json only; tiktoken and sentencepiece have fixed special tokens): fill
// special_token_strings and special_decoder_entries; a malformed added_tokens_decoder is then an
// error naming the entry, since it would decide which ids the response text keeps.
absl::StatusOr<TokenizerConfig> ReadTokenizerConfig(const fs::path& dir, bool read_specials) {
  TokenizerConfig c;
  const std::string path = (dir / "tokenizer_config.json").string();
  std::error_code exists_error;
  if (fs::exists(path, exists_error)) {
    absl::StatusOr<std::string> text = ReadFile(path);
    if (!text.ok()) return text.status();
    absl::StatusOr<json> parsed = ParseJsonText(path, *text);
    if (!parsed.ok()) return parsed.status();
    json j = *std::move(parsed);
    if (!j.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": expected a JSON object, got ", j.type_name()));
    }
    if (j.contains("chat_template") && j["chat_template"].is_string()) {
      c.chat_template = j["chat_template"];
      c.chat_template_where = absl::StrCat(path, "'s chat_template");
    }
    if (j.contains("eos_token")) c.eos_token = TokenString(j["eos_token"]);
    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string& key = it.key();
      if (key.size() > 6 && key.compare(key.size() - 6, 6, "_token") == 0) {
        if (std::string s = TokenString(it.value()); !s.empty()) {
          if (read_specials) c.special_token_strings.push_back(s);
          c.named_tokens[key] = std::move(s);
        }
      }
    }
    // transformers 5 reads an extra_special_tokens object as more named tokens; a list of them
    // (or additional_special_tokens) does not change which ids its decode skips.
    if (read_specials && j.contains("extra_special_tokens") && j["extra_special_tokens"].is_object()) {
      for (const json& v : j["extra_special_tokens"]) {
        if (std::string s = TokenString(v); !s.empty()) c.special_token_strings.push_back(std::move(s));
      }
    }
    if (read_specials && j.contains("added_tokens_decoder")) {
      const json& atd = j["added_tokens_decoder"];
      if (!atd.is_object()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": added_tokens_decoder: expected an object of id -> token, got ", atd.type_name()));
      }
      for (auto it = atd.begin(); it != atd.end(); ++it) {
        const std::string where = absl::StrCat(path, ": added_tokens_decoder[\"", it.key(), "\"]");
        int32_t id;
        if (!absl::SimpleAtoi(it.key(), &id) || id < 0 || id >= kMaxTokenId) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, ": expected a token id in [0, ", kMaxTokenId, ") as the key"));
        }
        const json& e = it.value();
        if (!e.is_object() || !e.contains("content") || !e["content"].is_string()) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": expected an object with a string \"content\""));
        }
        if (e.contains("special") && !e["special"].is_boolean()) {
          return absl::InvalidArgumentError(absl::StrCat(where, ".special: expected true or false"));
        }
        if (e.value("special", false)) c.special_decoder_entries.emplace_back(id, e["content"].get<std::string>());
      }
    }
  }
  if (auto text = ReadFile(dir / "chat_template.jinja"); text.ok() && c.chat_template.empty()) {
    c.chat_template = *text;
    c.chat_template_where = (dir / "chat_template.jinja").string();
  }
  // The model's config.json is read only for model_type; the checkpoint loader validates the rest.
  if (auto text = ReadFile(dir / "config.json"); text.ok()) {
    json j = json::parse(*text, nullptr, false);
    if (j.is_object() && j.contains("model_type") && j["model_type"].is_string()) c.model_type = j["model_type"];
  }
  return c;
}

// ---------------------------------------------------------------- byte-level BPE (both GLM-4 files)

class BpeTokenizer : public Tokenizer {
 public:
  std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens) const override {
    std::vector<int32_t> out;
    if (add_special_tokens) out.insert(out.end(), prefix_.begin(), prefix_.end());
    std::vector<std::string_view> pieces;
    EncodeWithSpecials(text, specials_by_len_, first_byte_, &out, [&](std::string_view t, std::vector<int32_t>* o) {
      std::string spaced;
      if (add_prefix_space_ && !t.empty() && t[0] != ' ') {
        spaced = " " + std::string(t);
        t = spaced;
      }
      pieces.clear();
      splitter_->Split(t, &pieces);
      for (std::string_view p : pieces) model_.EncodePiece(p, o);
    });
    if (add_special_tokens) out.insert(out.end(), suffix_.begin(), suffix_.end());
    return out;
  }

  std::string TokenBytes(int32_t id) const override {
    if (id >= 0 && id < static_cast<int32_t>(added_text_.size()) && !added_text_[id].empty()) {
      return added_text_[id];
    }
    return model_.Bytes(id);
  }

  absl::StatusOr<std::vector<int32_t>> ChatIds(const std::vector<Message>& messages,
                                               bool add_generation_prompt) const override {
    auto text = jinja_ != nullptr           ? jinja_->Render(messages, add_generation_prompt)
                : family_ == Family::kGlm4v ? RenderGlm4vChat(messages, add_generation_prompt)
                                            : RenderGlm4Chat(messages, add_generation_prompt);
    if (!text.ok()) return text.status();
    return Encode(*text, /*add_special_tokens=*/false);  // transformers' apply_chat_template does the same
  }

  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromHfJson(const fs::path& dir);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromTiktoken(const fs::path& dir, const std::string& text);

 private:
  // `where`: the tokenizer file, for messages.
  absl::Status Finish(const TokenizerConfig& cfg, const std::string& where) {
    for (const auto& [t, id] : added_tokens_) {  // the id table below is sized by the largest
      if (id < 0 || id >= kMaxTokenId) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": added token '", t, "' has id ", id, ", outside [0, ", kMaxTokenId, ")"));
      }
    }
    specials_by_len_ = added_tokens_;
    std::stable_sort(specials_by_len_.begin(), specials_by_len_.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
    std::fill(std::begin(first_byte_), std::end(first_byte_), false);
    int32_t max_id = model_.size() - 1;
    for (const auto& [t, id] : added_tokens_) {
      if (!t.empty()) first_byte_[static_cast<unsigned char>(t[0])] = true;
      max_id = std::max(max_id, id);
    }
    added_text_.assign(max_id + 1, std::string());
    for (const auto& [t, id] : added_tokens_) added_text_[id] = t;
    vocab_size_ = max_id + 1;
    std::sort(special_ids_.begin(), special_ids_.end());
    special_ids_.erase(std::unique(special_ids_.begin(), special_ids_.end()), special_ids_.end());
    eos_token_ = cfg.eos_token.empty() ? "<|endoftext|>" : cfg.eos_token;
    // A recognized template decides the family; otherwise the model's config.json does (a glm4v
    // checkpoint with an edited template still speaks GLM-4.1V's format, as the text path falls back
    // to its family's format).
    if (!cfg.chat_template.empty() && IsKnownGlm4vTemplate(cfg.chat_template)) {
      family_ = Family::kGlm4v;
      chat_template_source_ = "chat_template (recognized GLM-4.1V template)";
    } else if (!cfg.chat_template.empty() && IsKnownGlm4Template(cfg.chat_template)) {
      family_ = Family::kGlm4;
      chat_template_source_ = "chat_template (recognized GLM-4 template)";
    } else {
      family_ = cfg.model_type == "glm4v" ? Family::kGlm4v : Family::kGlm4;
      // A text model's other template (GLM-4-0414, GLM-Z1, a fine-tune's) runs on the Jinja engine,
      // when it parses and renders a plain user turn; GLM-4.1V's image parts need the built-in
      // renderer. Otherwise the family's format, and the reason, which serve logs as a warning.
      std::string jinja_problem;
      if (!cfg.chat_template.empty() && family_ == Family::kGlm4) {
        absl::StatusOr<std::unique_ptr<JinjaChatTemplate>> jinja =
            JinjaChatTemplate::Create(cfg.chat_template, cfg.chat_template_where, cfg.named_tokens);
        absl::Status probe = jinja.status();
        // A plain conversation with a history (a filter the engine lacks in an assistant branch
        // surfaced only on the second turn otherwise).
        if (jinja.ok()) {
          probe = (*jinja)
                      ->Render({Message{"user", "hi"}, Message{"assistant", "hello"}, Message{"user", "hi"}},
                               /*add_generation_prompt=*/true)
                      .status();
        }
        if (probe.ok()) {
          jinja_ = std::move(*jinja);
          chat_template_source_ = "chat_template (run by the Jinja engine)";
          return absl::OkStatus();
        }
        jinja_problem = absl::StrCat(": ", probe.message());
      }
      chat_template_source_ = absl::StrCat(
          "family default (", cfg.chat_template.empty() ? "no chat_template" : "chat_template not recognized",
          jinja_problem, "; rendered as ", std::string(FamilyName(family_)), ")");
    }
    if (family_ == Family::kGlm4v) {
      // Without these as single ids the rendered prompt would tokenize them as text.
      for (std::string_view t : {"[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|begin_of_image|>",
                                 "<|image|>", "<|end_of_image|>"}) {
        if (!SpecialTokenId(t)) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": the GLM-4.1V chat format (", chat_template_source_,
                                                         ") needs the special token '", std::string(t),
                                                         "', which is not among the tokenizer's added tokens"));
        }
      }
    }
    return absl::OkStatus();
  }

  BytePairModel model_;
  std::shared_ptr<const JinjaChatTemplate> jinja_;  // the checkpoint's own template, when it runs there
  std::unique_ptr<RegexSplitter> splitter_;
  bool add_prefix_space_ = false;
  std::vector<int32_t> prefix_, suffix_;  // post-processor ids around the sequence
  // tokenizer_config.json's special tokens (transformers marks them special in HF tokenizers' added
  // vocabulary, so its decode skips them): added_tokens_decoder entries with "special": true whose
  // content is the token at that id, and the "*_token" strings. A string is looked up as
  // transformers does: added tokens first, then the model's vocab (its keys as written in
  // tokenizer.json). A string that is neither would be a new id past the vocabulary, which the model
  // cannot produce, so it changes nothing.
  void AddConfigSpecials(const TokenizerConfig& cfg, const std::vector<std::pair<std::string, int32_t>>& vocab) {
    auto text_of = [&](int32_t id) -> const std::string* {
      for (const auto& [t, aid] : added_tokens_) {
        if (aid == id) return &t;
      }
      for (const auto& [t, vid] : vocab) {
        if (vid == id) return &t;
      }
      return nullptr;
    };
    auto id_of = [&](const std::string& s) -> std::optional<int32_t> {
      for (const auto& [t, aid] : added_tokens_) {
        if (t == s) return aid;
      }
      for (const auto& [t, vid] : vocab) {
        if (t == s) return vid;
      }
      return std::nullopt;
    };
    for (const auto& [id, content] : cfg.special_decoder_entries) {
      if (const std::string* t = text_of(id); t != nullptr && *t == content) special_ids_.push_back(id);
    }
    for (const std::string& s : cfg.special_token_strings) {
      if (auto id = id_of(s)) special_ids_.push_back(*id);
    }
  }

  std::vector<std::pair<std::string, int32_t>> specials_by_len_;  // added tokens, longest first
  bool first_byte_[256];
  std::vector<std::string> added_text_;  // id -> text for added-token ids
};

absl::StatusOr<std::unique_ptr<Tokenizer>> BpeTokenizer::FromHfJson(const fs::path& dir) {
  const fs::path path = dir / "tokenizer.json";
  auto text = ReadFile(path);
  if (!text.ok()) return text.status();
  const std::string where = path.string();
  absl::StatusOr<json> parsed = ParseJsonText(where, *text);
  if (!parsed.ok()) return parsed.status();
  json j = *std::move(parsed);
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": not a tokenizer.json (no model object)"));
  }
  absl::StatusOr<TokenizerConfig> cfg = ReadTokenizerConfig(dir, /*read_specials=*/true);
  if (!cfg.ok()) return cfg.status();
  auto t = std::make_unique<BpeTokenizer>();
  t->format_ = "tokenizer.json";
  // Every member is looked up before it is read: nlohmann's const operator[] on an absent key
  // reads past its map when assertions are compiled out (a tokenizer.json without model.merges
  // crashed `inspect`, or loaded with no merges and split every text into bytes).
  auto refuse = [&where](const std::string& path, const std::string& expected, const json* found) {
    const std::string shown = found == nullptr ? "nothing" : ShownValue(JsonDump(*found));
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", path, ": expected ", expected, ", found ", shown));
  };
  try {
    const json& model = j["model"];
    if (model.value("type", "") != "BPE") {
      return absl::UnimplementedError(
          absl::StrCat(where, ": model.type '", model.value("type", ""), "' (only byte-level BPE is supported)"));
    }
    if (j.contains("normalizer") && !j["normalizer"].is_null()) {
      return absl::UnimplementedError(absl::StrCat(where, ": normalizer ", j["normalizer"].dump(), " not supported"));
    }
    const json* vocab_json = Member(model, "vocab");
    if (vocab_json == nullptr || !vocab_json->is_object()) {
      return refuse("model.vocab", "an object of token -> id", vocab_json);
    }
    std::vector<std::pair<std::string, int32_t>> vocab;
    for (auto it = vocab_json->begin(); it != vocab_json->end(); ++it) {
      if (!TokenIdFits(it.value())) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": model.vocab '", it.key(), "': id ", it.value().dump(),
                                                       " is not in [0, ", kMaxTokenId, ")"));
      }
      vocab.emplace_back(it.key(), it.value().get<int32_t>());
    }
    // Each merge as tokenizers takes it: two strings, or one string "left right" (a lone space
    // between them); tokenizers refuses a file holding any other entry, and so does this.
    const json* merges_json = Member(model, "merges");
    if (merges_json == nullptr || !merges_json->is_array()) {
      return refuse("model.merges", "a list of merges", merges_json);
    }
    std::vector<std::pair<std::string, std::string>> merges;
    for (size_t i = 0; i < merges_json->size(); ++i) {
      const json& m = (*merges_json)[i];
      if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        merges.emplace_back(m[0], m[1]);
        continue;
      }
      const size_t space = m.is_string() ? m.get_ref<const std::string&>().find(' ') : std::string::npos;
      if (space == std::string::npos || m.get_ref<const std::string&>().find(' ', space + 1) != std::string::npos) {
        return refuse(absl::StrCat("model.merges[", i, "]"), "[\"left\", \"right\"] or \"left right\"", &m);
      }
      const std::string& text = m.get_ref<const std::string&>();
      merges.emplace_back(text.substr(0, space), text.substr(space + 1));
    }
    auto bpe = BytePairModel::FromHf(vocab, merges);
    if (!bpe.ok()) return absl::Status(bpe.status().code(), absl::StrCat(where, ": ", bpe.status().message()));
    t->model_ = std::move(*bpe);

    // Pre-tokenizer: ByteLevel(use_regex) | Split(Regex, Isolated) | Sequence of those.
    std::string pattern;
    const json& pre = j.value("pre_tokenizer", json());
    std::vector<json> steps;
    if (pre.is_object() && pre.value("type", "") == "Sequence") {
      const json* list = Member(pre, "pretokenizers");
      if (list == nullptr || !list->is_array()) {
        return refuse("pre_tokenizer.pretokenizers", "a list of pre-tokenizers", list);
      }
      steps = list->get<std::vector<json>>();
    } else if (!pre.is_null()) {
      steps.push_back(pre);
    }
    for (size_t i = 0; i < steps.size(); ++i) {
      const json& s = steps[i];
      if (!s.is_object()) return refuse(absl::StrCat("pre_tokenizer step ", i), "an object", &s);
      const std::string type = s.value("type", "");
      if (type == "ByteLevel") {
        t->add_prefix_space_ = s.value("add_prefix_space", false);
        if (s.value("use_regex", true)) {
          if (!pattern.empty()) return absl::UnimplementedError(absl::StrCat(where, ": two regex pre-tokenizers"));
          pattern = kGpt2Pattern;
        }
      } else if (type == "Split") {
        const json* split = Member(s, "pattern");
        const json* regex = split == nullptr ? nullptr : Member(*split, "Regex");
        if (regex == nullptr || !regex->is_string() || s.value("behavior", "") != "Isolated" ||
            s.value("invert", false) || !pattern.empty()) {
          return absl::UnimplementedError(absl::StrCat(where, ": pre_tokenizer Split ", ShownValue(JsonDump(s), 200),
                                                       " (only one Regex split, behavior Isolated, not inverted)"));
        }
        pattern = regex->get<std::string>();
      } else {
        return absl::UnimplementedError(absl::StrCat(where, ": pre_tokenizer type '", type, "' not supported"));
      }
    }
    if (pattern.empty()) pattern = "(?s).+";  // no splitting: the whole text, newlines too, is one piece
    auto splitter = RegexSplitter::Create(pattern);
    if (!splitter.ok())
      return absl::Status(splitter.status().code(), absl::StrCat(where, ": ", splitter.status().message()));
    t->splitter_ = std::move(*splitter);

    const json& added = j.value("added_tokens", json::array());
    if (!added.is_array()) return refuse("added_tokens", "a list of added tokens", &added);
    for (size_t i = 0; i < added.size(); ++i) {
      const json& a = added[i];
      if (!a.is_object() || !a.contains("id") || !TokenIdFits(a["id"])) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": added_tokens[", i, "].id: expected a token id in [0, ",
                                                       kMaxTokenId, "), found ",
                                                       a.is_object() && a.contains("id") ? a["id"].dump() : "none"));
      }
      const json* content = Member(a, "content");
      if (content == nullptr || !content->is_string()) {
        return refuse(absl::StrCat("added_tokens[", i, "].content"), "the token's text", content);
      }
      const int32_t id = a["id"].get<int32_t>();
      t->added_tokens_.emplace_back(content->get<std::string>(), id);
      // HF tokenizers' AddedToken: "special" defaults to false; decode(skip_special_tokens=True)
      // drops only the special ones.
      if (a.contains("special") && !a["special"].is_boolean()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": added_tokens[", i, "].special: expected true or false"));
      }
      if (a.value("special", false)) t->special_ids_.push_back(id);
    }
    t->AddConfigSpecials(*cfg, vocab);
    // Post-processor: TemplateProcessing's `single` (special tokens around $A); ByteLevel: no ids.
    std::vector<json> procs;
    const json& post = j.value("post_processor", json());
    if (post.is_object() && post.value("type", "") == "Sequence") {
      const json* list = Member(post, "processors");
      if (list == nullptr || !list->is_array())
        return refuse("post_processor.processors", "a list of processors", list);
      procs = list->get<std::vector<json>>();
    } else if (!post.is_null()) {
      procs.push_back(post);
    }
    for (const json& p : procs) {
      const std::string type = p.is_object() ? p.value("type", "") : "";
      if (type == "ByteLevel") continue;
      if (type != "TemplateProcessing") {
        return absl::UnimplementedError(absl::StrCat(where, ": post_processor type '", type, "' not supported"));
      }
      const json* single = Member(p, "single");
      if (single == nullptr || !single->is_array()) {
        return refuse("post_processor.single", "a list of template pieces", single);
      }
      bool after = false;
      for (size_t i = 0; i < single->size(); ++i) {
        const json& item = (*single)[i];
        const std::string path = absl::StrCat("post_processor.single[", i, "]");
        if (!item.is_object()) return refuse(path, "{\"Sequence\": ...} or {\"SpecialToken\": ...}", &item);
        if (item.contains("Sequence")) {
          after = true;
          continue;
        }
        const json* special = Member(item, "SpecialToken");
        if (special == nullptr) continue;
        const json* name = Member(*special, "id");
        if (name == nullptr || !name->is_string()) return refuse(path + ".SpecialToken.id", "a token's name", name);
        const json* tokens = Member(p, "special_tokens");
        const json* entry = tokens == nullptr ? nullptr : Member(*tokens, name->get_ref<const std::string&>());
        const std::string entry_path =
            absl::StrCat("post_processor.special_tokens['", ShownValue(name->get_ref<const std::string&>()), "']");
        const json* ids = entry == nullptr ? nullptr : Member(*entry, "ids");
        if (ids == nullptr || !ids->is_array()) return refuse(entry_path + ".ids", "a list of token ids", ids);
        for (const json& id : *ids) {
          if (!TokenIdFits(id))
            return refuse(entry_path + ".ids", absl::StrCat("token ids in [0, ", kMaxTokenId, ")"), &id);
          (after ? t->suffix_ : t->prefix_).push_back(id.get<int32_t>());
        }
      }
    }
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", JsonErrorText(e)));
  }
  if (auto s = t->Finish(*cfg, where); !s.ok()) return s;
  return std::unique_ptr<Tokenizer>(std::move(t));
}

// GLM-4-9B's tokenization_chatglm.py numbers these after the ranks, in this order.
const char* const kGlm4SpecialTokens[] = {"<|endoftext|>",
                                          "[MASK]",
                                          "[gMASK]",
                                          "[sMASK]",
                                          "<sop>",
                                          "<eop>",
                                          "<|system|>",
                                          "<|user|>",
                                          "<|assistant|>",
                                          "<|observation|>",
                                          "<|begin_of_image|>",
                                          "<|end_of_image|>",
                                          "<|begin_of_video|>",
                                          "<|end_of_video|>"};

absl::StatusOr<std::unique_ptr<Tokenizer>> BpeTokenizer::FromTiktoken(const fs::path& dir, const std::string& text) {
  const std::string where = (dir / "tokenizer.model").string();
  std::vector<std::pair<std::string, int32_t>> ranks;
  size_t line_no = 0;
  int32_t next = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    std::string_view line(text.data() + pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    std::string bytes;
    int32_t rank;
    if (sp == std::string_view::npos || !absl::Base64Unescape(std::string(line.substr(0, sp)), &bytes) ||
        !absl::SimpleAtoi(std::string(line.substr(sp + 1)), &rank)) {
      return absl::InvalidArgumentError(absl::StrCat(where, ":", line_no, ": expected `base64-token rank`"));
    }
    ranks.emplace_back(std::move(bytes), rank);
    next = std::max(next, rank + 1);
  }
  auto bpe = BytePairModel::FromRanks(std::move(ranks));
  if (!bpe.ok()) return absl::Status(bpe.status().code(), absl::StrCat(where, ": ", bpe.status().message()));
  auto t = std::make_unique<BpeTokenizer>();
  t->format_ = "tiktoken";
  t->model_ = std::move(*bpe);
  auto splitter = RegexSplitter::Create(kGlm4Pattern);
  if (!splitter.ok()) return splitter.status();
  t->splitter_ = std::move(*splitter);
  // All special: GLM-4-9B-chat's tokenizer_config.json marks each "special": true and lists them all
  // in additional_special_tokens, which is what its (slow) tokenizer's decode skips.
  for (const char* s : kGlm4SpecialTokens) {
    t->special_ids_.push_back(next);
    t->added_tokens_.emplace_back(s, next++);
  }
  // GLM-4-9B's tokenizer(text) prefixes [gMASK] <sop> (build_inputs_with_special_tokens).
  t->prefix_ = {*t->SpecialTokenId("[gMASK]"), *t->SpecialTokenId("<sop>")};
  absl::StatusOr<TokenizerConfig> cfg = ReadTokenizerConfig(dir, /*read_specials=*/false);
  if (!cfg.ok()) return cfg.status();
  if (auto s = t->Finish(*cfg, where); !s.ok()) return s;
  return std::unique_ptr<Tokenizer>(std::move(t));
}

// ---------------------------------------------------------------- sentencepiece (ChatGLM2/3)

// ChatGLM2/3's SPTokenizer numbers these after the sentencepiece vocabulary, in this order.
const char* const kChatGlm3SpecialTokens[] = {"[MASK]",   "[gMASK]",       "[sMASK]",        "sop", "eop", "<|system|>",
                                              "<|user|>", "<|assistant|>", "<|observation|>"};

class SentencePieceTokenizer : public Tokenizer {
 public:
  // ChatGLM2/3's tokenizer (encode_special_tokens=False) parses no special tokens from text:
  // "sop" or "<|user|>" in a prompt are plain text; chat turns get their ids from ChatIds.
  // add_special_tokens: ChatGLMTokenizer's build_inputs_with_special_tokens prefix [gMASK] sop.
  std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens) const override {
    std::vector<int32_t> out;
    if (add_special_tokens) out = {*SpecialTokenId("[gMASK]"), *SpecialTokenId("sop")};
    const std::vector<int> ids = sp_.Encode(std::string(text));
    out.insert(out.end(), ids.begin(), ids.end());
    return out;
  }

  bool replaces_each_invalid_byte() const override { return true; }

  std::string TokenBytes(int32_t id) const override {
    if (id >= sp_size_) {
      const size_t k = id - sp_size_;
      return k < std::size(kChatGlm3SpecialTokens) ? kChatGlm3SpecialTokens[k] : "";
    }
    if (id < 0 || sp_.IsControl(id)) return "";
    if (sp_.IsUnknown(id)) return " \xE2\x81\x87 ";  // sentencepiece's unk surface " ⁇ "
    const std::string piece = sp_.IdToPiece(id);

    if (sp_.IsByte(id) && piece.size() == 6) {  // <0xAB>
      return std::string(1, static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
    }
    std::string out;
    for (size_t i = 0; i < piece.size(); ++i) {
      if (piece.compare(i, 3, "\xE2\x96\x81") == 0) {  // U+2581 -> space
        out.push_back(' ');
        i += 2;
      } else {
        out.push_back(piece[i]);
      }
    }
    return out;
  }

  std::string StreamBytes(int32_t id, StreamState* state) const override {
    // DecodeBytes restarts sentencepiece's decoder after every id outside its vocabulary.
    if (id < 0 || id >= sp_size_) {
      state->at_text_start = true;
      return TokenBytes(id);
    }
    // Past a run's start every piece is its own bytes ("▁" a space). At the start sentencepiece
    // strips the dummy prefix where the model's normaliser adds one, which the piece decoded
    // alone shows ("▁hi" -> "hi"). A piece that yields nothing there (a lone "▁") was that prefix,
    // and the start is over, unless the model also removes extra whitespace: then every leading
    // "▁" goes ("▁" "▁" "hi" is " hi", or "hi" with remove_extra_whitespaces). Control ids yield
    // nothing and change nothing; a byte piece (maybe part of a character, which decoded alone
    // would be U+FFFD) is never stripped.
    if (!state->at_text_start || sp_.IsControl(id)) return TokenBytes(id);
    if (sp_.IsByte(id)) {
      state->at_text_start = false;
      return TokenBytes(id);
    }
    std::string text = sp_.Decode(std::vector<int>{id});
    if (!text.empty() || !strips_every_leading_space_) state->at_text_start = false;
    return text;
  }

  std::string DecodeBytes(const std::vector<int32_t>& ids) const override {
    // Runs of sentencepiece ids go through sentencepiece's decoder (its whitespace rules).
    std::string out;
    std::vector<int> run;
    auto flush = [&] {
      if (run.empty()) return;
      out += sp_.Decode(run);
      run.clear();
    };
    for (int32_t id : ids) {
      if (id >= 0 && id < sp_size_) {
        run.push_back(id);
      } else {
        flush();
        out += TokenBytes(id);
      }
    }
    flush();
    return out;
  }

  absl::StatusOr<std::vector<int32_t>> ChatIds(const std::vector<Message>& messages,
                                               bool add_generation_prompt) const override {
    // ChatGLM3's build_chat_input: [gMASK] sop, then per message <|role|> sp("\n") sp(content).
    std::vector<int32_t> out = {*SpecialTokenId("[gMASK]"), *SpecialTokenId("sop")};
    for (const Message& m : messages) {
      out.push_back(*SpecialTokenId(absl::StrCat("<|", m.role, "|>")));
      const std::vector<int> nl = sp_.Encode("\n"), content = sp_.Encode(m.content);
      out.insert(out.end(), nl.begin(), nl.end());
      out.insert(out.end(), content.begin(), content.end());
    }
    if (add_generation_prompt) out.push_back(*SpecialTokenId("<|assistant|>"));
    return out;
  }

  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const fs::path& dir, const std::string& bytes) {
    auto t = std::make_unique<SentencePieceTokenizer>();
    const std::string st = t->sp_.Load(bytes);
    if (!st.empty()) {
      return absl::InvalidArgumentError(absl::StrCat((dir / "tokenizer.model").string(),
                                                     ": neither tiktoken ranks nor a sentencepiece model (", st, ")"));
    }
    t->format_ = "sentencepiece";
    t->family_ = Family::kChatGlm3;
    t->sp_size_ = t->sp_.size();
    // How the decoder treats leading "▁" pieces (StreamBytes): two decode to nothing only where
    // the normaliser removes extra whitespace.
    if (const int space = t->sp_.PieceToId("\xE2\x96\x81"); !t->sp_.IsUnknown(space)) {
      t->strips_every_leading_space_ = t->sp_.Decode({space, space}).empty();
    }
    int32_t next = t->sp_size_;
    // All special: ChatGLM3's SPTokenizer keeps them in its special-token table, apart from the text
    // vocabulary (unchanged behaviour; no reference tokenizer here marks any of them as text).
    for (const char* s : kChatGlm3SpecialTokens) {
      t->special_ids_.push_back(next);
      t->added_tokens_.emplace_back(s, next++);
    }
    t->vocab_size_ = next;
    // eos: sentencepiece's </s>.
    if (t->sp_.eos_id() >= 0) {
      t->eos_token_ = t->sp_.IdToPiece(t->sp_.eos_id());
      t->added_tokens_.emplace_back(t->eos_token_, t->sp_.eos_id());
      t->special_ids_.push_back(t->sp_.eos_id());
    }
    std::sort(t->special_ids_.begin(), t->special_ids_.end());
    absl::StatusOr<TokenizerConfig> read = ReadTokenizerConfig(dir, /*read_specials=*/false);
    if (!read.ok()) return read.status();
    const TokenizerConfig& cfg = *read;
    if (cfg.chat_template.empty())
      t->chat_template_source_ = "family default (no chat_template; rendered as ChatGLM3)";
    else if (IsKnownChatGlm3Template(cfg.chat_template))
      t->chat_template_source_ = "chat_template (recognized ChatGLM3 template)";
    else
      t->chat_template_source_ = "family default (chat_template not recognized; rendered as ChatGLM3)";
    return std::unique_ptr<Tokenizer>(std::move(t));
  }

 private:
  SentencePiece sp_;
  int32_t sp_size_ = 0;
  bool strips_every_leading_space_ = false;  // remove_extra_whitespaces: every leading "▁" goes
};

bool LooksLikeTiktoken(const std::string& text) {
  const size_t nl = text.find('\n');
  std::string_view first(text.data(), nl == std::string::npos ? text.size() : nl);
  const size_t sp = first.find(' ');
  if (sp == std::string_view::npos || sp == 0) return false;
  for (char c : first.substr(0, sp)) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '/' || c == '=')) return false;
  }
  int32_t r;
  return absl::SimpleAtoi(std::string(first.substr(sp + 1)), &r);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromDirectory(const std::string& dir_str) {
  const fs::path dir(dir_str);
  // NOT_FOUND means no tokenizer files at all (ids only); files that are there and do not load
  // are FAILED_PRECONDITION, whatever stopped them (a file that cannot be opened included).
  auto present = [](absl::StatusOr<std::unique_ptr<Tokenizer>> loaded) -> absl::StatusOr<std::unique_ptr<Tokenizer>> {
    if (!loaded.ok() && absl::IsNotFound(loaded.status())) {
      return absl::FailedPreconditionError(loaded.status().message());
    }
    return loaded;
  };
  // A file that cannot even be looked up (an unsearchable directory) is one that does not load.
  auto exists = [](const fs::path& path) -> absl::StatusOr<bool> {
    std::error_code ec;
    const bool found = fs::exists(path, ec);
    if (ec)
      return absl::FailedPreconditionError(absl::StrCat(path.string(), ": cannot be looked up (", ec.message(), ")"));
    return found;
  };
  absl::StatusOr<bool> has_json = exists(dir / "tokenizer.json");
  if (!has_json.ok()) return has_json.status();
  if (*has_json) return present(BpeTokenizer::FromHfJson(dir));
  absl::StatusOr<bool> has_model = exists(dir / "tokenizer.model");
  if (!has_model.ok()) return has_model.status();
  if (*has_model) {
    absl::StatusOr<std::string> text = ReadFile(dir / "tokenizer.model");
    if (!text.ok()) return present(text.status());
    if (LooksLikeTiktoken(*text)) return present(BpeTokenizer::FromTiktoken(dir, *text));
    return present(SentencePieceTokenizer::Load(dir, *text));
  }
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {  // still NOT_FOUND (no tokenizer), saying why
    return absl::NotFoundError(absl::StrCat(dir_str, fs::exists(dir, ec) ? ": not a directory" : ": no such directory",
                                            " (expected a model directory holding tokenizer.json or tokenizer.model)"));
  }
  return absl::NotFoundError(absl::StrCat(dir_str, ": no tokenizer.json or tokenizer.model"));
}

}  // namespace glmserve::tokenizer
