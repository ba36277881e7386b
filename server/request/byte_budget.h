// A byte-weighted cap on work in flight, for memory that a count of requests does not bound:
// prompt text being tokenized (transient memory of several times the text, up to ~20x for a single
// pre-tokenizer run, runtime/tokenizer/bpe.cc, on the transports' threads, whose number gRPC grows
// on demand), and HTTP request bodies held while they arrive, wait for a serving slot and are
// answered (one a connection, up to --http-max-connections). Without a cap, many large requests at
// once could take the host's memory. No gRPC, no LibTorch (tests/request/request_session_test.cc).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>

namespace glmserve {

class ByteBudget {
 public:
  // limit_bytes <= 0: no cap (every hold grows; nothing is counted).
  explicit ByteBudget(int64_t limit_bytes) : limit_(limit_bytes) {}
  ByteBudget(const ByteBudget&) = delete;
  ByteBudget& operator=(const ByteBudget&) = delete;

  // Bytes held against a budget until the hold goes; for work whose size grows as it arrives (a
  // chunked body). The budget must outlive its holds; a null budget is no cap.
  class Hold {
   public:
    explicit Hold(ByteBudget* budget) : budget_(budget) {}
    Hold(const Hold&) = delete;
    Hold& operator=(const Hold&) = delete;
    ~Hold() {
      if (bytes_ == 0) return;
      std::lock_guard<std::mutex> lock(budget_->mu_);
      budget_->in_flight_ -= bytes_;
    }
    // Adds `bytes` to the hold, or returns false (nothing added) when the other holds in flight
    // plus this one's would pass the limit. A hold alone may pass it, so that every size can pass
    // when the server is otherwise idle.
    bool Grow(int64_t bytes) {
      if (budget_ == nullptr || budget_->limit_ <= 0 || bytes <= 0) return true;
      std::lock_guard<std::mutex> lock(budget_->mu_);
      if (budget_->in_flight_ > bytes_ && budget_->in_flight_ + bytes > budget_->limit_) return false;
      budget_->in_flight_ += bytes;
      bytes_ += bytes;
      return true;
    }
    int64_t bytes() const { return bytes_; }

   private:
    ByteBudget* const budget_;
    int64_t bytes_ = 0;  // counted in budget_->in_flight_
  };

  // A hold on `bytes` until the returned pointer's last copy goes, or null when the holds in flight
  // plus `bytes` would pass the limit (Hold::Grow's rule).
  std::shared_ptr<void> TryAcquire(int64_t bytes) {
    auto hold = std::make_shared<Hold>(this);
    if (!hold->Grow(bytes)) return nullptr;
    return hold;
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
