// Thin pimpl over Debian's libsentencepiece. Its header declares its own absl::string_view alias,
// which clashes with Debian's abseil, so only sp_wrapper.cc includes it (and no abseil header).
#ifndef GLMSERVE_RUNTIME_TOKENIZER_SP_WRAPPER_H_
#define GLMSERVE_RUNTIME_TOKENIZER_SP_WRAPPER_H_

#include <memory>
#include <string>
#include <vector>

namespace glmserve::tokenizer {

class SentencePiece {
 public:
  SentencePiece();
  ~SentencePiece();
  // Empty string on success, else the error.
  std::string Load(const std::string& serialized_model);
  std::vector<int> Encode(const std::string& text) const;
  std::string Decode(const std::vector<int>& ids) const;
  int size() const;
  int eos_id() const;
  std::string IdToPiece(int id) const;
  // The piece's id; the unknown id where the model has no such piece.
  int PieceToId(const std::string& piece) const;
  bool IsControl(int id) const;
  bool IsUnknown(int id) const;
  bool IsByte(int id) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace glmserve::tokenizer

#endif  // GLMSERVE_RUNTIME_TOKENIZER_SP_WRAPPER_H_
