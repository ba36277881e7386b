// Byte-level BPE over raw bytes, shared by tokenizer.json (HF merges) and tiktoken ranks.
#ifndef GLMSERVE_RUNTIME_TOKENIZER_BPE_H_
#define GLMSERVE_RUNTIME_TOKENIZER_BPE_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"

namespace glmserve::tokenizer {

// Token ids are below this (GLM-4's vocabulary is 151,552): tables indexed by id are sized from the
// files' largest id, so a corrupt one must not ask for billions of entries.
inline constexpr int32_t kMaxTokenId = 1 << 24;

class BytePairModel {
 public:
  // HF tokenizer.json: vocab keys and merges are in GPT-2's byte-to-unicode alphabet.
  // merges[i] = "a b" or ["a", "b"]; priority = i.
  static absl::StatusOr<BytePairModel> FromHf(const std::vector<std::pair<std::string, int32_t>>& vocab,
                                              const std::vector<std::pair<std::string, std::string>>& merges);
  // tiktoken: token bytes -> rank (= id). Two parts merge when their concatenation has a rank;
  // the lowest rank merges first (tiktoken's rule). Whole pieces found in the ranks are one id.
  static absl::StatusOr<BytePairModel> FromRanks(std::vector<std::pair<std::string, int32_t>> ranks);

  // Appends the ids of one pre-tokenized piece (raw bytes).
  void EncodePiece(std::string_view piece, std::vector<int32_t>* out) const;
  // Raw bytes of an id ("" if not a BPE id).
  const std::string& Bytes(int32_t id) const;
  int32_t size() const { return static_cast<int32_t>(id_to_bytes_.size()); }

 private:
  struct Merge {
    int32_t priority;
    int32_t result;
  };
  static uint64_t Key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  std::vector<std::string> id_to_bytes_;
  std::unordered_map<std::string, int32_t> bytes_to_id_;
  std::unordered_map<uint64_t, Merge> merges_;
  int32_t byte_id_[256];
  bool whole_piece_lookup_ = false;
};

// GPT-2's byte <-> unicode alphabet used by HF byte-level BPE.
std::string ByteLevelDecode(std::string_view token, bool* ok);

}  // namespace glmserve::tokenizer

#endif  // GLMSERVE_RUNTIME_TOKENIZER_BPE_H_
