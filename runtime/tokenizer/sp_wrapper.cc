#include "runtime/tokenizer/sp_wrapper.h"

#include <sentencepiece_processor.h>

namespace glmserve::tokenizer {

struct SentencePiece::Impl {
  sentencepiece::SentencePieceProcessor sp;
};

SentencePiece::SentencePiece() : impl_(std::make_unique<Impl>()) {}
SentencePiece::~SentencePiece() = default;

std::string SentencePiece::Load(const std::string& serialized_model) {
  const auto st = impl_->sp.LoadFromSerializedProto(serialized_model);
  return st.ok() ? std::string() : st.ToString();
}
std::vector<int> SentencePiece::Encode(const std::string& text) const {
  std::vector<int> ids;
  impl_->sp.Encode(text, &ids).IgnoreError();
  return ids;
}
std::string SentencePiece::Decode(const std::vector<int>& ids) const {
  std::string s;
  impl_->sp.Decode(ids, &s).IgnoreError();
  return s;
}
int SentencePiece::size() const { return impl_->sp.GetPieceSize(); }
int SentencePiece::eos_id() const { return impl_->sp.eos_id(); }
std::string SentencePiece::IdToPiece(int id) const { return impl_->sp.IdToPiece(id); }
bool SentencePiece::IsControl(int id) const { return impl_->sp.IsControl(id); }
bool SentencePiece::IsUnknown(int id) const { return impl_->sp.IsUnknown(id); }
bool SentencePiece::IsByte(int id) const { return impl_->sp.IsByte(id); }

}  // namespace glmserve::tokenizer
