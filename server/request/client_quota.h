// Fairness between clients: at most N requests (queued plus running) per client at once, shared by
// the gRPC and the HTTP front ends, so one caller cannot fill --max-queue and starve the rest.
// A client is its API key ("key#N", server/request/auth.h) when authentication is on, else its peer
// address without the port. No gRPC, no LibTorch (tests/server/client_quota_test.cc).
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

namespace glmserve {

class ClientQuota {
 public:
  // max_per_client <= 0: no cap (Acquire always succeeds; nothing is counted).
  explicit ClientQuota(int64_t max_per_client) : max_(max_per_client) {}

  // Counts one more request for `client`; false (nothing counted) when it already has the cap.
  bool Acquire(const std::string& client);
  // Ends one request counted by a successful Acquire.
  void Release(const std::string& client);

  int64_t in_flight(const std::string& client) const;
  size_t clients() const;  // clients with requests in flight
  int64_t max_per_client() const { return max_; }

  // A successful Acquire released once, on Release() or destruction (movable, not copyable).
  class Lease {
   public:
    Lease() = default;
    Lease(ClientQuota* quota, std::string client) : quota_(quota), client_(std::move(client)) {}
    Lease(Lease&& o) noexcept : quota_(o.quota_), client_(std::move(o.client_)) { o.quota_ = nullptr; }
    Lease& operator=(Lease&& o) noexcept {
      if (this != &o) {
        Release();
        quota_ = o.quota_;
        client_ = std::move(o.client_);
        o.quota_ = nullptr;
      }
      return *this;
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() { Release(); }
    void Release() {
      if (quota_ != nullptr) quota_->Release(client_);
      quota_ = nullptr;
    }

   private:
    ClientQuota* quota_ = nullptr;
    std::string client_;
  };
  // A Lease (held: true) or, over the cap, an empty one with *admitted false.
  Lease TryAcquire(const std::string& client, bool* admitted);

 private:
  const int64_t max_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, int64_t> in_flight_;  // guarded by mu_; no zero entries
};

// The client name of a gRPC peer ("ipv4:10.0.0.7:5312" -> "10.0.0.7", "ipv6:[::1]:5312" -> "::1",
// "ipv6:%5B::1%5D:5312" -> "::1", "unix:/path" -> "unix:/path").
std::string ClientFromGrpcPeer(const std::string& peer);

// The refusal's message (both front ends).
std::string QuotaExceededMessage(int64_t max_per_client);

}  // namespace glmserve
