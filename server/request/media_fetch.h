// http(s) image URLs fetched for a request (`serve --allow-media-fetch`), with the operator's
// limits. libcurl; callable from any thread (each call its own handle). No LibTorch, no gRPC.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace glmserve {

struct MediaFetchLimits {
  // The whole transfer, connection included, must finish within this (--media-fetch-timeout-ms).
  int64_t timeout_ms = 5000;
  // Largest body accepted (--media-fetch-max-bytes): a larger Content-Length is refused before
  // the body, a body that grows past it is cut off.
  int64_t max_bytes = int64_t{64} << 20;
  // Hosts that may be fetched from (--allowed-media-domains): a host matches a name exactly or is
  // a subdomain of it ("example.com" allows "img.example.com"). Empty = any host.
  std::vector<std::string> allowed_domains;
};

// False in a build without libcurl (-DGLMSERVE_MEDIA_FETCH=OFF), where nothing is fetched.
bool MediaFetchBuilt();

// The URL's host (lowercase, no port, no brackets), or "" when the URL has none.
std::string UrlHost(const std::string& url);

// True when `host` is allowed by `allowed_domains` (see MediaFetchLimits).
bool HostAllowed(const std::string& host, const std::vector<std::string>& allowed_domains);

// GETs `url` (http:// or https:// only; redirects are not followed: a 3xx is refused, since it
// could lead outside allowed_domains). INVALID_ARGUMENT for a refused host, DEADLINE_EXCEEDED for
// a timeout, RESOURCE_EXHAUSTED for a body over max_bytes, UNAVAILABLE for a failed transfer or a
// status other than 200; each message says what happened without repeating the URL.
absl::StatusOr<std::string> FetchMediaUrl(const std::string& url, const MediaFetchLimits& limits);

}  // namespace glmserve
