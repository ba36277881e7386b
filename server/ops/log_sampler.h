// Keeps a flood of like log lines to a few a second. A client that retries a refusal at once
// (a load balancer's health loop, a retry policy without backoff) makes thousands of refusals a
// second, and one line each filled gigabytes an hour; the metrics keep the exact counts, the log
// keeps the first lines of each second and says how many it left out. Not thread-safe: the owner
// serialises calls. The clock is passed in, so tests step it.
#pragma once

#include <chrono>
#include <cstdint>

namespace glmserve {

class LogSampler {
 public:
  using Clock = std::chrono::steady_clock;

  // At most `lines_per_second` lines in each second from the first line written in it; 0 = every
  // line.
  explicit LogSampler(int lines_per_second = 0) : lines_per_second_(lines_per_second) {}

  // Whether a line at `now` is to be written. When it is, *left_out is how many lines were not
  // written since the last one that was (0 mostly), for the line to say so.
  bool Admit(Clock::time_point now, int64_t* left_out) {
    *left_out = 0;
    if (lines_per_second_ <= 0) return true;
    if (written_in_window_ == 0 || now - window_start_ >= std::chrono::seconds(1)) {
      window_start_ = now;
      written_in_window_ = 0;
    }
    if (written_in_window_ >= lines_per_second_) {
      ++left_out_;
      return false;
    }
    ++written_in_window_;
    *left_out = left_out_;
    left_out_ = 0;
    return true;
  }

  // Lines not written since the last one that was, handed over once (for a closing summary line).
  int64_t TakeLeftOut() {
    const int64_t n = left_out_;
    left_out_ = 0;
    return n;
  }

 private:
  int lines_per_second_;
  Clock::time_point window_start_{};
  int written_in_window_ = 0;
  int64_t left_out_ = 0;
};

}  // namespace glmserve
