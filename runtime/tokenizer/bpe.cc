#include "runtime/tokenizer/bpe.h"

#include <algorithm>
#include <functional>
#include <limits>
#include <queue>

#include "absl/strings/str_cat.h"
#include "runtime/shown_value.h"

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
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: model.merges[", i, "] '",
                                                     ShownValue(merges[i].first), " ", ShownValue(merges[i].second),
                                                     "' names a token not in model.vocab"));
    }
    // A pair listed twice takes its last rank, as tokenizers' BPE builds its merge map.
    m.merges_.insert_or_assign(Key(a->second, b->second), Merge{static_cast<int32_t>(i), r->second});
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
  // (leftmost on ties), as HF tokenizers and tiktoken do. Nothing bounds a piece's length (the
  // pre-tokenizer's runs of "=", spaces or letters are unbounded; a prompt may be megabytes of
  // one), so the pairs wait in a heap and the parts form a linked list: O(n log n) where a scan
  // per merge was O(n^2) (131 KB of "=" took 29 s).
  struct Part {
    int32_t id;
    int32_t prev;  // index of the part before, -1 at the start
    int32_t next;  // index of the part after, -1 at the end
  };
  std::vector<Part> parts;
  parts.reserve(piece.size());
  for (unsigned char c : piece) {
    if (byte_id_[c] < 0) continue;  // a byte outside the vocab is dropped (HF)
    const int32_t index = static_cast<int32_t>(parts.size());
    parts.push_back({byte_id_[c], index - 1, -1});
    if (index > 0) parts[index - 1].next = index;
  }
  if (parts.empty()) return;
  // A pair by its left part and its merge's priority (8 bytes: a run of megabytes holds one a
  // byte). Parts keep their byte order, so the left part's index orders ties leftmost-first. An
  // entry is stale once the pair at its left part (absorbed: id -1) merges at another priority;
  // a pair there that merges at the same priority is the one to take at that place either way.
  struct Candidate {
    int32_t priority;
    int32_t left;
    bool operator>(const Candidate& o) const { return priority != o.priority ? priority > o.priority : left > o.left; }
  };
  auto merge_at = [&](int32_t left) -> const Merge* {
    if (left < 0 || parts[left].id < 0 || parts[left].next < 0) return nullptr;
    auto it = merges_.find(Key(parts[left].id, parts[parts[left].next].id));
    return it == merges_.end() ? nullptr : &it->second;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto push_pair = [&](int32_t left) {
    if (const Merge* m = merge_at(left)) heap.push({m->priority, left});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(parts.size()); ++i) push_pair(i);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    const Merge* m = merge_at(c.left);
    if (m == nullptr || m->priority != c.priority) continue;
    Part& left = parts[c.left];
    Part& right = parts[left.next];
    left.id = m->result;
    left.next = right.next;
    if (right.next >= 0) parts[right.next].prev = c.left;
    right.id = -1;
    push_pair(left.prev);
    push_pair(c.left);
  }
  for (int32_t i = 0; i >= 0; i = parts[i].next) out->push_back(parts[i].id);
}

}  // namespace glmserve::tokenizer
