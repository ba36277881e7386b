// The open connections of an HTTP listener (the API's, the metrics port's) by socket: whether
// each is between requests (TLS handshake, idle keep-alive, a request head not yet complete) and
// since when, so that at its connection cap a listener can close the one longest between
// requests for a new connection instead of refusing or queueing it. A slowloris holds only such
// connections; a client that sends its request at once is never among them for long.
// Thread-safe; no HTTP library (tests/server/connection_phases_test.cc).
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstddef>
#include <map>
#include <mutex>

namespace glmserve {

class ConnectionPhases {
 public:
  using Clock = std::chrono::steady_clock;

  // A new connection, between requests from now.
  void Opened(int fd) {
    std::lock_guard<std::mutex> lock(mu_);
    open_[fd] = {Clock::now(), true, false};
  }
  // Its request head is in (false), or it waits for the next request (true); the time restarts.
  void SetBetweenRequests(int fd, bool between) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = open_.find(fd);
    if (it == open_.end() || it->second.evicted) return;
    it->second.between_requests = between;
    it->second.since = Clock::now();
  }
  // Forgets it; before its socket is closed (after, the number may be a new connection's).
  void Closing(int fd) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = open_.find(fd);
    if (it == open_.end()) return;
    if (it->second.evicted) --evicted_;
    open_.erase(it);
  }
  // Shuts down the connection longest between requests, if at least `min_age` and fewer than
  // `max_evicting` evicted ones are still closing; its thread's next read fails and the
  // connection ends. False: none.
  bool EvictOldest(std::chrono::milliseconds min_age, int max_evicting) {
    std::lock_guard<std::mutex> lock(mu_);
    if (evicted_ >= max_evicting) return false;
    const Clock::time_point latest = Clock::now() - min_age;
    auto oldest = open_.end();
    for (auto it = open_.begin(); it != open_.end(); ++it) {
      const Phase& p = it->second;
      if (p.between_requests && !p.evicted && p.since <= latest &&
          (oldest == open_.end() || p.since < oldest->second.since)) {
        oldest = it;
      }
    }
    if (oldest == open_.end()) return false;
    oldest->second.evicted = true;
    ++evicted_;
    ::shutdown(oldest->first, SHUT_RDWR);
    return true;
  }
  size_t open() const {
    std::lock_guard<std::mutex> lock(mu_);
    return open_.size();
  }
  // Evicted connections whose threads have not yet called Closing.
  int evicted() const {
    std::lock_guard<std::mutex> lock(mu_);
    return evicted_;
  }

 private:
  struct Phase {
    Clock::time_point since;
    bool between_requests = true;
    bool evicted = false;
  };
  mutable std::mutex mu_;
  std::map<int, Phase> open_;  // guarded by mu_
  int evicted_ = 0;            // guarded by mu_
};

}  // namespace glmserve
