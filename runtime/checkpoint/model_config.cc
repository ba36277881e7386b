#include "runtime/checkpoint/model_config.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <string_view>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "runtime/bounded_file.h"
#include "runtime/checkpoint/tensor_record.h"
#include "runtime/json_util.h"
#include "runtime/printable_text.h"

namespace glmserve {
namespace {

using json = nlohmann::json;

const char* JsonTypeName(const json& value) { return value.type_name(); }

// An integer JSON value that get<int32_t>() returns unchanged (it wraps silently otherwise).
bool FitsInt32(const json& value) { return JsonIntegerIn(value, INT32_MIN, INT32_MAX); }

// `object[key]` when it is a string, else `fallback`; a present non-string adds a problem.
std::string StringField(const json& object, const char* key, const std::string& fallback, const std::string& where,
                        std::vector<std::string>* problems) {
  if (!object.is_object()) return fallback;
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  if (!it->is_string()) {
    problems->push_back(absl::StrCat(where, ": field '", key, "': expected a string, found ", it->type_name()));
    return fallback;
  }
  return it->get<std::string>();
}

// The most bytes a JSON side file (config.json, generation_config.json) is read to: real ones are
// a few KB; a link to /dev/zero must not be read until memory runs out.
constexpr std::uintmax_t kMaxJsonFileBytes = 16u << 20;

// Reads typed fields of one JSON object, collecting problems instead of stopping.
class FieldReader {
 public:
  FieldReader(const json& object, std::string file, std::vector<std::string>* problems)
      : object_(object), file_(std::move(file)), problems_(problems) {}

  bool Has(const char* key) const { return object_.contains(key) && !object_[key].is_null(); }

  int32_t Int(const char* key, int32_t fallback) {
    if (!Has(key)) return fallback;
    const json& value = object_[key];
    if (!value.is_number_integer()) {
      Problem(key, absl::StrCat("expected an integer, found ", JsonTypeName(value), " ", value.dump()));
      return fallback;
    }
    if (!FitsInt32(value)) {
      Problem(key, absl::StrCat(value.dump(), " is outside the 32-bit integer range"));
      return fallback;
    }
    return value.get<int32_t>();
  }

  // A size (hidden_size, vocab_size...): absent takes transformers' default `fallback` (listed in
  // `defaulted` when given); null is 0, which the positivity check reports by name (transformers
  // would pass None on and fail building the model, not take its default). A value of the wrong
  // type or range is reported and read as 0 too: checked against the weights as the default, it
  // made every shape a wrong "config.json hidden_size is 4096" (the weights are then not checked).
  int32_t Dim(const char* key, int32_t fallback, std::vector<std::string>* defaulted = nullptr) {
    if (object_.is_object() && object_.contains(key) && object_[key].is_null()) return 0;
    if (!object_.is_object() || !object_.contains(key)) {
      if (defaulted != nullptr) defaulted->push_back(absl::StrCat(prefix_, key, " (default ", fallback, ")"));
      return fallback;
    }
    const size_t problems_before = problems_->size();
    const int32_t value = Int(key, fallback);
    return problems_->size() > problems_before ? 0 : value;
  }

  // How this reader's fields are named in the defaulted list ("text_config." for glm4v).
  void set_prefix(std::string prefix) { prefix_ = std::move(prefix); }

  double Number(const char* key, double fallback) {
    if (!Has(key)) return fallback;
    const json& value = object_[key];
    if (!value.is_number()) {
      Problem(key, absl::StrCat("expected a number, found ", JsonTypeName(value), " ", value.dump()));
      return fallback;
    }
    return value.get<double>();
  }

  bool Bool(const char* key, bool fallback) {
    if (!Has(key)) return fallback;
    const json& value = object_[key];
    if (!value.is_boolean()) {
      Problem(key, absl::StrCat("expected true or false, found ", JsonTypeName(value), " ", value.dump()));
      return fallback;
    }
    return value.get<bool>();
  }

  std::string String(const char* key, const std::string& fallback) {
    if (!Has(key)) return fallback;
    const json& value = object_[key];
    if (!value.is_string()) {
      Problem(key, absl::StrCat("expected a string, found ", JsonTypeName(value)));
      return fallback;
    }
    return value.get<std::string>();
  }

  // An int or a list of ints (eos_token_id). Returns false when absent.
  bool IntList(const char* key, std::vector<int32_t>* out) {
    if (!Has(key)) return false;
    const json& value = object_[key];
    out->clear();
    if (value.is_number_integer()) {
      if (!FitsInt32(value)) {
        Problem(key, absl::StrCat(value.dump(), " is outside the 32-bit integer range"));
        return false;
      }
      out->push_back(value.get<int32_t>());
      return true;
    }
    if (value.is_array()) {
      for (const json& item : value) {
        if (!item.is_number_integer() || !FitsInt32(item)) {
          Problem(key, absl::StrCat("expected an integer or a list of 32-bit integers, found element ", item.dump()));
          return false;
        }
        out->push_back(item.get<int32_t>());
      }
      return true;
    }
    Problem(key, absl::StrCat("expected an integer or a list of integers, found ", JsonTypeName(value)));
    return false;
  }

  std::vector<std::string>* sink() { return problems_; }

  void Problem(const std::string& key, const std::string& what) {
    problems_->push_back(absl::StrCat(file_, ": field '", key, "': ", what));
  }

 private:
  const json& object_;
  std::string file_;
  std::vector<std::string>* problems_;
  std::string prefix_;
};

// Refuses eos ids outside [0, vocab_size): generation would wait for a token the model never
// produces, or look past its logits.
void CheckEosIds(FieldReader& r, const std::vector<int32_t>& ids, int32_t vocab_size, const std::string& vocab_field) {
  if (vocab_size <= 0) return;  // the vocabulary's own problem is reported
  std::vector<int32_t> outside;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size) outside.push_back(id);
  }
  if (outside.empty()) return;
  r.Problem("eos_token_id", absl::StrCat(absl::StrJoin(outside, ", "), outside.size() == 1 ? " is" : " are",
                                         " outside the vocabulary (", vocab_field, " ", vocab_size,
                                         "); expected token ids in [0, ", vocab_size, ")"));
}

// `text` with Python's JSON extensions NaN, Infinity and -Infinity (outside strings) written as the
// strings "NaN", "Infinity", "-Infinity": Python's json (what transformers reads a config with, and
// writes one with when a float is not finite) takes them, nlohmann refuses the whole file. A field
// glmserve reads then says it found a string "NaN" where it expects a number; the others load.
std::string PythonJsonLiteralsAsStrings(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      out.push_back(c);
      if (c == '\\' && i + 1 < text.size()) {
        out.push_back(text[++i]);
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') in_string = true;
    bool replaced = false;
    for (absl::string_view literal : {"-Infinity", "Infinity", "NaN"}) {
      if (absl::string_view(text).substr(i, literal.size()) == literal) {
        absl::StrAppend(&out, "\"", literal, "\"");
        i += literal.size() - 1;
        replaced = true;
        break;
      }
    }
    if (!replaced) out.push_back(c);
  }
  return out;
}

// Parses a JSON object file; on failure adds a problem naming the file and the error position.
bool ReadJsonObject(const std::filesystem::path& path, json* out, std::vector<std::string>* problems) {
  const std::string name = path.filename().string();
  absl::StatusOr<std::string> text = ReadBoundedFile(path, kMaxJsonFileBytes, name);
  if (!text.ok()) {
    problems->push_back(std::string(text.status().message()));
    return false;
  }
  *text = PythonJsonLiteralsAsStrings(*text);
  if (std::string shape = JsonShapeProblem(*text, /*max_depth=*/64, /*max_values=*/1'000'000); !shape.empty()) {
    problems->push_back(absl::StrCat(name, ": ", shape, " (a model config nests a few levels, a few hundred values)"));
    return false;
  }
  try {
    *out = json::parse(*text);
  } catch (const json::parse_error& e) {
    // The parser's own reason ("parse error at line 3, column 19: syntax error while parsing value -
    // invalid literal; last read: 'NaN'"), its position given once.
    std::string reason = JsonErrorText(e);
    std::string where;
    if (reason.rfind("parse error", 0) == 0) {
      const size_t colon = reason.find(": ");
      if (colon != std::string::npos) {
        where = reason.substr(0, colon);
        reason = reason.substr(colon + 2);
      }
    }
    static constexpr std::string_view kAt = "parse error at ";
    const std::string at = where.rfind(kAt, 0) == 0 ? where.substr(kAt.size()) : "";
    problems->push_back(absl::StrCat(name, ": invalid JSON at byte ", e.byte, at.empty() ? "" : " (", at,
                                     at.empty() ? "" : ")", ": ", PrintableText(reason)));
    return false;
  } catch (const json::exception& e) {  // a number past a double's range (1e400)
    problems->push_back(absl::StrCat(name, ": invalid JSON: ", JsonErrorText(e)));
    return false;
  }
  if (!out->is_object()) {
    problems->push_back(absl::StrCat(path.filename().string(), ": expected a JSON object, found ", out->type_name()));
    return false;
  }
  return true;
}

bool DetectArchitecture(const json& config, Architecture* arch, std::vector<std::string>* problems) {
  std::string model_type = StringField(config, "model_type", "", "config.json", problems);
  std::string first_arch;
  if (config.contains("architectures") && config["architectures"].is_array() && !config["architectures"].empty() &&
      config["architectures"][0].is_string()) {
    first_arch = config["architectures"][0].get<std::string>();
  }
  // transformers picks the classes by model_type (architectures only names what was saved), so a
  // model_type decides; architectures[0] only where none is given. A glm4v_moe (GLM-4.5V) config
  // naming the dense class loaded here as a dense glm4v, and failed later on its expert tensors.
  struct Known {
    const char* model_type;
    const char* saved_class;  // architectures[0]; ChatGLM's remote code saves several ChatGLM* classes
    Architecture arch;
  };
  static constexpr Known kKnown[] = {{"chatglm", "ChatGLM", Architecture::kChatGLM},
                                     {"glm4v", "Glm4vForConditionalGeneration", Architecture::kGlm4v},
                                     {"glm4", "Glm4ForCausalLM", Architecture::kGlm4},
                                     {"glm", "GlmForCausalLM", Architecture::kGlm}};
  static constexpr char kExpected[] = "\"chatglm\", \"glm\", \"glm4\" or \"glm4v\"";
  for (const Known& k : kKnown) {
    const bool by_class =
        k.arch == Architecture::kChatGLM ? first_arch.rfind(k.saved_class, 0) == 0 : first_arch == k.saved_class;
    if (model_type.empty() ? by_class : model_type == k.model_type) {
      *arch = k.arch;
      return true;
    }
  }
  if (!model_type.empty()) {
    const bool moe = model_type == "glm4_moe" || model_type == "glm4v_moe";
    problems->push_back(absl::StrCat(
        "config.json: field 'model_type': '", PrintableText(ShownValue(model_type)),
        "' is not a GLM model this server runs (expected ", kExpected, ")",
        moe ? "; GLM-4.5's mixture-of-experts layers are not supported" : "",
        first_arch.empty() ? "" : absl::StrCat("; architectures[0] is '", PrintableText(ShownValue(first_arch)), "'")));
  } else {
    problems->push_back(absl::StrCat(
        "config.json: no model_type, and architectures[0] is ",
        first_arch.empty() ? std::string("absent") : absl::StrCat("'", PrintableText(ShownValue(first_arch)), "'"),
        ": not a GLM model (expected model_type ", kExpected, ")"));
  }
  return false;
}

void ReadOriginalChatGlm(FieldReader& r, ModelConfig* c) {
  std::vector<std::string>* d = &c->defaulted_sizes;
  c->num_layers = r.Dim("num_layers", 28, d);
  c->vocab_size = r.Dim("padded_vocab_size", 65024, d);
  c->hidden_size = r.Dim("hidden_size", 4096, d);
  c->intermediate_size = r.Dim("ffn_hidden_size", 13696, d);
  c->num_attention_heads = r.Dim("num_attention_heads", 32, d);
  c->head_dim = r.Dim("kv_channels", 128, d);
  c->max_position_embeddings = r.Dim("seq_length", 2048);
  c->rms_norm_eps = r.Number("layernorm_epsilon", 1e-5);
  const bool multi_query = r.Bool("multi_query_attention", false);
  const int32_t groups = r.Int("multi_query_group_num", 1);
  c->num_key_value_heads = multi_query ? groups : c->num_attention_heads;
  c->attention_bias = r.Bool("add_qkv_bias", false);
  // The original implementation rotates half of each head, interleaved, base 10000 * rope_ratio.
  c->rope_theta = 10000.0 * r.Number("rope_ratio", 1.0);
  c->rotary_dim = c->head_dim / 2;
  c->tie_word_embeddings = false;
  if (!r.Bool("rmsnorm", true)) r.Problem("rmsnorm", "false (LayerNorm) is not supported; GLM uses RMSNorm");
  if (r.Bool("add_bias_linear", false))
    r.Problem("add_bias_linear", "true is not supported (no released GLM checkpoint uses it)");
  if (r.Bool("apply_residual_connection_post_layernorm", false))
    r.Problem("apply_residual_connection_post_layernorm", "true is not supported");
  if (!r.Bool("post_layer_norm", true)) r.Problem("post_layer_norm", "false is not supported");
  if (!r.Bool("original_rope", true)) r.Problem("original_rope", "false is not supported");
}

// The sizes transformers' Glm / Glm4 / Glm4v (text) configs share, with their defaults.
void ReadTransformersSizes(FieldReader& r, ModelConfig* c) {
  std::vector<std::string>* d = &c->defaulted_sizes;
  c->vocab_size = r.Dim("vocab_size", 151552, d);
  c->hidden_size = r.Dim("hidden_size", 4096, d);
  c->intermediate_size = r.Dim("intermediate_size", 13696, d);
  c->num_layers = r.Dim("num_hidden_layers", 40, d);
  c->num_attention_heads = r.Dim("num_attention_heads", 32, d);
}

void ReadTransformersGlm(const json& config, FieldReader& r, ModelConfig* c) {
  std::vector<std::string>* d = &c->defaulted_sizes;
  ReadTransformersSizes(r, c);
  // transformers: an explicit null means "same as attention heads"; absent means the default 2.
  if (config.contains("num_key_value_heads") && config["num_key_value_heads"].is_null()) {
    c->num_key_value_heads = c->num_attention_heads;
  } else {
    c->num_key_value_heads = r.Int("num_key_value_heads", 2);
  }
  // GlmConfig.head_dim defaults to 128 when absent (not hidden/heads); null means hidden/heads.
  if (config.contains("head_dim") && config["head_dim"].is_null()) {
    c->head_dim = c->num_attention_heads > 0 ? c->hidden_size / c->num_attention_heads : 0;
  } else {
    c->head_dim = r.Dim("head_dim", 128, d);
  }
  c->max_position_embeddings = r.Dim("max_position_embeddings", 131072);
  c->rms_norm_eps = r.Number("rms_norm_eps", 0.00000015625);
  c->tie_word_embeddings = r.Bool("tie_word_embeddings", false);
  c->attention_bias = r.Bool("attention_bias", true);
  c->sandwich_norms = c->architecture == Architecture::kGlm4;
  const std::string act = r.String("hidden_act", "silu");
  if (act != "silu") r.Problem("hidden_act", absl::StrCat("'", act, "' is not supported (expected \"silu\")"));

  // Rotary: newest transformers keep it in rope_parameters; older configs at top level.
  double theta = r.Number("rope_theta", 10000.0);
  double partial = r.Number("partial_rotary_factor", 0.5);
  if (r.Has("rope_scaling") && !config["rope_scaling"].is_object()) {
    r.Problem("rope_scaling", absl::StrCat("expected an object ({\"rope_type\": \"default\", ...}), found ",
                                           JsonTypeName(config["rope_scaling"])));
  } else if (r.Has("rope_scaling")) {
    const json& scaling = config["rope_scaling"];
    const std::string legacy = StringField(scaling, "type", "", "config.json: rope_scaling", r.sink());
    const std::string type = StringField(scaling, "rope_type", legacy, "config.json: rope_scaling", r.sink());
    if (type != "default")
      r.Problem("rope_scaling", absl::StrCat("rope type '", type, "' is not supported (only \"default\")"));
  }
  if (r.Has("rope_parameters")) {
    const json& rope = config["rope_parameters"];
    if (!rope.is_object()) {
      r.Problem("rope_parameters", absl::StrCat("expected an object, found ", rope.type_name()));
    } else {
      FieldReader rr(rope, "config.json: rope_parameters", r.sink());
      const std::string type = rr.String("rope_type", "default");
      if (type != "default") rr.Problem("rope_type", absl::StrCat("'", type, "' is not supported (only \"default\")"));
      theta = rr.Number("rope_theta", theta);
      partial = rr.Number("partial_rotary_factor", partial);
    }
  }
  c->rope_theta = theta;
  if (!(partial > 0.0 && partial <= 1.0)) {
    r.Problem("partial_rotary_factor", absl::StrCat("expected a value in (0, 1], found ", partial));
    partial = 0.5;
  }
  // transformers: dim = int(head_dim * partial_rotary_factor)
  c->rotary_dim = static_cast<int32_t>(c->head_dim * partial);
}

// A sub-object of config.json (text_config, vision_config, rope_parameters...). Absent or null
// reads as {} (every field at its default), as transformers builds a default sub-config.
const json& SubObject(const json& parent, const char* key, FieldReader& r) {
  static const json kEmpty = json::object();
  if (!r.Has(key)) return kEmpty;
  const json& value = parent[key];
  if (!value.is_object()) {
    r.Problem(key, absl::StrCat("expected an object, found ", value.type_name()));
    return kEmpty;
  }
  return value;
}

// mrope_section: a list of non-negative integers; keeps *out when absent or bad.
void ReadMropeSection(FieldReader& r, std::vector<int32_t>* out) {
  std::vector<int32_t> section;
  if (!r.IntList("mrope_section", &section)) return;
  for (int32_t s : section) {
    if (s < 0) {
      r.Problem("mrope_section", absl::StrCat("expected non-negative integers, found ", s));
      return;
    }
  }
  *out = section;
}

// Glm4vConfig: text_config (Glm4vTextConfig), vision_config (Glm4vVisionConfig) and the
// top-level token ids. Defaults are transformers 5.24's class defaults.
void ReadGlm4v(const json& config, FieldReader& top, ModelConfig* c) {
  const json& text = SubObject(config, "text_config", top);
  FieldReader r(text, "config.json: text_config", top.sink());
  r.set_prefix("text_config.");
  ReadTransformersSizes(r, c);
  if (text.contains("num_key_value_heads") && text["num_key_value_heads"].is_null()) {
    c->num_key_value_heads = c->num_attention_heads;
  } else {
    c->num_key_value_heads = r.Int("num_key_value_heads", 2);
  }
  // Glm4vTextAttention sizes its heads as hidden_size / num_attention_heads whatever head_dim
  // says, while its rotary would read head_dim: a different value cannot run.
  c->head_dim = c->num_attention_heads > 0 ? c->hidden_size / c->num_attention_heads : 0;
  if (c->num_attention_heads > 0 && c->hidden_size % c->num_attention_heads != 0) {
    r.Problem("hidden_size", absl::StrCat(c->hidden_size, " is not a multiple of num_attention_heads ",
                                          c->num_attention_heads, " (glm4v's head size is their quotient)"));
  }
  if (r.Has("head_dim") && r.Int("head_dim", c->head_dim) != c->head_dim) {
    r.Problem("head_dim", absl::StrCat("expected hidden_size / num_attention_heads = ", c->head_dim,
                                       " (transformers' Glm4vTextAttention uses that)"));
  }
  c->max_position_embeddings = r.Dim("max_position_embeddings", 32768);
  c->rms_norm_eps = r.Number("rms_norm_eps", 1e-5);
  c->attention_bias = true;  // Glm4vTextAttention: q/k/v always carry a bias
  c->sandwich_norms = true;
  const std::string act = r.String("hidden_act", "silu");
  if (act != "silu") r.Problem("hidden_act", absl::StrCat("'", act, "' is not supported (expected \"silu\")"));

  // Rotary: rope_parameters (transformers 5), or the released configs' top-level rope_theta /
  // partial_rotary_factor with rope_scaling {type: default, mrope_section}. Glm4vText reads
  // partial_rotary_factor with a default of 1.0 and mrope_section with [8, 12, 12].
  double theta = r.Number("rope_theta", 10000.0);
  double partial = r.Number("partial_rotary_factor", 1.0);
  std::vector<int32_t> mrope = {8, 12, 12};
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (!r.Has(key)) continue;
    const json& rope = SubObject(text, key, r);
    FieldReader rr(rope, absl::StrCat("config.json: text_config.", key), r.sink());
    const std::string type = rr.String("rope_type", rr.String("type", "default"));
    if (type != "default") {
      rr.Problem(rr.Has("rope_type") ? "rope_type" : "type",
                 absl::StrCat("'", type, "' is not supported (only \"default\")"));
    }
    theta = rr.Number("rope_theta", theta);
    partial = rr.Number("partial_rotary_factor", partial);
    ReadMropeSection(rr, &mrope);
  }
  c->rope_theta = theta;
  if (!(partial > 0.0 && partial <= 1.0)) {
    r.Problem("partial_rotary_factor", absl::StrCat("expected a value in (0, 1], found ", partial));
    partial = 1.0;
  }
  c->rotary_dim = static_cast<int32_t>(c->head_dim * partial);
  c->mrope_section = mrope;
  int64_t mrope_sum = 0;
  for (int32_t s : mrope) mrope_sum += s;
  if (mrope_sum * 2 != c->rotary_dim) {
    r.Problem(r.Has("rope_parameters") ? "rope_parameters.mrope_section"
              : r.Has("rope_scaling")  ? "rope_scaling.mrope_section"
                                       : "rope_parameters.mrope_section (absent: [8, 12, 12])",
              absl::StrCat("[", absl::StrJoin(mrope, ", "), "] sums to ", mrope_sum, " but the rotary dimension ",
                           c->rotary_dim, " (head_dim ", c->head_dim, " x partial_rotary_factor ", partial, ") has ",
                           c->rotary_dim / 2, " frequencies; they must be equal"));
  }

  // Pre-v5 saves put tie_word_embeddings inside text_config; transformers forwards a true one.
  c->tie_word_embeddings = top.Bool("tie_word_embeddings", false) || r.Bool("tie_word_embeddings", false);
  c->pad_token_id = r.Int("pad_token_id", top.Int("pad_token_id", -1));
  std::vector<int32_t> eos;
  if (r.IntList("eos_token_id", &eos)) {
    CheckEosIds(r, eos, c->vocab_size, VocabSizeField(Architecture::kGlm4v));
    c->eos_token_ids = eos;
  } else if (top.IntList("eos_token_id", &eos)) {
    CheckEosIds(top, eos, c->vocab_size, VocabSizeField(Architecture::kGlm4v));
    c->eos_token_ids = eos;
  }
  c->torch_dtype = top.String("torch_dtype", top.String("dtype", r.String("torch_dtype", r.String("dtype", ""))));

  VisionConfig v;
  const json& vision = SubObject(config, "vision_config", top);
  FieldReader vr(vision, "config.json: vision_config", top.sink());
  v.depth = vr.Int("depth", v.depth);
  v.hidden_size = vr.Int("hidden_size", v.hidden_size);
  v.num_heads = vr.Int("num_heads", v.num_heads);
  v.intermediate_size = vr.Int("intermediate_size", v.intermediate_size);
  v.out_hidden_size = vr.Int("out_hidden_size", v.out_hidden_size);
  v.patch_size = vr.Int("patch_size", v.patch_size);
  v.spatial_merge_size = vr.Int("spatial_merge_size", v.spatial_merge_size);
  v.temporal_patch_size = vr.Int("temporal_patch_size", v.temporal_patch_size);
  v.image_size = vr.Int("image_size", v.image_size);
  v.in_channels = vr.Int("in_channels", v.in_channels);
  v.rms_norm_eps = vr.Number("rms_norm_eps", v.rms_norm_eps);
  v.attention_bias = vr.Bool("attention_bias", v.attention_bias);
  v.hidden_act = vr.String("hidden_act", v.hidden_act);
  if (vr.Has("rope_parameters")) {
    const json& rope = SubObject(vision, "rope_parameters", vr);
    FieldReader rr(rope, "config.json: vision_config.rope_parameters", top.sink());
    const std::string type = rr.String("rope_type", "axial");
    if (type != "axial") rr.Problem("rope_type", absl::StrCat("'", type, "' is not supported (only \"axial\")"));
    v.rope_theta = rr.Number("rope_theta", v.rope_theta);
  }
  // Positive, and within bounds far above GLM-4.1V's (hidden 1536, 12 heads, intermediate 13696,
  // patch 14, merge 2, 3 channels), as the text sizes are: past them a config is corrupt, and the
  // shapes derived from it (a patch embedding of 2^30 x 2^20 features) are no shapes to report or
  // allocate. image_size is bounded through its position table below.
  for (auto [field, value, most] : {std::tuple<const char*, int32_t, int32_t>{"depth", v.depth, kMaxConfigLayers},
                                    {"hidden_size", v.hidden_size, 1 << 17},
                                    {"num_heads", v.num_heads, 1 << 12},
                                    {"intermediate_size", v.intermediate_size, 1 << 20},
                                    {"out_hidden_size", v.out_hidden_size, 1 << 17},
                                    {"patch_size", v.patch_size, 1 << 10},
                                    {"spatial_merge_size", v.spatial_merge_size, 64},
                                    {"temporal_patch_size", v.temporal_patch_size, 64},
                                    {"image_size", v.image_size, std::numeric_limits<int32_t>::max()},
                                    {"in_channels", v.in_channels, 64}}) {
    if (value <= 0) vr.Problem(field, absl::StrCat("expected a positive integer, found ", value));
    if (value > most) vr.Problem(field, absl::StrCat(value, " is implausibly large (at most ", most, ")"));
  }
  // The learned position embeddings are (image_size / patch_size)^2 rows.
  if (v.patch_size > 0 && v.image_size / v.patch_size > kMaxVisionPositionsSide) {
    vr.Problem("image_size", absl::StrCat(v.image_size, " / patch_size ", v.patch_size, " is more than ",
                                          kMaxVisionPositionsSide, " patches a side"));
  }
  // The blocks' axial rotary gives height and width a quarter of each head each (cos/sin are
  // concatenated twice): a head size not divisible by 4 cannot run.
  if (v.num_heads > 0 && v.hidden_size > 0 && (v.hidden_size % v.num_heads != 0 || v.head_dim() % 4 != 0)) {
    vr.Problem("num_heads", absl::StrCat("hidden_size ", v.hidden_size, " / num_heads ", v.num_heads,
                                         " must be a whole head size divisible by 4 (2-D rotary)"));
  }
  if (v.patch_size > 0 && v.image_size > 0 && v.image_size < v.patch_size) {
    vr.Problem("image_size", absl::StrCat(v.image_size, " is smaller than patch_size ", v.patch_size,
                                          " (no learned position embeddings)"));
  }
  if (v.out_hidden_size > 0 && c->hidden_size > 0 && v.out_hidden_size != c->hidden_size) {
    vr.Problem("out_hidden_size", absl::StrCat(v.out_hidden_size, " differs from text_config.hidden_size ",
                                               c->hidden_size, " (image features replace token embeddings)"));
  }
  if (!(v.rms_norm_eps > 0) || !std::isfinite(v.rms_norm_eps)) vr.Problem("rms_norm_eps", "expected a positive number");
  if (v.hidden_act != "silu") {
    vr.Problem("hidden_act", absl::StrCat("'", v.hidden_act, "' is not supported (expected \"silu\")"));
  }
  v.image_token_id = top.Int("image_token_id", v.image_token_id);
  v.image_start_token_id = top.Int("image_start_token_id", v.image_start_token_id);
  v.image_end_token_id = top.Int("image_end_token_id", v.image_end_token_id);
  v.video_token_id = top.Int("video_token_id", v.video_token_id);
  v.video_start_token_id = top.Int("video_start_token_id", v.video_start_token_id);
  v.video_end_token_id = top.Int("video_end_token_id", v.video_end_token_id);
  // Image ids are embedded before image features replace them: they must be in the vocabulary.
  for (auto [field, id] : {std::pair<const char*, int32_t>{"image_token_id", v.image_token_id},
                           {"image_start_token_id", v.image_start_token_id},
                           {"image_end_token_id", v.image_end_token_id},
                           {"video_token_id", v.video_token_id},
                           {"video_start_token_id", v.video_start_token_id},
                           {"video_end_token_id", v.video_end_token_id}}) {
    if (c->vocab_size > 0 && (id < 0 || id >= c->vocab_size)) {
      top.Problem(field, absl::StrCat(id, " is outside the vocabulary (", VocabSizeField(Architecture::kGlm4v), " ",
                                      c->vocab_size, ")"));
    }
  }
  c->vision = v;
}

// generation_config.json's temperature, top_p and top_k, the ones in range; the others noted in
// ignored_generation_values, never a load problem (a sampling default is no reason to refuse the
// weights). do_sample is not read: vLLM's OpenAI server takes the values alone, and so does ours.
void ReadSamplingDefaults(const json& generation, ModelConfig* c) {
  auto ignored = [&](const char* field, const json& value, const char* expected) {
    c->ignored_generation_values.push_back(
        absl::StrCat(field, ": ", JsonDump(value).substr(0, 64), " is not ", expected, "; not used as a default"));
  };
  auto number = [&](const char* field) -> std::optional<double> {
    auto it = generation.find(field);
    if (it == generation.end() || it->is_null()) return std::nullopt;
    if (!it->is_number()) {
      ignored(field, *it, "a number");
      return std::nullopt;
    }
    return it->get<double>();
  };
  if (std::optional<double> t = number("temperature")) {
    if (*t >= 0.0 && *t <= 2.0) {
      c->default_temperature = *t;
    } else {
      ignored("temperature", generation["temperature"], "in [0, 2]");
    }
  }
  if (std::optional<double> p = number("top_p")) {
    if (*p > 0.0 && *p <= 1.0) {
      c->default_top_p = *p;
    } else {
      ignored("top_p", generation["top_p"], "in (0, 1]");
    }
  }
  if (auto it = generation.find("top_k"); it != generation.end() && !it->is_null()) {
    if (it->is_number_integer() && FitsInt32(*it) && it->get<int64_t>() >= 0) {
      c->default_top_k = it->get<int32_t>();
    } else {
      ignored("top_k", *it, "an integer >= 0");
    }
  }
}

}  // namespace

const char* ArchitectureName(Architecture arch) {
  switch (arch) {
    case Architecture::kChatGLM:
      return "chatglm";
    case Architecture::kGlm:
      return "glm";
    case Architecture::kGlm4:
      return "glm4";
    case Architecture::kGlm4v:
      return "glm4v";
  }
  return "unknown";
}

const char* VocabSizeField(Architecture arch) {
  switch (arch) {
    case Architecture::kChatGLM:
      return "padded_vocab_size";
    case Architecture::kGlm4v:
      return "text_config.vocab_size";
    default:
      return "vocab_size";
  }
}

namespace {

// The config as read, every problem found added to `problems`; an error status only where no
// config could be read at all.
absl::StatusOr<ModelConfig> ReadModelConfig(const std::string& directory, std::vector<std::string>* out_problems) {
  std::vector<std::string>& problems = *out_problems;
  namespace fs = std::filesystem;
  const fs::path dir(directory);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("model directory '", directory, "' does not exist or is not a directory"));
  }
  // The link itself: a symlink loop or a dangling link is "not a regular file", not "missing".
  if (!fs::exists(fs::symlink_status(dir / "config.json", ec))) {
    return absl::FailedPreconditionError(
        absl::StrCat("config.json: missing from '", directory, "' (every checkpoint needs one)"));
  }
  json config;
  if (!ReadJsonObject(dir / "config.json", &config, &problems)) {
    return absl::FailedPreconditionError(absl::StrJoin(problems, "\n"));
  }
  ModelConfig c;
  if (!DetectArchitecture(config, &c.architecture, &problems)) {
    return absl::FailedPreconditionError(absl::StrJoin(problems, "\n"));
  }
  FieldReader reader(config, "config.json", &problems);
  const bool glm4v = c.architecture == Architecture::kGlm4v;
  std::vector<int32_t> config_eos;
  if (glm4v) {
    // Glm4vConfig declares no eos default: only ids a file names stop generation.
    ReadGlm4v(config, reader, &c);
    config_eos = c.eos_token_ids;
  } else {
    if (c.architecture == Architecture::kChatGLM) {
      ReadOriginalChatGlm(reader, &c);
    } else {
      ReadTransformersGlm(config, reader, &c);
    }
    c.torch_dtype = reader.String("torch_dtype", reader.String("dtype", ""));
    // eos: every id named by config.json or generation_config.json. Absent, GlmConfig's default
    // (those of its ids inside the vocabulary: a small model's vocabulary has none of them); null,
    // none (transformers keeps the None).
    if (reader.IntList("eos_token_id", &config_eos)) {
      CheckEosIds(reader, config_eos, c.vocab_size, VocabSizeField(c.architecture));
    } else if (!config.contains("eos_token_id") && c.architecture != Architecture::kChatGLM) {
      for (int32_t id : {151329, 151336, 151338}) {
        if (id < c.vocab_size) config_eos.push_back(id);
      }
    }
    c.eos_token_ids = config_eos;
    c.pad_token_id = reader.Int("pad_token_id", c.architecture == Architecture::kChatGLM ? -1 : 151329);
  }
  if (fs::exists(fs::symlink_status(dir / "generation_config.json", ec))) {
    json generation;
    if (ReadJsonObject(dir / "generation_config.json", &generation, &problems)) {
      FieldReader gen_reader(generation, "generation_config.json", &problems);
      std::vector<int32_t> gen_eos;
      if (gen_reader.IntList("eos_token_id", &gen_eos)) {
        CheckEosIds(gen_reader, gen_eos, c.vocab_size, absl::StrCat("config.json ", VocabSizeField(c.architecture)));
        // Union: chat checkpoints list <|user|>/<|observation|> in one file and <|endoftext|>
        // in the other, and generation must stop at any of them.
        for (int32_t id : config_eos) {
          if (std::find(gen_eos.begin(), gen_eos.end(), id) == gen_eos.end()) gen_eos.push_back(id);
        }
        c.eos_token_ids = gen_eos;
      }
      ReadSamplingDefaults(generation, &c);
    }
  }

  // Sizes must be positive and consistent before any tensor shape can be derived from them.
  // glm4v's text fields live in text_config; name them where they are.
  const std::string in = glm4v ? "text_config." : "";
  // The upper bounds are far above any GLM (GLM-4-9B: 40 layers, hidden 4096, vocab 151,552, 1M
  // context for -1m): a config past them is corrupt, and sizing tensors or reports from it would
  // take unbounded memory and time.
  const json& sizes_object =
      glm4v && config.contains("text_config") && config["text_config"].is_object() ? config["text_config"] : config;
  auto require_positive = [&](const char* field, int32_t value, int32_t most) {
    // A value of the wrong type or range was reported as such where it was read (read as 0).
    const auto it = sizes_object.find(field);
    if (value <= 0 && it != sizes_object.end() && !it->is_null() && !FitsInt32(*it)) return;
    if (value <= 0) {
      const bool null = sizes_object.contains(field) && sizes_object[field].is_null();
      reader.Problem(in + field, absl::StrCat("expected a positive integer, found ",
                                              null ? std::string("null") : absl::StrCat(value)));
    } else if (value > most) {
      reader.Problem(in + field, absl::StrCat(value, " is implausibly large (at most ", most, ")"));
    }
  };
  const bool original = c.architecture == Architecture::kChatGLM;
  require_positive(original ? "num_layers" : "num_hidden_layers", c.num_layers, kMaxConfigLayers);
  require_positive("hidden_size", c.hidden_size, 1 << 17);
  require_positive(original ? "ffn_hidden_size" : "intermediate_size", c.intermediate_size, 1 << 20);
  require_positive("num_attention_heads", c.num_attention_heads, 1 << 12);
  require_positive(original ? "multi_query_group_num" : "num_key_value_heads", c.num_key_value_heads, 1 << 12);
  require_positive(original ? "kv_channels"
                   : glm4v  ? "hidden_size / num_attention_heads"
                            : "head_dim",
                   c.head_dim, 1 << 12);
  require_positive(original ? "padded_vocab_size" : "vocab_size", c.vocab_size, 1 << 24);
  require_positive(original ? "seq_length" : "max_position_embeddings", c.max_position_embeddings, 1 << 27);
  if (c.num_attention_heads > 0 && c.num_key_value_heads > 0 && c.num_attention_heads % c.num_key_value_heads != 0) {
    reader.Problem(in + (original ? "multi_query_group_num" : "num_key_value_heads"),
                   absl::StrCat(c.num_key_value_heads, " does not divide num_attention_heads ", c.num_attention_heads));
  }
  if (c.rotary_dim % 2 != 0 || c.rotary_dim < 0 || c.rotary_dim > c.head_dim) {
    // The original ChatGLM rotates half of each kv_channels-wide head: kv_channels is the knob.
    reader.Problem(original ? "kv_channels" : in + "partial_rotary_factor",
                   original ? absl::StrCat(c.head_dim, " gives a rotary dimension of ", c.rotary_dim,
                                           " (half of it); expected a multiple of 4")
                            : absl::StrCat("gives a rotary dimension of ", c.rotary_dim, " for head_dim ", c.head_dim,
                                           "; expected an even number no larger than head_dim"));
  }
  if (!(c.rms_norm_eps > 0) || !std::isfinite(c.rms_norm_eps)) {
    reader.Problem(in + (original ? "layernorm_epsilon" : "rms_norm_eps"), "expected a positive number");
  }
  if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta)) {
    reader.Problem(in + (original ? "rope_ratio" : "rope_theta"), "expected a positive rotary base");
  }
  return c;
}

}  // namespace

absl::StatusOr<ModelConfig> LoadModelConfigWithProblems(const std::string& directory,
                                                        std::vector<std::string>* problems) {
  // Every field is read through type checks; this is the net under any the readers missed.
  try {
    return ReadModelConfig(directory, problems);
  } catch (const nlohmann::json::exception& e) {
    return absl::FailedPreconditionError(
        absl::StrCat("config.json: a field of an unexpected type or value: ", JsonErrorText(e)));
  }
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& directory) {
  std::vector<std::string> problems;
  absl::StatusOr<ModelConfig> config = LoadModelConfigWithProblems(directory, &problems);
  if (config.ok() && !problems.empty()) return absl::FailedPreconditionError(absl::StrJoin(problems, "\n"));
  return config;
}

}  // namespace glmserve
