// http(s) image URLs (serve --allow-media-fetch): FetchMediaUrl against a real HTTP server on
// loopback (cpp-httplib) for every outcome an operator's limits give, and ImageBytes' refusals
// naming the image's JSON path.
#include "server/request/media_fetch.h"

#include <gtest/gtest.h>
#include <httplib.h>

#include <chrono>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "server/request/media.h"
#include "tests/testutil/read_file.h"

namespace glmserve {
namespace {

const std::string kPng = std::string(GLMSERVE_GLM4V_FIXTURE_DIR) + "/images/phone.png";

class MediaFetchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    png_ = testing::ReadWholeFile(kPng);
    server_.Get("/phone.png",
                [this](const httplib::Request&, httplib::Response& res) { res.set_content(png_, "image/png"); });
    server_.Get("/slow.png", [this](const httplib::Request&, httplib::Response& res) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));
      res.set_content(png_, "image/png");
    });
    server_.Get("/moved.png", [](const httplib::Request&, httplib::Response& res) { res.set_redirect("/phone.png"); });
    server_.Get("/missing.png", [](const httplib::Request&, httplib::Response& res) { res.status = 404; });
    // A body with no Content-Length that grows past the limit while it streams.
    server_.Get("/endless.png", [](const httplib::Request&, httplib::Response& res) {
      res.set_chunked_content_provider("image/png", [](size_t offset, httplib::DataSink& sink) {
        const std::string chunk(4096, 'x');
        if (offset > (size_t{1} << 20)) return false;
        sink.write(chunk.data(), chunk.size());
        return true;
      });
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    ASSERT_GT(port_, 0);
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    for (int i = 0; i < 5000 && !server_.is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    ASSERT_TRUE(server_.is_running());
  }
  void TearDown() override {
    server_.stop();
    if (thread_.joinable()) thread_.join();
  }
  std::string Url(const std::string& path) const { return absl::StrCat("http://127.0.0.1:", port_, path); }

  std::string png_;
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
};

TEST_F(MediaFetchTest, FetchesTheImageBytes) {
  absl::StatusOr<std::string> got = FetchMediaUrl(Url("/phone.png"), {});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, png_);
}

TEST_F(MediaFetchTest, EachLimitRefusesWithItsCodeAndFlag) {
  MediaFetchLimits limits;
  limits.timeout_ms = 300;
  absl::StatusOr<std::string> slow = FetchMediaUrl(Url("/slow.png"), limits);
  EXPECT_EQ(slow.status().code(), absl::StatusCode::kDeadlineExceeded) << slow.status();
  EXPECT_NE(slow.status().message().find("--media-fetch-timeout-ms (300 ms)"), std::string::npos) << slow.status();

  limits = MediaFetchLimits();
  limits.max_bytes = static_cast<int64_t>(png_.size()) - 1;  // Content-Length says too much
  absl::StatusOr<std::string> big = FetchMediaUrl(Url("/phone.png"), limits);
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted) << big.status();
  EXPECT_NE(big.status().message().find("--media-fetch-max-bytes"), std::string::npos) << big.status();
  limits.max_bytes = 64 << 10;  // no Content-Length: cut off while it streams
  absl::StatusOr<std::string> endless = FetchMediaUrl(Url("/endless.png"), limits);
  EXPECT_EQ(endless.status().code(), absl::StatusCode::kResourceExhausted) << endless.status();

  absl::StatusOr<std::string> moved = FetchMediaUrl(Url("/moved.png"), {});
  EXPECT_EQ(moved.status().code(), absl::StatusCode::kUnavailable) << moved.status();
  EXPECT_NE(moved.status().message().find("redirects are not followed"), std::string::npos) << moved.status();
  absl::StatusOr<std::string> missing = FetchMediaUrl(Url("/missing.png"), {});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kUnavailable) << missing.status();
  EXPECT_NE(missing.status().message().find("HTTP 404"), std::string::npos) << missing.status();
}

TEST_F(MediaFetchTest, OnlyListedHostsAndOnlyHttp) {
  MediaFetchLimits limits;
  limits.allowed_domains = {"images.example.com"};
  absl::StatusOr<std::string> refused = FetchMediaUrl(Url("/phone.png"), limits);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
  EXPECT_NE(refused.status().message().find("host '127.0.0.1' is not in this server's --allowed-media-domains"),
            std::string::npos)
      << refused.status();
  limits.allowed_domains = {"127.0.0.1"};
  EXPECT_TRUE(FetchMediaUrl(Url("/phone.png"), limits).ok());
  EXPECT_FALSE(FetchMediaUrl(absl::StrCat("ftp://127.0.0.1:", port_, "/phone.png"), {}).ok());
  EXPECT_FALSE(FetchMediaUrl("http://", {}).ok());
}

TEST(MediaFetchHosts, NamesAndTheirSubdomainsOnly) {
  EXPECT_EQ(UrlHost("https://IMG.Example.com:8443/a.png?x=1"), "img.example.com");
  EXPECT_EQ(UrlHost("http://[::1]:80/a.png"), "::1");
  EXPECT_EQ(UrlHost("not a url"), "");
  const std::vector<std::string> allowed = {"example.com"};
  EXPECT_TRUE(HostAllowed("example.com", allowed));
  EXPECT_TRUE(HostAllowed("img.example.com", allowed));
  EXPECT_FALSE(HostAllowed("badexample.com", allowed));
  EXPECT_FALSE(HostAllowed("example.com.evil.net", allowed));
  EXPECT_TRUE(HostAllowed("anything.net", {}));
  EXPECT_FALSE(HostAllowed("", {}));
}

TEST_F(MediaFetchTest, ImageBytesFetchesOnlyWhenEnabledAndNamesTheField) {
  ImageData image;
  image.url = Url("/phone.png");
  image.field = "messages[0].content[1].image_url.url";
  MediaOptions media;
  std::string bytes;
  std::optional<Refusal> off = ImageBytes(image, media, &bytes);
  ASSERT_TRUE(off.has_value());
  EXPECT_EQ(off->field, image.field);
  EXPECT_NE(off->message.find("not enabled"), std::string::npos) << off->message;

  media.allow_fetch = true;
  EXPECT_FALSE(ImageBytes(image, media, &bytes).has_value());
  EXPECT_EQ(bytes, png_);

  image.url = Url("/missing.png");
  std::optional<Refusal> missing = ImageBytes(image, media, &bytes);
  ASSERT_TRUE(missing.has_value());
  EXPECT_EQ(missing->code, absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(missing->field, image.field);
  EXPECT_NE(missing->message.find("HTTP 404"), std::string::npos) << missing->message;
}

}  // namespace
}  // namespace glmserve
