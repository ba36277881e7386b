#include "server/request/client_quota.h"

#include "absl/strings/str_cat.h"

namespace glmserve {

bool ClientQuota::Acquire(const std::string& client) {
  if (max_ <= 0) return true;
  std::lock_guard<std::mutex> lock(mu_);
  int64_t& n = in_flight_[client];
  if (n >= max_) {
    if (n == 0) in_flight_.erase(client);
    return false;
  }
  ++n;
  return true;
}

void ClientQuota::Release(const std::string& client) {
  if (max_ <= 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = in_flight_.find(client);
  if (it == in_flight_.end()) return;
  if (--it->second <= 0) in_flight_.erase(it);
}

int64_t ClientQuota::in_flight(const std::string& client) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = in_flight_.find(client);
  return it == in_flight_.end() ? 0 : it->second;
}

size_t ClientQuota::clients() const {
  std::lock_guard<std::mutex> lock(mu_);
  return in_flight_.size();
}

ClientQuota::Lease ClientQuota::TryAcquire(const std::string& client, bool* admitted) {
  *admitted = Acquire(client);
  if (!*admitted || max_ <= 0) return Lease();
  return Lease(this, client);
}

std::string ClientFromGrpcPeer(const std::string& peer) {
  std::string rest;
  if (peer.rfind("ipv4:", 0) == 0) {
    rest = peer.substr(5);
    const size_t colon = rest.rfind(':');
    return colon == std::string::npos ? rest : rest.substr(0, colon);
  }
  if (peer.rfind("ipv6:", 0) == 0) {
    rest = peer.substr(5);
    // gRPC percent-encodes the brackets in some versions.
    for (auto [from, to] : {std::pair<const char*, char>{"%5B", '['}, {"%5D", ']'}, {"%5b", '['}, {"%5d", ']'}}) {
      for (size_t at = rest.find(from); at != std::string::npos; at = rest.find(from)) rest.replace(at, 3, 1, to);
    }
    if (!rest.empty() && rest.front() == '[') {
      const size_t close = rest.find(']');
      if (close != std::string::npos) return rest.substr(1, close - 1);
    }
    return rest;
  }
  return peer;  // unix:..., or anything unexpected: the whole peer string
}

std::string QuotaExceededMessage(int64_t max_per_client) {
  return absl::StrCat("too many requests from this client: at most ", max_per_client,
                      " queued or running at once (--max-requests-per-client); retry when one finishes");
}

}  // namespace glmserve
