#include "server/request/auth.h"

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace glmserve {

namespace {

std::array<unsigned char, 32> Digest(std::string_view key) {
  std::array<unsigned char, 32> out{};
  SHA256(reinterpret_cast<const unsigned char*>(key.data()), key.size(), out.data());
  return out;
}

// A key fits an HTTP header and gRPC metadata: printable ASCII, no spaces.
std::string_view Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

bool ValidKey(std::string_view key) {
  if (key.empty()) return false;
  for (unsigned char c : key) {
    if (c <= 0x20 || c >= 0x7f) return false;
  }
  return true;
}

absl::Status ReadFile(const std::string& flag, const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": cannot read '", path, "': ", std::strerror(errno)));
  }
  std::ostringstream s;
  s << in.rdbuf();
  if (in.bad()) return absl::InvalidArgumentError(absl::StrCat(flag, ": cannot read '", path, "'"));
  *out = s.str();
  return absl::OkStatus();
}

struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};
using Bio = std::unique_ptr<BIO, BioDeleter>;
Bio MemBio(const std::string& text) { return Bio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size()))); }

}  // namespace

absl::StatusOr<std::shared_ptr<const ApiKeys>> ApiKeys::Load(const std::string& file, const std::string& env_value) {
  auto keys = std::make_shared<ApiKeys>();
  if (!file.empty()) {
    std::string text;
    if (absl::Status s = ReadFile("--api-key-file", file, &text); !s.ok()) return s;
    std::istringstream lines(text);
    std::string line;
    int number = 0;
    while (std::getline(lines, line)) {
      ++number;
      std::string_view key = Trim(line);
      if (key.empty() || key.front() == '#') continue;
      if (!ValidKey(key)) {  // the key itself is not repeated
        return absl::InvalidArgumentError(
            absl::StrCat("--api-key-file: '", file, "' line ", number, ": a key is printable ASCII without spaces"));
      }
      keys->digests_.push_back(Digest(key));
    }
    if (keys->digests_.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("--api-key-file: '", file, "' holds no key"));
    }
  }
  std::string_view env_key = Trim(env_value);
  if (!env_key.empty()) {
    if (!ValidKey(env_key)) {
      return absl::InvalidArgumentError("GLMSERVE_API_KEY: a key is printable ASCII without spaces");
    }
    keys->digests_.push_back(Digest(env_key));
  }
  if (keys->digests_.empty()) return std::shared_ptr<const ApiKeys>();
  return std::shared_ptr<const ApiKeys>(std::move(keys));
}

std::shared_ptr<const ApiKeys> ApiKeys::FromKeys(const std::vector<std::string>& list) {
  auto keys = std::make_shared<ApiKeys>();
  for (const std::string& k : list) keys->digests_.push_back(Digest(k));
  return keys;
}

std::optional<std::string> ApiKeys::Check(std::string_view authorization) const {
  authorization = Trim(authorization);
  constexpr std::string_view kScheme = "bearer ";
  if (authorization.size() <= kScheme.size()) return std::nullopt;
  for (size_t i = 0; i < kScheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(authorization[i])) != kScheme[i]) return std::nullopt;
  }
  std::string_view key = Trim(authorization.substr(kScheme.size()));
  const std::array<unsigned char, 32> digest = Digest(key);
  // Every stored digest is compared, in constant time, whatever matched.
  size_t match = 0;
  for (size_t i = 0; i < digests_.size(); ++i) {
    const int differs = CRYPTO_memcmp(digest.data(), digests_[i].data(), digest.size());
    const size_t hit = static_cast<size_t>(differs == 0);
    match |= (i + 1) * hit * static_cast<size_t>(match == 0);
  }
  if (match == 0) return std::nullopt;
  return absl::StrCat("key#", match);
}

absl::StatusOr<std::shared_ptr<const TlsConfig>> LoadTls(const std::string& cert_file, const std::string& key_file,
                                                         const std::string& client_ca_file) {
  if (cert_file.empty() && key_file.empty() && client_ca_file.empty()) return std::shared_ptr<const TlsConfig>();
  if (cert_file.empty() && !key_file.empty()) {
    return absl::InvalidArgumentError("--tls-key: needs --tls-cert (the certificate of that key)");
  }
  if (!cert_file.empty() && key_file.empty()) {
    return absl::InvalidArgumentError("--tls-cert: needs --tls-key (the certificate's private key)");
  }
  if (cert_file.empty()) {
    return absl::InvalidArgumentError("--tls-client-ca: needs --tls-cert and --tls-key (mutual TLS is TLS)");
  }
  auto tls = std::make_shared<TlsConfig>();
  tls->cert_file = cert_file;
  tls->key_file = key_file;
  tls->client_ca_file = client_ca_file;
  if (absl::Status s = ReadFile("--tls-cert", cert_file, &tls->cert_pem); !s.ok()) return s;
  if (absl::Status s = ReadFile("--tls-key", key_file, &tls->key_pem); !s.ok()) return s;
  if (!client_ca_file.empty()) {
    if (absl::Status s = ReadFile("--tls-client-ca", client_ca_file, &tls->client_ca_pem); !s.ok()) return s;
  }

  Bio cert_bio = MemBio(tls->cert_pem);
  X509* cert = PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr);
  if (cert == nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat("--tls-cert: '", cert_file, "' holds no PEM certificate"));
  }
  Bio key_bio = MemBio(tls->key_pem);
  EVP_PKEY* key = PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr);
  if (key == nullptr) {
    ERR_clear_error();
    X509_free(cert);
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-key: '", key_file, "' holds no (unencrypted) PEM private key"));
  }
  const bool matches = X509_check_private_key(cert, key) == 1;
  EVP_PKEY_free(key);
  X509_free(cert);
  if (!matches) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-key: '", key_file, "' is not the private key of --tls-cert '", cert_file, "'"));
  }
  if (!client_ca_file.empty()) {
    Bio ca_bio = MemBio(tls->client_ca_pem);
    X509* ca = PEM_read_bio_X509(ca_bio.get(), nullptr, nullptr, nullptr);
    if (ca == nullptr) {
      ERR_clear_error();
      return absl::InvalidArgumentError(
          absl::StrCat("--tls-client-ca: '", client_ca_file, "' holds no PEM certificate"));
    }
    X509_free(ca);
  }
  return std::shared_ptr<const TlsConfig>(std::move(tls));
}

}  // namespace glmserve
