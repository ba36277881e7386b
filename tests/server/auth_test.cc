// server/request/auth.h: API key loading and checking, TLS file validation (certificates made with the
// openssl CLI at test time; skipped without it).
#include "server/request/auth.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace glmserve {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/glmserve_auth_test_XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string Write(const std::string& name, const std::string& text) const {
    const std::string p = path_ + "/" + name;
    std::ofstream(p) << text;
    return p;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(ApiKeysTest, NoFileNoEnvIsOff) {
  auto keys = ApiKeys::Load("", "");
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_EQ(*keys, nullptr);
}

TEST(ApiKeysTest, FileAndEnvKeys) {
  TempDir dir;
  const std::string file = dir.Write("keys", "# comment\n\n  alpha-123  \nbeta_456\n");
  auto keys = ApiKeys::Load(file, " gamma\n");
  ASSERT_TRUE(keys.ok()) << keys.status();
  ASSERT_NE(*keys, nullptr);
  EXPECT_EQ((*keys)->size(), 3u);
  EXPECT_EQ((*keys)->Check("Bearer alpha-123"), "key#1");
  EXPECT_EQ((*keys)->Check("bearer beta_456"), "key#2");
  EXPECT_EQ((*keys)->Check("BEARER gamma"), "key#3");
  EXPECT_EQ((*keys)->Check("Bearer  gamma "), "key#3");
  EXPECT_EQ((*keys)->Check("Bearer alpha-12"), std::nullopt);
  EXPECT_EQ((*keys)->Check("Bearer alpha-1234"), std::nullopt);
  EXPECT_EQ((*keys)->Check("alpha-123"), std::nullopt);
  EXPECT_EQ((*keys)->Check("Basic alpha-123"), std::nullopt);
  EXPECT_EQ((*keys)->Check("Bearer "), std::nullopt);
  EXPECT_EQ((*keys)->Check(""), std::nullopt);
  EXPECT_EQ((*keys)->Check("Bearer # comment"), std::nullopt);
}

TEST(ApiKeysTest, EnvOnly) {
  auto keys = ApiKeys::Load("", "secret");
  ASSERT_TRUE(keys.ok());
  ASSERT_NE(*keys, nullptr);
  EXPECT_EQ((*keys)->Check("Bearer secret"), "key#1");
}

TEST(ApiKeysTest, BadFilesNameTheFlagNotTheKey) {
  TempDir dir;
  auto missing = ApiKeys::Load(dir.path() + "/nope", "");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("--api-key-file"), std::string::npos);
  auto empty = ApiKeys::Load(dir.Write("empty", "# only a comment\n\n"), "");
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.status().message().find("holds no key"), std::string::npos);
  auto spaced = ApiKeys::Load(dir.Write("spaced", "good\nsecret with space\n"), "");
  ASSERT_FALSE(spaced.ok());
  EXPECT_NE(spaced.status().message().find("line 2"), std::string::npos);
  EXPECT_EQ(spaced.status().message().find("secret"), std::string::npos);
  auto env = ApiKeys::Load("", "has space");
  ASSERT_FALSE(env.ok());
  EXPECT_NE(env.status().message().find("GLMSERVE_API_KEY"), std::string::npos);
  EXPECT_EQ(env.status().message().find("has space"), std::string::npos);
}

TEST(ApiKeysTest, FromKeys) {
  auto keys = ApiKeys::FromKeys({"a", "b"});
  EXPECT_EQ(keys->Check("Bearer b"), "key#2");
  EXPECT_EQ(keys->Check("Bearer c"), std::nullopt);
}

bool MakeCert(const std::string& dir, const std::string& name) {
  const std::string cmd = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -keyout " + dir + "/" +
                          name + ".key -out " + dir + "/" + name + ".crt >/dev/null 2>&1";
  return std::system(cmd.c_str()) == 0;
}

TEST(TlsTest, NoFlagsIsOff) {
  auto tls = LoadTls("", "", "");
  ASSERT_TRUE(tls.ok());
  EXPECT_EQ(*tls, nullptr);
}

TEST(TlsTest, FlagCombinations) {
  auto a = LoadTls("c.pem", "", "");
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("--tls-cert"), std::string::npos);
  auto b = LoadTls("", "k.pem", "");
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("--tls-key"), std::string::npos);
  auto c = LoadTls("", "", "ca.pem");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("--tls-client-ca"), std::string::npos);
}

TEST(TlsTest, FilesAreChecked) {
  TempDir dir;
  if (!MakeCert(dir.path(), "a") || !MakeCert(dir.path(), "b")) GTEST_SKIP() << "no openssl CLI";
  const std::string d = dir.path();
  auto ok = LoadTls(d + "/a.crt", d + "/a.key", "");
  ASSERT_TRUE(ok.ok()) << ok.status();
  ASSERT_NE(*ok, nullptr);
  EXPECT_FALSE((*ok)->mutual());
  EXPECT_NE((*ok)->cert_pem.find("BEGIN CERTIFICATE"), std::string::npos);
  auto mtls = LoadTls(d + "/a.crt", d + "/a.key", d + "/b.crt");
  ASSERT_TRUE(mtls.ok()) << mtls.status();
  EXPECT_TRUE((*mtls)->mutual());

  auto mismatch = LoadTls(d + "/a.crt", d + "/b.key", "");
  ASSERT_FALSE(mismatch.ok());
  EXPECT_NE(mismatch.status().message().find("--tls-key"), std::string::npos);
  auto unreadable = LoadTls(d + "/missing.crt", d + "/a.key", "");
  ASSERT_FALSE(unreadable.ok());
  EXPECT_NE(unreadable.status().message().find("--tls-cert"), std::string::npos);
  const std::string junk = dir.Write("junk.pem", "not a pem\n");
  auto bad_cert = LoadTls(junk, d + "/a.key", "");
  ASSERT_FALSE(bad_cert.ok());
  EXPECT_NE(bad_cert.status().message().find("--tls-cert"), std::string::npos);
  auto bad_key = LoadTls(d + "/a.crt", junk, "");
  ASSERT_FALSE(bad_key.ok());
  EXPECT_NE(bad_key.status().message().find("--tls-key"), std::string::npos);
  auto bad_ca = LoadTls(d + "/a.crt", d + "/a.key", junk);
  ASSERT_FALSE(bad_ca.ok());
  EXPECT_NE(bad_ca.status().message().find("--tls-client-ca"), std::string::npos);
  // The key's PEM text never appears in a message.
  EXPECT_EQ(mismatch.status().message().find("PRIVATE KEY"), std::string::npos);
}

}  // namespace
}  // namespace glmserve
