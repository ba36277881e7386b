// glmserve_tokenizer: text <-> token ids for GLM-family checkpoints, LibTorch-free.
// Contract: README.md in this folder. Thread-safe after construction (all methods const).
#ifndef GLMSERVE_RUNTIME_TOKENIZER_TOKENIZER_H_
#define GLMSERVE_RUNTIME_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace glmserve::tokenizer {

// One part of a message's content (OpenAI content parts): text, or an image's place. The image
// itself travels beside the prompt (runtime/vision); the template renders only its placeholder.
struct MessagePart {
  enum class Kind { kText, kImage };
  Kind kind = Kind::kText;
  std::string text;  // kText only
};

// Chat role + content, as in the gRPC API's Message.
struct Message {
  std::string role;
  std::string content;
  // When non-empty, the content in parts (text and images in order) and `content` is ignored.
  // Only a vision family's template takes image parts; the others refuse them naming the message.
  std::vector<MessagePart> parts = {};
};

// Which chat format the checkpoint speaks.
enum class Family {
  kGlm4,      // [gMASK]<sop> <|role|>\ncontent ... <|assistant|> (byte-level BPE files)
  kChatGlm3,  // [gMASK] sop <|role|> sp("\n") sp(content) ... <|assistant|> (sentencepiece)
  // GLM-4.1V / AutoGLM-Phone-9B (byte-level BPE): [gMASK]<sop> <|role|>\ncontent ...
  // <|assistant|>\n; an image part of a user message renders as kGlm4vImagePlaceholder.
  kGlm4v,
};

// "GLM-4", "ChatGLM3", "GLM-4.1V" (for messages).
std::string_view FamilyName(Family family);

// What an image part renders as in GLM-4.1V's template (three special ids). The server expands the
// middle id to the image's token count (runtime/vision/multimodal_prompt.h).
inline constexpr std::string_view kGlm4vImagePlaceholder = "<|begin_of_image|><|image|><|end_of_image|>";

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Loads from a model directory: tokenizer.json (HF byte-level BPE) if present, else
  // tokenizer.model (tiktoken ranks `base64 rank` per line, or a sentencepiece model), plus
  // tokenizer_config.json / chat_template.jinja for the chat template.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromDirectory(const std::string& dir);

  // Text -> ids. Byte-level BPE: added-token strings in `text` (e.g. "<|user|>", special or not)
  // map to their ids, as HF tokenizers and tiktoken(allowed_special="all") do. Sentencepiece (ChatGLM2/3): no
  // special tokens are parsed from text, as ChatGLM3's tokenizer does. add_special_tokens applies the
  // post-processor: tokenizer.json's TemplateProcessing; tiktoken: GLM-4-9B's [gMASK] <sop>;
  // sentencepiece: ChatGLM2/3's [gMASK] sop (their build_inputs_with_special_tokens).
  virtual std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens = true) const = 0;

  // The raw bytes one id stands for (added tokens, special or not: their text; unknown ids: empty).
  // Concatenating them gives DecodeBytes; streaming detokenization is built on this.
  virtual std::string TokenBytes(int32_t id) const = 0;

  // Where ids are decoded one at a time (streaming): how far the current run of DecodeBytes is.
  struct StreamState {
    bool at_text_start = true;  // nothing decoded yet in the run (the start, or after a special id)
  };
  // One id's bytes in a stream: concatenated, they give DecodeBytes of the ids. Sentencepiece's
  // decoder strips the dummy prefix at the start of a run (the text's, and after each special id);
  // the others take TokenBytes throughout.
  virtual std::string StreamBytes(int32_t id, StreamState* state) const;

  // ids -> bytes (may be invalid UTF-8 for partial sequences).
  virtual std::string DecodeBytes(const std::vector<int32_t>& ids) const;
  // ids -> valid UTF-8; invalid sequences become U+FFFD as the reference's decode does (HF
  // tokenizers: one a maximal invalid subpart; sentencepiece: one a byte).
  std::string Decode(const std::vector<int32_t>& ids) const;
  // Sentencepiece's decode gives one U+FFFD per invalid byte, the others one per invalid sequence.
  virtual bool replaces_each_invalid_byte() const { return false; }

  // Chat prompt ids for `messages` (roles: system, user, assistant, observation), rendered as the
  // checkpoint's chat template does; add_generation_prompt appends <|assistant|> (GLM-4.1V:
  // <|assistant|>\n). A message's text parts are its content, concatenated. Image parts:
  // accepts_images() families render each as kGlm4vImagePlaceholder, in order, in user messages
  // only; other families, and image parts elsewhere, are INVALID_ARGUMENT naming
  // messages[i].content[j]. GLM-4.1V also refuses the observation role (its template has no such
  // turn and would drop the message) and vision special tokens written as text (they would stand
  // for an image that is not there).
  absl::StatusOr<std::vector<int32_t>> ApplyChatTemplate(const std::vector<Message>& messages,
                                                         bool add_generation_prompt = true) const;

  // True for the ids the reference's decode(skip_special_tokens=True) drops; the response text
  // (TextOutput, StreamDecoder) and `generate`'s text leave them out and keep every other id.
  // tokenizer.json: an added token whose "special" is true, or that tokenizer_config.json makes
  // special (added_tokens_decoder "special": true, or named by a "*_token" key such as eos_token), as
  // transformers does; added tokens that are not special (GLM-4.1V's <think>, <answer>) are text.
  // tiktoken / sentencepiece: the GLM special tokens and eos (GLM-4-9B-chat's config marks them all
  // special; ChatGLM3's tokenizer keeps them in its special-token table). Sentencepiece control ids
  // decode to nothing either way.
  bool IsSpecial(int32_t id) const;
  // Id of an added token (special or not), if the tokenizer has it.
  std::optional<int32_t> SpecialTokenId(std::string_view text) const;
  // Ids that end a chat turn: <|endoftext|> (or </s>), <|user|>, <|observation|> where present.
  std::vector<int32_t> DefaultStopIds() const;

  // Number of ids (regular + special).
  int32_t vocab_size() const { return vocab_size_; }
  Family family() const { return family_; }
  // True when the chat template takes image parts (Family::kGlm4v).
  bool accepts_images() const { return family_ == Family::kGlm4v; }
  // "tokenizer.json", "tiktoken" or "sentencepiece".
  const std::string& format() const { return format_; }
  // Where the chat template came from: "chat_template (recognized GLM-4 template)" (or ChatGLM3,
  // GLM-4.1V), "family default (no chat_template...)", "family default (chat_template not
  // recognized; rendered as <family>)". The family is GLM-4.1V when the template is GLM-4.1V's or
  // the directory's config.json says model_type "glm4v"; otherwise GLM-4 for byte-level BPE.
  const std::string& chat_template_source() const { return chat_template_source_; }

 protected:
  virtual absl::StatusOr<std::vector<int32_t>> ChatIds(const std::vector<Message>& messages,
                                                       bool add_generation_prompt) const = 0;
  int32_t vocab_size_ = 0;
  Family family_ = Family::kGlm4;
  std::string format_;
  std::string chat_template_source_;
  // text, id: every added token (split out of text by Encode, looked up by SpecialTokenId).
  std::vector<std::pair<std::string, int32_t>> added_tokens_;
  std::vector<int32_t> special_ids_;  // sorted, unique: the ids IsSpecial is true for
  std::string eos_token_;
};

// Valid-UTF-8 helpers (shared with the stream decoder).
// Length of the longest prefix of `s` that ends on a UTF-8 character boundary and leaves at most
// an incomplete (but so far valid) trailing sequence out.
size_t CompleteUtf8Prefix(std::string_view s);
// Replaces every invalid UTF-8 sequence by U+FFFD: one per maximal invalid subpart (Python's and
// HF tokenizers' "replace"), or one per invalid byte (`each_byte`: sentencepiece's decode).
std::string SanitizeUtf8(std::string_view s, bool each_byte = false);

}  // namespace glmserve::tokenizer

#endif  // GLMSERVE_RUNTIME_TOKENIZER_TOKENIZER_H_
