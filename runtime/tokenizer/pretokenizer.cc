#include "runtime/tokenizer/pretokenizer.h"

#include <re2/re2.h>

#include "absl/strings/str_cat.h"

namespace glmserve::tokenizer {

const char kGpt2Pattern[] = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char kGlm4Pattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

namespace {

constexpr std::string_view kLookaheadTail = R"(|\s+(?!\S)|\s+)";
const std::string kSpaceClassBody = R"(\t-\r\x{85}\p{Z})";

// Rewrites \s and \S to Unicode White_Space (RE2's are ASCII-only).
absl::StatusOr<std::string> ToRe2(std::string_view p) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char n = p[i + 1];
      if (n == 's') {
        out += in_class ? std::string(kSpaceClassBody) : absl::StrCat("[", kSpaceClassBody, "]");
      } else if (n == 'S') {
        if (in_class) return absl::UnimplementedError("tokenizer regex: \\S inside a character class");
        out += absl::StrCat("[^", kSpaceClassBody, "]");
      } else {
        out += c;
        out += n;
      }
      ++i;
      continue;
    }
    if (c == '[' && !in_class)
      in_class = true;
    else if (c == ']' && in_class)
      in_class = false;
    if (!in_class && c == '(' && i + 2 < p.size() && p[i + 1] == '?' &&
        (p[i + 2] == '=' || p[i + 2] == '!' || p[i + 2] == '<')) {
      return absl::UnimplementedError(absl::StrCat(
          "tokenizer regex: lookaround other than a trailing `\\s+(?!\\S)|\\s+` is not supported: ", std::string(p)));
    }
    out += c;
  }
  return out;
}

}  // namespace

uint32_t DecodeUtf8(std::string_view s, size_t i, size_t* len) {
  const unsigned char c = s[i];
  *len = 1;
  if (c < 0x80) return c;
  int n = (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (n == 0 || i + n > s.size()) return c;
  uint32_t cp = c & (0x7F >> n);
  for (int k = 1; k < n; ++k) {
    const unsigned char d = s[i + k];
    if ((d >> 6) != 2) return c;
    cp = (cp << 6) | (d & 0x3F);
  }
  *len = n;
  return cp;
}

bool IsUnicodeSpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

RegexSplitter::~RegexSplitter() = default;

absl::StatusOr<std::unique_ptr<RegexSplitter>> RegexSplitter::Create(std::string_view pattern) {
  std::unique_ptr<RegexSplitter> s(new RegexSplitter());
  std::string_view head = pattern;
  const bool lookahead = pattern.size() > kLookaheadTail.size() &&
                         pattern.substr(pattern.size() - kLookaheadTail.size()) == kLookaheadTail;
  if (lookahead) head = pattern.substr(0, pattern.size() - kLookaheadTail.size());
  auto head_re2 = ToRe2(head);
  if (!head_re2.ok()) return head_re2.status();
  RE2::Options opt;
  opt.set_log_errors(false);
  opt.set_max_mem(64 << 20);
  const std::string main = lookahead ? absl::StrCat(*head_re2, "|[", kSpaceClassBody, "]+") : *head_re2;
  s->re_ = std::make_unique<RE2>(main, opt);
  if (!s->re_->ok()) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer regex does not compile in RE2: ", s->re_->error()));
  }
  if (lookahead) {
    s->head_ = std::make_unique<RE2>(*head_re2, opt);
    if (!s->head_->ok()) return absl::InvalidArgumentError(s->head_->error());
  }
  return s;
}

void RegexSplitter::Split(std::string_view text, std::vector<std::string_view>* pieces) const {
  size_t pos = 0;
  re2::StringPiece input(text.data(), text.size());
  while (pos < text.size()) {
    re2::StringPiece m;
    if (!re_->Match(input, pos, text.size(), RE2::UNANCHORED, &m, 1)) {
      pieces->push_back(text.substr(pos));
      return;
    }
    size_t start = m.data() - text.data(), end = start + m.size();
    if (start > pos) pieces->push_back(text.substr(pos, start - pos));  // gap
    if (end == start) {                                                 // empty match: take one character as a gap
      size_t len;
      DecodeUtf8(text, start, &len);
      pieces->push_back(text.substr(start, len));
      pos = start + len;
      continue;
    }
    if (head_ != nullptr && end < text.size()) {
      // `\s+(?!\S)|\s+` emulation: a whitespace run W matched by the `\s+` branch and followed by
      // a non-space gives W minus its last character (when W has at least two characters).
      size_t i = start, chars = 0, last = start, len = 0;
      bool all_space = true;
      while (i < end) {
        if (!IsUnicodeSpace(DecodeUtf8(text, i, &len))) {
          all_space = false;
          break;
        }
        last = i;
        i += len;
        ++chars;
      }
      if (all_space && chars >= 2 && !head_->Match(input, start, text.size(), RE2::ANCHOR_START, nullptr, 0)) {
        end = last;
      }
    }
    pieces->push_back(text.substr(start, end - start));
    pos = end;
  }
}

}  // namespace glmserve::tokenizer
