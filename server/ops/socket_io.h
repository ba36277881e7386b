// Plain-socket helpers the HTTP listeners share (the API's, server/frontend/http_server.cc, and
// the metrics port's, server/ops/metrics.cc), both running cpp-httplib over connection loops of
// their own. Header-only.
#pragma once

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <string>

namespace glmserve {

// poll(2) on one descriptor for `events`, at most `timeout_ms` in all (an interrupted wait goes
// on for what is left): > 0 ready, 0 timed out, < 0 an error.
inline int PollFd(int fd, short events, int64_t timeout_ms) {
  using Clock = std::chrono::steady_clock;
  pollfd p{fd, events, 0};
  const auto end = Clock::now() + std::chrono::milliseconds(std::max<int64_t>(0, timeout_ms));
  for (;;) {
    const int64_t left =
        std::max<int64_t>(0, std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now()).count());
    const int r = poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1 << 30)));
    if (r < 0 && errno == EINTR) continue;
    return r;
  }
}

// The numeric address and port of a connected socket's peer (`peer`) or its own end; ip and port
// are left as they are when the socket has none.
inline void SocketAddress(int fd, bool peer, std::string& ip, int& port) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  const int r = peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len)
                     : getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  if (r != 0) return;
  char host[NI_MAXHOST];
  char serv[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<sockaddr*>(&addr), len, host, sizeof host, serv, sizeof serv,
                  NI_NUMERICHOST | NI_NUMERICSERV) == 0) {
    ip = host;
    port = std::atoi(serv);
  }
}

}  // namespace glmserve
