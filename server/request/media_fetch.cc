#include "server/request/media_fetch.h"

#if GLMSERVE_MEDIA_FETCH
#include <curl/curl.h>
#endif

#include <mutex>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace glmserve {

#if GLMSERVE_MEDIA_FETCH

bool MediaFetchBuilt() { return true; }

namespace {

struct Body {
  std::string bytes;
  int64_t max_bytes = 0;
  bool too_large = false;
};

size_t Append(char* data, size_t size, size_t count, void* user) {
  auto* body = static_cast<Body*>(user);
  const size_t n = size * count;
  if (static_cast<int64_t>(body->bytes.size() + n) > body->max_bytes) {
    body->too_large = true;
    return 0;  // libcurl stops the transfer (CURLE_WRITE_ERROR)
  }
  body->bytes.append(data, n);
  return n;
}

}  // namespace

std::string UrlHost(const std::string& url) {
  CURLU* parsed = curl_url();
  if (parsed == nullptr) return "";
  std::string host;
  char* part = nullptr;
  if (curl_url_set(parsed, CURLUPART_URL, url.c_str(), 0) == CURLUE_OK &&
      curl_url_get(parsed, CURLUPART_HOST, &part, 0) == CURLUE_OK && part != nullptr) {
    host = absl::AsciiStrToLower(part);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  }
  curl_free(part);
  curl_url_cleanup(parsed);
  return host;
}

bool HostAllowed(const std::string& host, const std::vector<std::string>& allowed_domains) {
  if (allowed_domains.empty()) return !host.empty();
  for (const std::string& domain : allowed_domains) {
    const std::string d = absl::AsciiStrToLower(domain);
    if (host == d || (host.size() > d.size() && absl::EndsWith(host, d) && host[host.size() - d.size() - 1] == '.')) {
      return true;
    }
  }
  return false;
}

absl::StatusOr<std::string> FetchMediaUrl(const std::string& url, const MediaFetchLimits& limits) {
  static std::once_flag init;
  std::call_once(init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  const std::string host = UrlHost(url);
  if (host.empty()) return absl::InvalidArgumentError("not a URL with a host");
  if (!HostAllowed(host, limits.allowed_domains)) {
    return absl::InvalidArgumentError(
        absl::StrCat("host '", host, "' is not in this server's --allowed-media-domains"));
  }
  CURL* curl = curl_easy_init();
  if (curl == nullptr) return absl::ResourceExhaustedError("libcurl could not start a transfer");
  Body body;
  body.max_bytes = limits.max_bytes;
  char error[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);  // timeouts without SIGALRM: many threads fetch
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, static_cast<long>(limits.timeout_ms));
  curl_easy_setopt(curl, CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(limits.max_bytes));
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, Append);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(curl, CURLOPT_USERAGENT, "glmserve");
  const CURLcode code = curl_easy_perform(curl);
  long status = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(curl);
  if (body.too_large || code == CURLE_FILESIZE_EXCEEDED) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the image is larger than --media-fetch-max-bytes (", limits.max_bytes, " bytes)"));
  }
  if (code == CURLE_OPERATION_TIMEDOUT) {
    return absl::DeadlineExceededError(
        absl::StrCat("not fetched within --media-fetch-timeout-ms (", limits.timeout_ms, " ms)"));
  }
  if (code != CURLE_OK) {
    return absl::UnavailableError(absl::StrCat("fetch failed: ", error[0] != '\0' ? error : curl_easy_strerror(code)));
  }
  if (status >= 300 && status < 400) {
    return absl::UnavailableError(absl::StrCat("HTTP ", status, ": redirects are not followed"));
  }
  if (status != 200) return absl::UnavailableError(absl::StrCat("HTTP ", status, " from '", host, "'"));
  return std::move(body.bytes);
}

#else  // built without libcurl (-DGLMSERVE_MEDIA_FETCH=OFF): serve refuses --allow-media-fetch

bool MediaFetchBuilt() { return false; }
std::string UrlHost(const std::string&) { return ""; }
bool HostAllowed(const std::string&, const std::vector<std::string>&) { return false; }
absl::StatusOr<std::string> FetchMediaUrl(const std::string&, const MediaFetchLimits&) {
  return absl::UnimplementedError("this glmserve was built without libcurl (-DGLMSERVE_MEDIA_FETCH=OFF)");
}

#endif

}  // namespace glmserve
