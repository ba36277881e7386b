// Injected time source for the scheduler and engine. Production uses RealClock; tests use
// FakeClock and advance it by hand (or from a fake executor), so deadline and queue-delay
// behaviour is deterministic and tests never sleep for timing logic.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

namespace glmserve {

class Clock {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  using Duration = std::chrono::steady_clock::duration;

  virtual ~Clock() = default;
  // Thread-safe.
  virtual TimePoint Now() const = 0;
  // Real clock: sleeps. Fake clock: advances itself by `d` and returns at once.
  virtual void SleepFor(Duration d) = 0;
  // Registers a callback run (on the advancing thread) whenever a fake clock moves; the engine
  // uses it to re-check deadlines and queue delays. Real clocks never call it. Returns a handle
  // for RemoveAdvanceListener.
  virtual int64_t AddAdvanceListener(std::function<void()> /*listener*/) { return 0; }
  virtual void RemoveAdvanceListener(int64_t /*handle*/) {}
};

class RealClock final : public Clock {
 public:
  TimePoint Now() const override { return std::chrono::steady_clock::now(); }
  void SleepFor(Duration d) override { std::this_thread::sleep_for(d); }
};

// Starts at an arbitrary fixed point (not the epoch, so `Now() - x` never underflows).
class FakeClock final : public Clock {
 public:
  FakeClock() : now_(TimePoint() + std::chrono::hours(1)) {}

  TimePoint Now() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return now_;
  }
  void SleepFor(Duration d) override { Advance(d); }
  void Advance(Duration d) {
    std::map<int64_t, std::function<void()>> listeners;
    {
      std::lock_guard<std::mutex> lock(mu_);
      now_ += d;
      listeners = listeners_;
    }
    for (auto& [handle, listener] : listeners) listener();  // outside the lock
  }
  int64_t AddAdvanceListener(std::function<void()> listener) override {
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t handle = ++next_handle_;
    listeners_[handle] = std::move(listener);
    return handle;
  }
  void RemoveAdvanceListener(int64_t handle) override {
    std::lock_guard<std::mutex> lock(mu_);
    listeners_.erase(handle);
  }

 private:
  mutable std::mutex mu_;
  TimePoint now_;
  int64_t next_handle_ = 0;
  std::map<int64_t, std::function<void()>> listeners_;
};

}  // namespace glmserve
