#include "runtime/tokenizer/bpe.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"

namespace glmserve::tokenizer {
namespace {

// GPT-2 bytes_to_unicode: printable bytes map to themselves, the rest to U+0100 + n.
struct ByteAlphabet {
  int32_t byte_of_cp[324];
  ByteAlphabet() {
    std::fill(std::begin(byte_of_cp), std::end(byte_of_cp), -1);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const int cp = printable ? b : 256 + n++;
      byte_of_cp[cp] = b;
    }
  }
};
const ByteAlphabet& Alphabet() {
  static const ByteAlphabet* a = new ByteAlphabet();
  return *a;
}

}  // namespace

std::string ByteLevelDecode(std::string_view token, bool* ok) {
  std::string out;
  *ok = true;
  size_t i = 0;
  while (i < token.size()) {
    const unsigned char c = token[i];
    uint32_t cp;
    size_t len;
    if (c < 0x80) {
      cp = c, len = 1;
    } else if ((c >> 5) == 6 && i + 1 < token.size()) {
      cp = ((c & 0x1F) << 6) | (token[i + 1] & 0x3F), len = 2;
    } else {
      *ok = false;
      return out;
    }
    if (cp >= 324 || Alphabet().byte_of_cp[cp] < 0) {
      *ok = false;
      return out;
    }
    out.push_back(static_cast<char>(Alphabet().byte_of_cp[cp]));
    i += len;
  }
  return out;
}

absl::StatusOr<BytePairModel> BytePairModel::FromHf(const std::vector<std::pair<std::string, int32_t>>& vocab,
                                                    const std::vector<std::pair<std::string, std::string>>& merges) {
  BytePairModel m;
  std::unordered_map<std::string, int32_t> by_token;
  int32_t max_id = -1;
  for (const auto& [tok, id] : vocab) {
    if (id < 0 || id >= kMaxTokenId) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer.json: model.vocab '", tok, "' has id ", id, ", outside [0, ", kMaxTokenId, ")"));
    }
    max_id = std::max(max_id, id);
  }
  if (max_id < 0) return absl::InvalidArgumentError("tokenizer.json: model.vocab is empty");
  m.id_to_bytes_.assign(max_id + 1, std::string());
  for (const auto& [tok, id] : vocab) {
    if (id < 0) return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: negative id for ", tok));
    bool ok;
    std::string bytes = ByteLevelDecode(tok, &ok);
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: vocab token '", tok,
                                                     "' is not in the byte-level alphabet (not a byte-level BPE)"));
    }
    m.id_to_bytes_[id] = bytes;
    m.bytes_to_id_.emplace(bytes, id);
    by_token.emplace(tok, id);
  }
  for (size_t i = 0; i < merges.size(); ++i) {
    auto a = by_token.find(merges[i].first), b = by_token.find(merges[i].second);
    auto r = by_token.find(merges[i].first + merges[i].second);
    if (a == by_token.end() || b == by_token.end() || r == by_token.end()) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: merge ", i, " '", merges[i].first, " ",
                                                     merges[i].second, "' names a token not in model.vocab"));
    }
    m.merges_.emplace(Key(a->second, b->second), Merge{static_cast<int32_t>(i), r->second});
  }
  for (int b = 0; b < 256; ++b) {
    auto it = m.bytes_to_id_.find(std::string(1, static_cast<char>(b)));
    m.byte_id_[b] = it == m.bytes_to_id_.end() ? -1 : it->second;
  }
  return m;
}

absl::StatusOr<BytePairModel> BytePairModel::FromRanks(std::vector<std::pair<std::string, int32_t>> ranks) {
  BytePairModel m;
  int32_t max_id = -1;
  for (const auto& [bytes, id] : ranks) {
    if (id < 0 || id >= kMaxTokenId) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.model: rank ", id, " outside [0, ", kMaxTokenId, ")"));
    }
    max_id = std::max(max_id, id);
  }
  if (max_id < 0) return absl::InvalidArgumentError("tokenizer.model: no ranks");
  m.id_to_bytes_.assign(max_id + 1, std::string());
  for (auto& [bytes, id] : ranks) {
    if (id < 0) return absl::InvalidArgumentError("tokenizer.model: negative rank");
    m.id_to_bytes_[id] = bytes;
    m.bytes_to_id_.emplace(std::move(bytes), id);
  }
  // Every split of a multi-byte token into two tokens is a merge with the token's rank.
  for (int32_t id = 0; id <= max_id; ++id) {
    const std::string& t = m.id_to_bytes_[id];
    for (size_t k = 1; k < t.size(); ++k) {
      auto a = m.bytes_to_id_.find(t.substr(0, k));
      if (a == m.bytes_to_id_.end()) continue;
      auto b = m.bytes_to_id_.find(t.substr(k));
      if (b == m.bytes_to_id_.end()) continue;
      m.merges_.emplace(Key(a->second, b->second), Merge{id, id});
    }
  }
  for (int b = 0; b < 256; ++b) {
    auto it = m.bytes_to_id_.find(std::string(1, static_cast<char>(b)));
    m.byte_id_[b] = it == m.bytes_to_id_.end() ? -1 : it->second;
  }
  m.whole_piece_lookup_ = true;
  return m;
}

const std::string& BytePairModel::Bytes(int32_t id) const {
  static const std::string* empty = new std::string();
  if (id < 0 || id >= size()) return *empty;
  return id_to_bytes_[id];
}

void BytePairModel::EncodePiece(std::string_view piece, std::vector<int32_t>* out) const {
  if (piece.empty()) return;
  if (whole_piece_lookup_) {
    auto it = bytes_to_id_.find(std::string(piece));
    if (it != bytes_to_id_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  // Parts start as single bytes; repeatedly merge the adjacent pair with the lowest priority
  // (leftmost on ties). Pieces are short (the pre-tokenizer bounds them), so a linear scan per
  // merge is fast and has no allocation beyond `parts`.
  std::vector<int32_t> parts;
  parts.reserve(piece.size());
  for (unsigned char c : piece) {
    if (byte_id_[c] >= 0) parts.push_back(byte_id_[c]);  // a byte outside the vocab is dropped (HF)
  }
  constexpr int32_t kNone = std::numeric_limits<int32_t>::max();
  while (parts.size() > 1) {
    int32_t best = kNone, best_result = -1;
    size_t best_pos = 0;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      auto it = merges_.find(Key(parts[i], parts[i + 1]));
      if (it != merges_.end() && it->second.priority < best) {
        best = it->second.priority;
        best_result = it->second.result;
        best_pos = i;
      }
    }
    if (best == kNone) break;
    parts[best_pos] = best_result;
    parts.erase(parts.begin() + best_pos + 1);
  }
  out->insert(out->end(), parts.begin(), parts.end());
}

}  // namespace glmserve::tokenizer
