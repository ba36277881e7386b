// Debian's libsentencepiece.so.0 carries its own copy of protobuf-lite with exported symbols.
// Linked into a process that also has the system libprotobuf (gRPC), whichever comes first in the
// link order interposes the other's symbols and static initialization crashes. So the library is
// never linked: it is dlopen'ed with RTLD_LOCAL | RTLD_DEEPBIND (its protobuf stays private and it
// binds to its own copy), and only used through SentencePieceProcessor's virtual methods (vtable
// calls need no symbols); the constructor and util::Status's destructor/ToString come from dlsym.
#include "runtime/tokenizer/sp_wrapper.h"

#include <dlfcn.h>
#include <sentencepiece_processor.h>

#include <mutex>
#include <new>

namespace glmserve::tokenizer {
namespace {

using SpStatus = sentencepiece::util::Status;

// The sanitizers' runtimes refuse RTLD_DEEPBIND (they must see every allocation); sanitized builds
// (GLMSERVE_SANITIZE, for the tests) do without it, so there the library's protobuf may meet the
// system's in a process that has both (the server; not the tokenizer tests).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr int kDeepBind = 0;
#else
constexpr int kDeepBind = RTLD_DEEPBIND;
#endif

struct SpLibrary {
  void* handle = nullptr;
  void (*construct)(void*) = nullptr;
  void (*status_destroy)(SpStatus*) = nullptr;
  std::string (*status_to_string)(const SpStatus*) = nullptr;
  std::string error;
};

const SpLibrary& Library() {
  static SpLibrary* lib = [] {
    auto* l = new SpLibrary();
    l->handle = dlopen("libsentencepiece.so.0", RTLD_NOW | RTLD_LOCAL | kDeepBind);
    if (l->handle == nullptr) {
      const char* e = dlerror();
      l->error = std::string("cannot load libsentencepiece.so.0 (Debian: libsentencepiece0): ") + (e ? e : "");
      return l;
    }
    l->construct =
        reinterpret_cast<void (*)(void*)>(dlsym(l->handle, "_ZN13sentencepiece22SentencePieceProcessorC1Ev"));
    l->status_destroy = reinterpret_cast<void (*)(SpStatus*)>(dlsym(l->handle, "_ZN13sentencepiece4util6StatusD1Ev"));
    l->status_to_string = reinterpret_cast<std::string (*)(const SpStatus*)>(
        dlsym(l->handle, "_ZNK13sentencepiece4util6Status8ToStringB5cxx11Ev"));
    if (l->construct == nullptr || l->status_destroy == nullptr || l->status_to_string == nullptr) {
      l->error = "libsentencepiece.so.0 lacks the expected symbols (ABI other than 0.1.x)";
    }
    return l;
  }();
  return *lib;
}

// Holds a util::Status returned by value without running its (unlinked) destructor inline.
class StatusHolder {
 public:
  template <typename F>
  explicit StatusHolder(F&& call) {
    new (&u_.status) SpStatus(call());  // guaranteed elision: constructed in place
  }
  ~StatusHolder() { Library().status_destroy(&u_.status); }
  bool ok() const { return u_.status.ok(); }
  std::string ToString() const { return Library().status_to_string(&u_.status); }

 private:
  union U {
    U() {}
    ~U() {}
    SpStatus status;
  } u_;
};

}  // namespace

struct SentencePiece::Impl {
  sentencepiece::SentencePieceProcessor* sp = nullptr;
  ~Impl() {
    if (sp != nullptr) {
      sp->~SentencePieceProcessor();  // virtual: the library's destructor
      ::operator delete(static_cast<void*>(sp));
    }
  }
};

SentencePiece::SentencePiece() : impl_(std::make_unique<Impl>()) {}
SentencePiece::~SentencePiece() = default;

std::string SentencePiece::Load(const std::string& serialized_model) {
  const SpLibrary& lib = Library();
  if (!lib.error.empty()) return lib.error;
  void* mem = ::operator new(sizeof(sentencepiece::SentencePieceProcessor));
  lib.construct(mem);
  impl_->sp = static_cast<sentencepiece::SentencePieceProcessor*>(mem);
  StatusHolder st([&] { return impl_->sp->LoadFromSerializedProto(serialized_model); });
  return st.ok() ? std::string() : st.ToString();
}
std::vector<int> SentencePiece::Encode(const std::string& text) const {
  std::vector<int> ids;
  StatusHolder st([&] { return impl_->sp->Encode(text, &ids); });
  return ids;
}
std::string SentencePiece::Decode(const std::vector<int>& ids) const {
  std::string s;
  StatusHolder st([&] { return impl_->sp->Decode(ids, &s); });
  return s;
}
int SentencePiece::size() const { return impl_->sp->GetPieceSize(); }
int SentencePiece::eos_id() const { return impl_->sp->eos_id(); }
std::string SentencePiece::IdToPiece(int id) const { return impl_->sp->IdToPiece(id); }
int SentencePiece::PieceToId(const std::string& piece) const { return impl_->sp->PieceToId(piece); }
bool SentencePiece::IsControl(int id) const { return impl_->sp->IsControl(id); }
bool SentencePiece::IsUnknown(int id) const { return impl_->sp->IsUnknown(id); }
bool SentencePiece::IsByte(int id) const { return impl_->sp->IsByte(id); }

}  // namespace glmserve::tokenizer
