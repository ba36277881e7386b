// API keys and TLS material for both front ends (gRPC and HTTP). No gRPC, no LibTorch: the
// loading and checking here are unit-tested on their own (tests/server/auth_test.cc).
//
// Keys: `--api-key-file PATH` (one key a line; blank lines and lines starting with '#' ignored)
// and/or the environment variable GLMSERVE_API_KEY (one key). Only SHA-256 digests of the keys
// are kept; a presented key is hashed and compared with every stored digest in constant time
// (CRYPTO_memcmp, no early exit), so neither timing nor length leaks which key came close. Keys
// never appear in an error message or a log line: a client is named "key#N" (N = the key's
// position, 1-based: the file's keys first, then the environment's).
#pragma once

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace glmserve {

class ApiKeys {
 public:
  // `file` may be empty (no file); `env_value` is GLMSERVE_API_KEY's value or empty. Null when
  // neither gives a key (authentication off). INVALID_ARGUMENT names the flag (or the variable)
  // and, for a bad key, its line: an unreadable file, a file without keys, a key with spaces or
  // control characters.
  static absl::StatusOr<std::shared_ptr<const ApiKeys>> Load(const std::string& file, const std::string& env_value);
  // Built from keys in memory (tests).
  static std::shared_ptr<const ApiKeys> FromKeys(const std::vector<std::string>& keys);

  // The value of an `authorization` header or metadata entry: "Bearer KEY" (scheme
  // case-insensitive). The matching key's client name ("key#N"), or nullopt.
  std::optional<std::string> Check(std::string_view authorization) const;
  size_t size() const { return digests_.size(); }

 private:
  std::vector<std::array<unsigned char, 32>> digests_;
};

// `--tls-cert`, `--tls-key`, `--tls-client-ca`: the PEM text of each file, checked before any
// port is bound (LoadTls).
struct TlsConfig {
  std::string cert_file, key_file, client_ca_file;  // paths (the HTTP server's OpenSSL context reads them)
  std::string cert_pem, key_pem, client_ca_pem;     // contents (gRPC's SslServerCredentials)
  bool mutual() const { return !client_ca_file.empty(); }
};

// Null when no TLS flag is given. INVALID_ARGUMENT names the flag: a certificate without a key
// (or the reverse), --tls-client-ca without --tls-cert, an unreadable file, a file that holds no
// PEM certificate / private key, a key that does not match the certificate.
absl::StatusOr<std::shared_ptr<const TlsConfig>> LoadTls(const std::string& cert_file, const std::string& key_file,
                                                         const std::string& client_ca_file);

}  // namespace glmserve
