// Listener addresses: "host:port" as every log line and error names them, and why a listener could
// not bind (the listeners, gRPC and cpp-httplib, report only that they failed, so the reason comes
// from a bind of our own).
#pragma once

#include <string>
#include <vector>

namespace glmserve {

// "host:port", bracketing IPv6 literals ("[::1]:50051").
std::string FormatAddress(const std::string& host, int port);

// The addresses to listen on for --host, in the order tried: every interface ("", "*", "::") is
// IPv6's wildcard (dual-stack), and an IPv6 wildcard or loopback falls back to IPv4's on a machine
// without IPv6 (some VMs and containers); brackets around a literal are dropped.
std::vector<std::string> ListenHosts(const std::string& host);

// Why host:port cannot be bound, from a bind with SO_REUSEADDR only, as every listener of
// glmserve sets it: "Address already in use", "Permission denied", "cannot resolve 'h': ...".
// Empty when it can be bound, and for port <= 0 (an ephemeral port).
std::string PortBindProblem(const std::string& host, int port);

}  // namespace glmserve
