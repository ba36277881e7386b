// A byte-weighted cap on work in flight, shared by the gRPC and the HTTP front ends: prompt text
// being tokenized. Tokenizing takes transient memory of several times the text (up to ~20x for a
// single pre-tokenizer run, runtime/tokenizer/bpe.cc), on the transport's threads, whose number
// gRPC grows on demand: without a cap, many large prompts at once could take the host's memory.
// No gRPC, no LibTorch (tests/request/request_session_test.cc).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>

namespace glmserve {

class ByteBudget {
 public:
  // limit_bytes <= 0: no cap (every TryAcquire succeeds; nothing is counted).
  explicit ByteBudget(int64_t limit_bytes) : limit_(limit_bytes) {}
  ByteBudget(const ByteBudget&) = delete;
  ByteBudget& operator=(const ByteBudget&) = delete;

  // A hold on `bytes` until the returned pointer's last copy goes, or null when the holds in flight
  // plus `bytes` would pass the limit. A request larger than the whole limit is let in alone, so
  // that every size can pass when the server is otherwise idle. The budget must outlive its holds.
  std::shared_ptr<void> TryAcquire(int64_t bytes) {
    if (limit_ <= 0 || bytes <= 0) return std::shared_ptr<void>(this, [](ByteBudget*) {});
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (in_flight_ > 0 && in_flight_ + bytes > limit_) return nullptr;
      in_flight_ += bytes;
    }
    return std::shared_ptr<void>(this, [bytes](ByteBudget* budget) {
      std::lock_guard<std::mutex> lock(budget->mu_);
      budget->in_flight_ -= bytes;
    });
  }

  int64_t in_flight() const {
    std::lock_guard<std::mutex> lock(mu_);
    return in_flight_;
  }
  int64_t limit() const { return limit_; }

 private:
  const int64_t limit_;
  mutable std::mutex mu_;
  int64_t in_flight_ = 0;  // guarded by mu_
};

}  // namespace glmserve
