// Listener addresses: "host:port" as every log line and error names them, and why a listener could
// not bind (the listeners, gRPC and cpp-httplib, report only that they failed, so the reason comes
// from a bind of our own).
#pragma once

#include <string>

namespace glmserve {

// "host:port", bracketing IPv6 literals ("[::1]:50051").
std::string FormatAddress(const std::string& host, int port);

// Why host:port cannot be bound, from a bind with SO_REUSEADDR only, as every listener of
// glmserve sets it: "Address already in use", "Permission denied", "cannot resolve 'h': ...".
// Empty when it can be bound, and for port <= 0 (an ephemeral port).
std::string PortBindProblem(const std::string& host, int port);

}  // namespace glmserve
