// Images in requests (server/request/media.h): the OpenAI content parts and gRPC's parts parsed
// into the typed request, every bad image refused with the client's path to it, the limits
// (count, max_pixels, file:// under --allowed-local-media-path), and a good image expanded into
// the engine's prompt. Expected prompts, grids and token counts are transformers' (the fixture's
// expected.json, made by scripts/make_glm4v_fixture) or computed by hand from smart_resize where
// the comment shows the arithmetic.
#include "server/request/media.h"

#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "glmserve/v1/inference.pb.h"
#include "runtime/checkpoint/model_config.h"
#include "server/frontend/grpc_validation.h"
#include "server/frontend/http_api.h"
#include "server/request/request_validation.h"
#include "tests/testutil/read_file.h"
#include "tests/testutil/scratch_dir_test.h"

namespace glmserve {
namespace {

const std::string kFixture = GLMSERVE_GLM4V_FIXTURE_DIR;  // tests/fixtures/glm4v
const std::string kModelDir = kFixture + "/tiny-safetensors-sharded";

nlohmann::json Expected() { return nlohmann::json::parse(testing::ReadWholeFile(kFixture + "/expected.json")); }

// A real PNG (8-bit RGB, one gray level), written here so any size can be made.
std::string Png(uint32_t width, uint32_t height) {
  auto be32 = [](std::string* s, uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8) s->push_back(static_cast<char>((v >> shift) & 0xff));
  };
  auto chunk = [&](const char* type, const std::string& data) {
    std::string out;
    be32(&out, static_cast<uint32_t>(data.size()));
    const std::string body = std::string(type, 4) + data;
    out += body;
    be32(&out, static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(body.data()), body.size())));
    return out;
  };
  std::string ihdr;
  be32(&ihdr, width);
  be32(&ihdr, height);
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8 bits, RGB, deflate, filter 0, no interlace
  std::string raw;
  for (uint32_t y = 0; y < height; ++y) raw += '\0' + std::string(width * 3, static_cast<char>(0x80));
  uLongf n = compressBound(raw.size());
  std::string z(n, '\0');
  EXPECT_EQ(
      compress2(reinterpret_cast<Bytef*>(z.data()), &n, reinterpret_cast<const Bytef*>(raw.data()), raw.size(), 9),
      Z_OK);
  z.resize(n);
  return std::string("\x89PNG\r\n\x1a\n", 8) + chunk("IHDR", ihdr) + chunk("IDAT", z) + chunk("IEND", "");
}

// A header claiming width x height with a tiny IDAT: refused from the header (nothing allocated).
std::string PngBomb(uint32_t width, uint32_t height) {
  std::string png = Png(1, 1);
  // IHDR's width and height follow the signature (8), the length (4) and the type (4).
  for (int i = 0; i < 4; ++i) {
    png[16 + i] = static_cast<char>((width >> (24 - 8 * i)) & 0xff);
    png[20 + i] = static_cast<char>((height >> (24 - 8 * i)) & 0xff);
  }
  // Fix the IHDR CRC so only the size is wrong.
  const uint32_t crc = static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(png.data() + 12), 17));
  for (int i = 0; i < 4; ++i) png[29 + i] = static_cast<char>((crc >> (24 - 8 * i)) & 0xff);
  return png;
}

std::string DataUrl(const std::string& bytes, const std::string& type = "image/png") {
  return absl::StrCat("data:", type, ";base64,", absl::Base64Escape(bytes));
}

// A chat body whose user message holds `parts` (JSON) then a text part.
std::string ChatBody(const std::string& parts, const std::string& extra = "") {
  return absl::StrCat(R"({"model": "m", "messages": [{"role": "system", "content": "Be brief."},)",
                      R"({"role": "user", "content": [)", parts,
                      R"(, {"type": "text", "text": "what is on screen?"}]}])", extra, "}");
}
std::string ImagePart(const std::string& url) {
  return absl::StrCat(R"({"type": "image_url", "image_url": {"url": ")", url, R"("}})");
}

class MediaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<ModelConfig> config = LoadModelConfig(kModelDir);
    ASSERT_TRUE(config.ok()) << config.status();
    ASSERT_TRUE(config->vision.has_value());
    vision_ = *config->vision;
    model_.vocab_size = config->vocab_size;
    model_.max_context = config->max_position_embeddings;
    model_.images = Support(MediaOptions());
  }

  std::shared_ptr<const ImageSupport> Support(const MediaOptions& media) {
    std::string note;
    absl::StatusOr<std::shared_ptr<const ImageSupport>> s = ImageSupport::ForModel(kModelDir, vision_, media, &note);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *s : nullptr;
  }

  // input_ids with one placeholder per image (the fixture's ids: start 240, image 242, end 241).
  GenerateRequest IdsWithImages(std::vector<std::string> images) {
    GenerateRequest r;
    r.input_ids = {5};
    for (size_t i = 0; i < images.size(); ++i) {
      r.input_ids.insert(r.input_ids.end(), {240, 242, 241, 10});
      ImageData image;
      image.bytes = std::move(images[i]);
      image.field = absl::StrCat("images[", i, "].data");
      image.mime_field = absl::StrCat("images[", i, "].mime_type");
      r.images.push_back(std::move(image));
    }
    r.input_ids.insert(r.input_ids.end(), {20, 21});
    r.max_new_tokens = 4;
    return r;
  }

  std::optional<Refusal> Validate(const GenerateRequest& r, Dialect dialect, InferenceRequest* out,
                                  const FrontendLimits& limits = FrontendLimits(),
                                  const RequestOrigin& origin = RequestOrigin()) {
    return ValidateRequest(r, limits, model_, dialect, out, origin);
  }

  // Parses a chat body and validates it; the refusal (which must exist).
  Refusal ChatRefusal(const std::string& body, const FrontendLimits& limits = FrontendLimits()) {
    ApiRequest api;
    if (std::optional<Refusal> parse = ParseApiRequest(ApiKind::kChat, body, &api)) return *parse;
    InferenceRequest out;
    std::optional<Refusal> r = Validate(api.request, Dialect::kOpenAiChat, &out, limits);
    EXPECT_TRUE(r.has_value()) << body.substr(0, 200);
    return r.value_or(Refusal());
  }

  VisionConfig vision_;
  ValidationModel model_;
};

TEST(MediaParse, ContentPartsKeepTextAndImagesInOrder) {
  ApiRequest api;
  ASSERT_FALSE(ParseApiRequest(ApiKind::kChat,
                               R"({"model": "m", "messages": [{"role": "user", "content": [
          {"type": "text", "text": "before"},
          {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "high"}},
          {"type": "text", "text": "after"},
          {"type": "image_url", "image_url": "data:image/jpeg;base64,BBBB"}]}],
          "mm_processor_kwargs": {"max_pixels": 100000}})",
                               &api));
  const GenerateRequest& r = api.request;
  ASSERT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(r.messages[0].content, "before\nafter");
  ASSERT_EQ(r.messages[0].parts.size(), 4u);
  EXPECT_FALSE(r.messages[0].parts[0].is_image);
  EXPECT_EQ(r.messages[0].parts[0].text, "before");
  EXPECT_TRUE(r.messages[0].parts[1].is_image);
  EXPECT_EQ(r.messages[0].parts[1].image, 0);
  EXPECT_EQ(r.messages[0].parts[3].image, 1);
  ASSERT_EQ(r.images.size(), 2u);
  EXPECT_EQ(r.images[0].url, "data:image/png;base64,AAAA");
  EXPECT_EQ(r.images[0].field, "messages[0].content[1].image_url.url");
  EXPECT_EQ(r.images[0].part_field, "messages[0].content[1]");
  // vLLM's shorthand: image_url is the URL itself.
  EXPECT_EQ(r.images[1].url, "data:image/jpeg;base64,BBBB");
  EXPECT_EQ(r.images[1].field, "messages[0].content[3].image_url");
  EXPECT_EQ(r.max_pixels, 100000);
  // A string content has no parts.
  ASSERT_FALSE(
      ParseApiRequest(ApiKind::kChat, R"({"model": "m", "messages": [{"role": "user", "content": "hi"}]})", &api));
  EXPECT_TRUE(api.request.messages.back().parts.empty());
}

TEST(MediaParse, MalformedPartsNameTheirPath) {
  struct Case {
    std::string body;
    std::string field;
    RefusalKind kind;
  };
  const std::string head = R"({"model": "m", "messages": [{"role": "user", "content": [)";
  const Case cases[] = {
      {head + R"({"type": "image_url"}]}]})", "messages[0].content[0].image_url", RefusalKind::kMissingParameter},
      {head + R"({"type": "image_url", "image_url": {}}]}]})", "messages[0].content[0].image_url.url",
       RefusalKind::kMissingParameter},
      {head + R"({"type": "image_url", "image_url": {"url": 7}}]}]})", "messages[0].content[0].image_url.url",
       RefusalKind::kInvalidType},
      {head + R"({"type": "image_url", "image_url": 7}]}]})", "messages[0].content[0].image_url",
       RefusalKind::kInvalidType},
      {head + R"({"type": "image_url", "image_url": {"url": ""}}]}]})", "messages[0].content[0].image_url.url",
       RefusalKind::kInvalidValue},
      {head + R"({"type": "input_audio", "input_audio": {}}]}]})", "messages[0].content[0]",
       RefusalKind::kUnsupportedContent},
      {head + R"({"type": "hologram"}]}]})", "messages[0].content[0].type", RefusalKind::kInvalidValue},
      {R"({"model": "m", "messages": [{"role": "user", "content": "x"}], "mm_processor_kwargs": 5})",
       "mm_processor_kwargs", RefusalKind::kInvalidType},
      {R"({"model": "m", "messages": [{"role": "user", "content": "x"}], "mm_processor_kwargs": {"fps": 2}})",
       "mm_processor_kwargs.fps", RefusalKind::kUnsupportedParameter},
      {R"({"model": "m", "messages": [{"role": "user", "content": "x"}], "mm_processor_kwargs": {"max_pixels": "a"}})",
       "mm_processor_kwargs.max_pixels", RefusalKind::kInvalidType},
      {R"({"model": "m", "messages": [{"role": "user", "content": "x"}], "mm_processor_kwargs": {"max_pixels": 0}})",
       "mm_processor_kwargs.max_pixels", RefusalKind::kInvalidValue},
  };
  for (const Case& c : cases) {
    ApiRequest api;
    std::optional<Refusal> r = ParseApiRequest(ApiKind::kChat, c.body, &api);
    ASSERT_TRUE(r.has_value()) << c.body;
    EXPECT_EQ(r->field, c.field) << c.body;
    EXPECT_EQ(r->kind, c.kind) << c.body;
    EXPECT_EQ(r->message.rfind(c.field + ": ", 0), 0u) << r->message;
    EXPECT_EQ(ToHttpError(*r).status, 400);
  }
  // A budget below 1 is told so, not a range the server's image settings would narrow anyway.
  ApiRequest api;
  std::optional<Refusal> r = ParseApiRequest(
      ApiKind::kChat,
      R"({"model": "m", "messages": [{"role": "user", "content": "x"}], "mm_processor_kwargs": {"max_pixels": -5}})",
      &api);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->message,
            "mm_processor_kwargs.max_pixels: -5 is below 1 (a pixel budget within the server's image settings)");
  // One past 64 bits is told the bound it crossed, not "below 1".
  r = ParseApiRequest(
      ApiKind::kChat,
      R"({"model": "m", "messages": [{"role": "user", "content": "x"}], "mm_processor_kwargs": {"max_pixels": 10000000000000000000}})",
      &api);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->field, "mm_processor_kwargs.max_pixels");
  EXPECT_EQ(r->message, "mm_processor_kwargs.max_pixels: 10000000000000000000 is outside [1, 9223372036854775807]");
}

TEST(MediaParse, ProtoPartsAndImages) {
  v1::InferRequest proto;
  v1::Message* m = proto.add_messages();
  m->set_role("user");
  m->add_parts()->set_text("look");
  v1::Image* image = m->add_parts()->mutable_image();
  image->set_data("PNGBYTES");
  image->set_mime_type("image/png");
  proto.set_max_pixels(5000);
  GenerateRequest r;
  ASSERT_FALSE(FromProto(proto, &r));
  ASSERT_EQ(r.messages[0].parts.size(), 2u);
  EXPECT_EQ(r.messages[0].content, "look");
  ASSERT_EQ(r.images.size(), 1u);
  EXPECT_EQ(r.images[0].bytes, "PNGBYTES");
  EXPECT_EQ(r.images[0].field, "messages[0].parts[1].image.data");
  EXPECT_EQ(r.images[0].mime_field, "messages[0].parts[1].image.mime_type");
  EXPECT_EQ(r.images[0].part_field, "messages[0].parts[1]");
  EXPECT_EQ(r.max_pixels, 5000);

  m->set_content("and text");
  std::optional<Refusal> both = FromProto(proto, &r);
  ASSERT_TRUE(both);
  EXPECT_EQ(both->field, "messages[0]");
  m->clear_content();
  m->add_parts();  // neither text nor image
  r = GenerateRequest();
  std::optional<Refusal> empty = FromProto(proto, &r);
  ASSERT_TRUE(empty);
  EXPECT_EQ(empty->field, "messages[0].parts[2]");

  v1::InferRequest ids;
  ids.add_input_ids(1);
  ids.add_images()->set_data("X");
  r = GenerateRequest();
  ASSERT_FALSE(FromProto(ids, &r));
  EXPECT_EQ(r.images[0].field, "images[0].data");
  ids.add_messages()->set_role("user");
  r = GenerateRequest();
  std::optional<Refusal> beside = FromProto(ids, &r);
  ASSERT_TRUE(beside);
  EXPECT_EQ(beside->field, "images[0]");
}

// The fixture's cases with input_ids and images: the expanded prompt and each image's grid are
// transformers' (expected.json).
TEST_F(MediaTest, InputIdsImagesExpandAsTransformers) {
  const nlohmann::json expected = Expected();
  int checked = 0;
  for (const nlohmann::json& c : expected["cases"]) {
    GenerateRequest r;
    r.input_ids = c["input_ids"].get<std::vector<int32_t>>();
    for (size_t i = 0; i < c["images"].size(); ++i) {
      ImageData image;
      image.bytes = testing::ReadWholeFile(kFixture + "/" + c["images"][i].get<std::string>());
      image.field = absl::StrCat("images[", i, "].data");
      r.images.push_back(image);
    }
    r.max_new_tokens = 4;
    InferenceRequest out;
    std::optional<Refusal> refused = Validate(r, Dialect::kProto, &out);
    ASSERT_FALSE(refused) << c["name"] << ": " << refused->message;
    EXPECT_EQ(out.input_ids, c["expanded_input_ids"].get<std::vector<int32_t>>()) << c["name"];
    ASSERT_NE(out.multimodal, nullptr);
    ASSERT_EQ(out.multimodal->images.size(), c["images"].size());
    for (size_t i = 0; i < c["images"].size(); ++i) {
      const ImageInput& image = out.multimodal->images[i];
      EXPECT_EQ(image.grid_h, c["image_grid_thw"][i][1].get<int>()) << c["name"];
      EXPECT_EQ(image.grid_w, c["image_grid_thw"][i][2].get<int>()) << c["name"];
      EXPECT_EQ(image.num_tokens, c["image_tokens"][i].get<int>()) << c["name"];
      // The resized size is the patch grid times patch_size (14).
      EXPECT_EQ(image.resized_height, 14 * c["image_grid_thw"][i][1].get<int>());
      EXPECT_EQ(image.resized_width, 14 * c["image_grid_thw"][i][2].get<int>());
      EXPECT_EQ(image.patch_dim, c["pixel_values_shape"][1].get<int>());
    }
    // The pixels as transformers saw them (the RGBA image's alpha dropped, as load_image does):
    // the first values (printed to 6 decimals) and the sum over every image.
    const std::vector<float> first = out.multimodal->images[0].PixelValues();
    const std::vector<double> want_first = c["pixel_values_first"].get<std::vector<double>>();
    for (size_t k = 0; k < want_first.size(); ++k) {
      EXPECT_NEAR(first[k], want_first[k], 1e-5) << c["name"] << " pixel " << k;
    }
    double sum = 0;
    for (const ImageInput& image : out.multimodal->images) {
      for (float v : image.PixelValues()) sum += v;
    }
    EXPECT_NEAR(sum, c["pixel_values_sum"].get<double>(), 1e-3 * std::max(1.0, std::abs(sum))) << c["name"];
    const std::vector<ImageUsage> usage = ImageUsages(out.multimodal.get());
    EXPECT_EQ(usage.size(), c["images"].size());
    ++checked;
  }
  EXPECT_GE(checked, 8);
}

// 108x240 (a phone shape): round(240/28)=9 -> 252, round(108/28)=4 -> 112; 2*252*112 = 56,448 is
// inside [12,544, 11,760,000]: 252x112, grid 18x8, 36 tokens. 1x1: scaled up to 28x28 first
// (transformers' small-image step), 2*28*28 = 1,568 < 12,544: beta = sqrt(8), ceil(28*2.83/28)*28
// = 84: 84x84, 9 tokens, i.e. accepted, as transformers accepts it.
TEST_F(MediaTest, PhoneShapeAndOnePixel) {
  InferenceRequest out;
  ASSERT_FALSE(Validate(IdsWithImages({Png(108, 240), Png(1, 1)}), Dialect::kProto, &out));
  const std::vector<ImageUsage> usage = ImageUsages(out.multimodal.get());
  ASSERT_EQ(usage.size(), 2u);
  EXPECT_EQ(usage[0].height, 252);
  EXPECT_EQ(usage[0].width, 112);
  EXPECT_EQ(usage[0].tokens, 36);
  EXPECT_EQ(usage[1].height, 84);
  EXPECT_EQ(usage[1].width, 84);
  EXPECT_EQ(usage[1].tokens, 9);
  EXPECT_EQ(ResizedSizes(usage), "252x112,84x84");
  EXPECT_EQ(out.input_ids.size(), 11u + 36 + 9 - 2);
}

// phone.png is 60x134 (w x h): 140x56 by default (expected.json: grid 10x4). With max_pixels
// 6,272 = 2*56*56: 2*140*56 = 15,680 is above, beta = sqrt(2*134*60/6272) = 1.601,
// floor(134/1.601/28)*28 = 56, floor(60/1.601/28)*28 = 28: 56x28, grid 4x2, 2 tokens.
TEST_F(MediaTest, RequestMaxPixelsLowersAndIsBoundedByTheServer) {
  GenerateRequest r = IdsWithImages({testing::ReadWholeFile(kFixture + "/images/phone.png")});
  InferenceRequest out;
  ASSERT_FALSE(Validate(r, Dialect::kProto, &out));
  EXPECT_EQ(out.multimodal->images[0].resized_height, 140);
  EXPECT_EQ(out.multimodal->images[0].resized_width, 56);
  r.max_pixels = 6272;
  ASSERT_FALSE(Validate(r, Dialect::kProto, &out));
  EXPECT_EQ(out.multimodal->images[0].resized_height, 56);
  EXPECT_EQ(out.multimodal->images[0].resized_width, 28);
  EXPECT_EQ(out.multimodal->images[0].num_tokens, 2);

  // Above the server's limit (the checkpoint's size.longest_edge, 11,760,000): refused, named.
  r.max_pixels = 11'760'001;
  std::optional<Refusal> above = Validate(r, Dialect::kProto, &out);
  ASSERT_TRUE(above);
  EXPECT_EQ(above->field, "max_pixels");
  EXPECT_EQ(above->message.rfind("max_pixels: 11760001 is outside [1568, 11760000]", 0), 0u) << above->message;
  above = Validate(r, Dialect::kOpenAiChat, &out);
  EXPECT_EQ(above->field, "mm_processor_kwargs.max_pixels");
  // Below the smallest image, 2 x 28 x 28.
  r.max_pixels = 1567;
  EXPECT_EQ(Validate(r, Dialect::kProto, &out)->field, "max_pixels");

  // --max-pixels replaces size.longest_edge: the same arithmetic as the request's override, and a
  // request may not go above it.
  MediaOptions media;
  media.max_pixels = 6272;
  model_.images = Support(media);
  r.max_pixels = 0;
  ASSERT_FALSE(Validate(r, Dialect::kProto, &out));
  EXPECT_EQ(out.multimodal->images[0].num_tokens, 2);
  r.max_pixels = 6273;
  EXPECT_EQ(Validate(r, Dialect::kProto, &out)->field, "max_pixels");
  // Below the smallest image: refused at start, naming the flag.
  media.max_pixels = 100;
  std::string note;
  absl::StatusOr<std::shared_ptr<const ImageSupport>> tiny = ImageSupport::ForModel(kModelDir, vision_, media, &note);
  ASSERT_FALSE(tiny.ok());
  EXPECT_EQ(tiny.status().message().rfind("--max-pixels: 100 is below", 0), 0u) << tiny.status();
}

// Every bad image: 400 / INVALID_ARGUMENT naming the image's JSON path, before the engine.
TEST_F(MediaTest, BadImagesNameTheirJsonPath) {
  const std::string url_field = "messages[1].content[0].image_url.url";
  const std::string truncated = Png(64, 64).substr(0, 60);
  struct Case {
    std::string what;
    std::string url;
    std::string message_has;
  };
  const Case cases[] = {
      {"truncated PNG", DataUrl(truncated), "PNG"},
      {"40000x40000 header (decompression bomb)", DataUrl(PngBomb(40000, 40000)), "40000"},
      {"not an image", DataUrl("hello, this is text"), "not a PNG or JPEG image"},
      {"empty image", DataUrl(""), ""},
      {"wrong base64", "data:image/png;base64,@@@not-base64@@@", "not valid base64"},
      {"URL-safe base64", "data:image/png;base64,iVBORw0KGgo-_AAAA", "the URL-safe alphabet"},
      {"GIF media type", DataUrl("GIF89a", "image/gif"), "image/gif"},
      {"no media type", "data:;base64,AAAA", "is not supported"},
      {"not base64", "data:image/png,rawbytes", "only base64"},
      {"aspect ratio above 200 (1x250)", DataUrl(Png(1, 250)), "aspect ratio must be smaller than 200"},
      {"zero width", DataUrl(PngBomb(0, 10)), ""},
      {"http URL", "http://example.com/screen.png", "fetching image URLs is not enabled"},
      {"https URL", "https://example.com/screen.png", "fetching image URLs is not enabled"},
      {"file URL without --allowed-local-media-path", "file:///etc/passwd", "--allowed-local-media-path"},
      {"ftp URL", "ftp://example.com/x.png", "not a supported image URL"},
  };
  for (const Case& c : cases) {
    const Refusal r = ChatRefusal(ChatBody(ImagePart(c.url)));
    EXPECT_EQ(r.code, absl::StatusCode::kInvalidArgument) << c.what;
    EXPECT_EQ(r.field, url_field) << c.what << ": " << r.message;
    EXPECT_EQ(r.message.rfind(url_field + ": ", 0), 0u) << c.what << ": " << r.message;
    EXPECT_NE(r.message.find(c.message_has), std::string::npos) << c.what << ": " << r.message;
    const HttpError e = ToHttpError(r);
    EXPECT_EQ(e.status, 400) << c.what;
    EXPECT_EQ(e.param, url_field) << c.what;
  }
  // The decoder's message names the numbers.
  const Refusal bomb = ChatRefusal(ChatBody(ImagePart(DataUrl(PngBomb(40000, 40000)))));
  EXPECT_NE(bomb.message.find("1600000000"), std::string::npos) << bomb.message;
}

TEST_F(MediaTest, CountRoleAndModelLimits) {
  const std::string good = ImagePart(DataUrl(Png(56, 56)));
  FrontendLimits limits;
  limits.media.limit_images_per_prompt = 2;
  // The third image is the one over the limit.
  Refusal r = ChatRefusal(ChatBody(absl::StrCat(good, ",", good, ",", good)), limits);
  EXPECT_EQ(r.field, "messages[1].content[2]");
  EXPECT_EQ(r.message,
            "messages[1].content[2]: 3 images in the request; at most 2 allowed (--limit-images-per-prompt)");
  limits.media.limit_images_per_prompt = 0;
  EXPECT_EQ(ChatRefusal(ChatBody(good), limits).field, "messages[1].content[0]");

  // Images in a system or assistant message: the template renders them in user messages only.
  r = ChatRefusal(absl::StrCat(R"({"model": "m", "messages": [{"role": "assistant", "content": [)", good,
                               R"(]}, {"role": "user", "content": "hi"}]})"));
  EXPECT_EQ(r.field, "messages[0].content[0]");
  EXPECT_EQ(r.kind, RefusalKind::kUnsupportedContent);
  EXPECT_NE(r.message.find("user messages only"), std::string::npos) << r.message;

  // A text model takes no images (the first one is named).
  model_.images = nullptr;
  r = ChatRefusal(ChatBody(good));
  EXPECT_EQ(r.field, "messages[1].content[0]");
  EXPECT_EQ(r.kind, RefusalKind::kUnsupportedContent);
  EXPECT_EQ(ToHttpError(r).code, "unsupported_content_type");
  EXPECT_NE(r.message.find("no vision input"), std::string::npos) << r.message;
}

// A prompt's placeholders must match its images: one spelled in the ids (or the text) without an
// image is refused, naming the prompt.
TEST_F(MediaTest, PlaceholdersWithoutImagesAreRefused) {
  GenerateRequest r = IdsWithImages({});
  r.input_ids = {5, 240, 242, 241, 20};
  InferenceRequest out;
  std::optional<Refusal> refused = Validate(r, Dialect::kProto, &out);
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->field, "input_ids");
  EXPECT_NE(refused->message.find("disagree"), std::string::npos) << refused->message;
  // Two images, one placeholder.
  r = IdsWithImages({Png(56, 56), Png(56, 56)});
  r.input_ids = {5, 240, 242, 241, 20};
  EXPECT_EQ(Validate(r, Dialect::kProto, &out)->field, "input_ids");
  // A text prompt to a vision model: no multimodal prompt, ids as sent.
  r = IdsWithImages({});
  ASSERT_FALSE(Validate(r, Dialect::kProto, &out));
  EXPECT_EQ(out.multimodal, nullptr);
  EXPECT_EQ(out.input_ids, r.input_ids);
}

TEST_F(MediaTest, ProtoFieldsNamed) {
  GenerateRequest r = IdsWithImages({Png(10, 3000)});  // aspect ratio 300
  InferenceRequest out;
  std::optional<Refusal> refused = Validate(r, Dialect::kProto, &out);
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->field, "images[0].data");
  EXPECT_EQ(refused->ToStatus().code(), absl::StatusCode::kInvalidArgument);
  r = IdsWithImages({Png(56, 56)});
  r.images[0].mime_type = "image/webp";
  refused = Validate(r, Dialect::kProto, &out);
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->field, "images[0].mime_type");
  r.images[0].mime_type = "image/jpeg";  // a declared type is not checked against the bytes (PIL opens both)
  EXPECT_FALSE(Validate(r, Dialect::kProto, &out));
}

class LocalMediaTest : public glmserve::testing::ScratchDirTest {
 protected:
  void SetUp() override {
    ScratchDirTest::SetUp();
    std::filesystem::create_directories(dir_ / "media");
    std::ofstream(dir_ / "media" / "screen.png", std::ios::binary) << Png(56, 56);
    std::ofstream(dir_ / "secret.png", std::ios::binary) << Png(56, 56);
    std::filesystem::create_symlink(dir_ / "secret.png", dir_ / "media" / "link.png");
    media_.allowed_local_media_path = std::filesystem::canonical(dir_ / "media").string();
  }
  std::optional<Refusal> Bytes(const std::string& url, std::string* bytes) {
    ImageData image;
    image.url = url;
    image.field = "messages[0].content[0].image_url.url";
    return ImageBytes(image, media_, bytes);
  }
  MediaOptions media_;
};

TEST_F(LocalMediaTest, FileUrlsOnlyUnderTheAllowedDirectory) {
  std::string bytes;
  const std::string media = (dir_ / "media").string();
  ASSERT_FALSE(Bytes("file://" + media + "/screen.png", &bytes));
  EXPECT_EQ(bytes, Png(56, 56));
  ASSERT_FALSE(Bytes("file://localhost" + media + "/screen.png", &bytes));
  // Percent-encoded, as URLs are.
  ASSERT_FALSE(Bytes("file://" + media + "/scr%65en.png", &bytes));
  // Outside: '..', a symlink pointing out, a missing file, the directory itself: one message.
  for (const std::string& url :
       {"file://" + media + "/../secret.png", "file://" + media + "/link.png", "file://" + media + "/missing.png",
        "file://" + media, std::string("file:///etc/passwd"), "file://" + media + "/%2e%2e/secret.png"}) {
    std::optional<Refusal> r = Bytes(url, &bytes);
    ASSERT_TRUE(r) << url;
    EXPECT_EQ(r->field, "messages[0].content[0].image_url.url");
    EXPECT_NE(r->message.find("is not a readable image file under the server's allowed local media directory"),
              std::string::npos)
        << r->message;
  }
  // Not a local absolute path.
  std::optional<Refusal> r = Bytes("file://otherhost/x.png", &bytes);
  ASSERT_TRUE(r);
  EXPECT_NE(r->message.find("absolute path"), std::string::npos) << r->message;
  // What is wrong with the URL is said (each read "not a file:// URL with an absolute path").
  for (const auto& [url, says] : std::vector<std::pair<std::string, std::string>>{
           {"file://" + media + "/50%.png", "not followed by two hex digits (a '%' in a file name is spelled %25)"},
           {"file://" + media + "/a%00.png", "holds %00"},
           {"file://" + media + "/screen.png?x=1", "holds a query or fragment"},
           {"file://" + media + "/screen.png#top", "holds a query or fragment"}}) {
    std::optional<Refusal> bad = Bytes(url, &bytes);
    ASSERT_TRUE(bad) << url;
    EXPECT_NE(bad->message.find(says), std::string::npos) << bad->message;
  }
}

// ------------------------------------------------------------------ decode slots, deadlines, budgets

using Clock = std::chrono::steady_clock;
constexpr auto kNoDeadline = Clock::time_point::max();

// Waits (bounded) until `slots` has `n` callers waiting.
bool WaitForWaiting(const DecodeSlots& slots, int32_t n) {
  for (int i = 0; i < 5000 && slots.waiting() != n; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return slots.waiting() == n;
}

TEST(DecodeSlotsTest, HandedOutInArrivalOrder) {
  DecodeSlots slots(1, std::chrono::milliseconds(5));
  ASSERT_TRUE(slots.Acquire(kNoDeadline, nullptr).ok());
  std::mutex mu;
  std::vector<int> order;
  std::vector<std::thread> waiters;
  // Each waiter queues only once the one before it waits, so arrival order is 0, 1, ..., 5.
  for (int i = 0; i < 6; ++i) {
    waiters.emplace_back([&, i] {
      ASSERT_TRUE(slots.Acquire(kNoDeadline, nullptr).ok());
      {
        std::lock_guard<std::mutex> lock(mu);
        order.push_back(i);
      }
      slots.Release();
    });
    ASSERT_TRUE(WaitForWaiting(slots, i + 1));
  }
  slots.Release();
  for (std::thread& t : waiters) t.join();
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(slots.waiting(), 0);
}

TEST(DecodeSlotsTest, DeadlineAndAbandonedGiveUpThePlace) {
  DecodeSlots slots(1, std::chrono::milliseconds(5));
  // A passed deadline is refused even with a slot free.
  EXPECT_EQ(slots.Acquire(Clock::now() - std::chrono::milliseconds(1), nullptr).code(),
            absl::StatusCode::kDeadlineExceeded);
  ASSERT_TRUE(slots.Acquire(kNoDeadline, nullptr).ok());  // held from here on
  EXPECT_EQ(slots.Acquire(Clock::now() + std::chrono::milliseconds(30), nullptr).code(),
            absl::StatusCode::kDeadlineExceeded);
  std::atomic<bool> gone{false};
  std::thread later([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    gone = true;
  });
  EXPECT_EQ(slots.Acquire(kNoDeadline, [&] { return gone.load(); }).code(), absl::StatusCode::kCancelled);
  later.join();
  EXPECT_EQ(slots.waiting(), 0);

  // A first waiter that gives up lets the one behind it take the slot.
  std::atomic<bool> first_gone{false};
  absl::Status first, second;
  std::thread a([&] { first = slots.Acquire(kNoDeadline, [&] { return first_gone.load(); }); });
  ASSERT_TRUE(WaitForWaiting(slots, 1));
  std::thread b([&] { second = slots.Acquire(kNoDeadline, nullptr); });
  ASSERT_TRUE(WaitForWaiting(slots, 2));
  first_gone = true;
  ASSERT_TRUE(WaitForWaiting(slots, 1));
  a.join();
  slots.Release();
  b.join();
  EXPECT_EQ(first.code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(second.ok()) << second;
  slots.Release();
}

// Two slots, a share of one per client while another waits: a client alone takes both; with both
// held by it, a second client that queues after its third request gets the next free slot first.
TEST(DecodeSlotsTest, AClientHoldsHalfTheSlotsWhileAnotherWaits) {
  DecodeSlots slots(2, std::chrono::milliseconds(5));
  ASSERT_TRUE(slots.Acquire(kNoDeadline, nullptr, "a").ok());
  ASSERT_TRUE(slots.Acquire(kNoDeadline, nullptr, "a").ok());  // alone: past its share
  std::mutex mu;
  std::vector<std::string> order;
  auto waiter = [&](const std::string& client) {
    return std::thread([&, client] {
      ASSERT_TRUE(slots.Acquire(kNoDeadline, nullptr, client).ok());
      {
        std::lock_guard<std::mutex> lock(mu);
        order.push_back(client);
      }
    });
  };
  std::thread a3 = waiter("a");
  ASSERT_TRUE(WaitForWaiting(slots, 1));
  std::thread b1 = waiter("b");
  ASSERT_TRUE(WaitForWaiting(slots, 2));
  slots.Release("a");  // "a" still holds its share: the slot goes to "b", though "a" came first
  b1.join();
  ASSERT_TRUE(WaitForWaiting(slots, 1));
  slots.Release("a");  // now "a" holds nothing but its waiter
  a3.join();
  EXPECT_EQ(order, (std::vector<std::string>{"b", "a"}));
  EXPECT_EQ(slots.waiting(), 0);
  slots.Release("a");
  slots.Release("b");
  // Everyone released: a client alone again takes both.
  ASSERT_TRUE(slots.Acquire(kNoDeadline, nullptr, "a").ok());
  ASSERT_TRUE(slots.Acquire(Clock::now() + std::chrono::seconds(5), nullptr, "a").ok());
  slots.Release("a");
  slots.Release("a");
}

// 100x100 images are 10,000 source pixels each: a budget of 15,000 takes one, and the second is
// refused by its field, from the headers, before anything is decoded.
TEST_F(MediaTest, RequestPixelBudgetNamesTheImageOverIt) {
  MediaOptions media;
  media.max_request_image_pixels = 15'000;
  model_.images = Support(media);
  ASSERT_EQ(model_.images->max_request_image_pixels(), 15'000);
  InferenceRequest out;
  std::optional<Refusal> r = Validate(IdsWithImages({Png(100, 100), Png(100, 100)}), Dialect::kProto, &out);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->code, absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r->field, "images[1].data");
  EXPECT_EQ(r->message,
            "images[1].data: image 100x100 (width x height) brings the request's images to 20000 pixels to decode; at "
            "most 15000 per request (--max-request-image-pixels); send fewer or smaller images");
  EXPECT_FALSE(Validate(IdsWithImages({Png(100, 100), Png(50, 50)}), Dialect::kProto, &out));
  // The JSON path over HTTP.
  const Refusal chat =
      ChatRefusal(ChatBody(absl::StrCat(ImagePart(DataUrl(Png(100, 100))), ", ", ImagePart(DataUrl(Png(100, 100))))));
  EXPECT_EQ(chat.field, "messages[1].content[1].image_url.url");
  // The default: --limit-images-per-prompt (10) x the largest image kept, 11,760,000 / 2.
  EXPECT_EQ(Support(MediaOptions())->max_request_image_pixels(), 58'800'000);
}

// --max-pixels 6,272 keeps at most 3,136 pixels: a source above 16 x that (50,176) is refused
// from its header, naming the image.
TEST_F(MediaTest, SourcePixelsBoundedByTheServersMaxPixels) {
  MediaOptions media;
  media.max_pixels = 6272;
  model_.images = Support(media);
  EXPECT_EQ(model_.images->max_source_pixels(), 50'176);
  InferenceRequest out;
  EXPECT_FALSE(Validate(IdsWithImages({Png(224, 224)}), Dialect::kProto, &out));  // 50,176
  std::optional<Refusal> r = Validate(IdsWithImages({Png(225, 224)}), Dialect::kProto, &out);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->field, "images[0].data");
  EXPECT_NE(r->message.find("has 50400 pixels; this server decodes at most 50176"), std::string::npos) << r->message;
  // The checkpoint's own 5.88 M allows 94 M: the decoder's 50 M holds.
  EXPECT_EQ(Support(MediaOptions())->max_source_pixels(), 50'000'000);
}

TEST_F(MediaTest, DeadlineAndAbandonedStopImagesNamingThem) {
  GenerateRequest r = IdsWithImages({Png(64, 64), Png(64, 64)});
  r.deadline = Clock::now() - std::chrono::milliseconds(1);
  InferenceRequest out;
  std::optional<Refusal> late = Validate(r, Dialect::kProto, &out);
  ASSERT_TRUE(late);
  EXPECT_EQ(late->code, absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(late->kind, RefusalKind::kDeadline);
  EXPECT_EQ(late->message.rfind("images[0].data: the request's deadline passed", 0), 0u) << late->message;

  // The client leaves after the first image was read: the second is never decoded.
  r.deadline = kNoDeadline;
  int asked = 0;
  RequestOrigin origin;
  origin.abandoned = [&] { return ++asked > 1; };
  std::optional<Refusal> gone = Validate(r, Dialect::kProto, &out, FrontendLimits(), origin);
  ASSERT_TRUE(gone);
  EXPECT_EQ(gone->code, absl::StatusCode::kCancelled);
  EXPECT_EQ(gone->kind, RefusalKind::kCancelled);
  EXPECT_EQ(gone->message.rfind("images[1].data: the client went away", 0), 0u) << gone->message;
  origin.abandoned = [] { return false; };
  EXPECT_FALSE(Validate(r, Dialect::kProto, &out, FrontendLimits(), origin));
}

// photo.jpg is 96x72; under max_pixels 1,568 it becomes 28x28, less than half of it each way, so
// it is decoded at 4/8 (48x36) and resized from there to the size its header gives.
TEST_F(MediaTest, ScaledJpegKeepsTheHeadersGrid) {
  GenerateRequest r = IdsWithImages({testing::ReadWholeFile(kFixture + "/images/photo.jpg")});
  r.max_pixels = 1568;
  InferenceRequest out;
  ASSERT_FALSE(Validate(r, Dialect::kProto, &out));
  const ImageInput& image = out.multimodal->images[0];
  absl::StatusOr<vision::ImageGrid> grid = model_.images->processor().Grid(72, 96, {.max_pixels = 1568});
  ASSERT_TRUE(grid.ok());
  EXPECT_EQ(image.resized_height, grid->resized_height);
  EXPECT_EQ(image.resized_width, grid->resized_width);
  EXPECT_EQ(image.resized_height, 28);
  EXPECT_EQ(image.num_tokens, 1);
  EXPECT_EQ(image.pixel_codes.size(), static_cast<size_t>(grid->num_patches()) * image.patch_dim);
}

}  // namespace
}  // namespace glmserve
