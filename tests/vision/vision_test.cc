// runtime/vision against transformers' Glm4v image processors (fixtures from
// scripts/make_vision_fixtures.py) and against hostile input.
#include <gtest/gtest.h>
#include <jpeglib.h>
#include <zlib.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "runtime/vision/glm4v_processor.h"
#include "runtime/vision/image_decode.h"
#include "tests/testutil/read_file.h"

namespace glmserve::vision {
namespace {

using Json = nlohmann::json;

const std::string kDir = std::string(GLMSERVE_FIXTURES_DIR) + "/vision/";

const Json& Expected() {
  static const Json* j = new Json(Json::parse(testing::ReadWholeFile(kDir + "expected.json")));
  return *j;
}

std::vector<uint8_t> Inflate(const std::string& z, size_t size) {
  std::vector<uint8_t> out(size);
  uLongf n = size;
  EXPECT_EQ(uncompress(out.data(), &n, reinterpret_cast<const Bytef*>(z.data()), z.size()), Z_OK);
  EXPECT_EQ(n, size);
  return out;
}

std::string Fnv1a64(const std::vector<uint8_t>& data) {
  uint64_t h = 0xCBF29CE484222325ULL;
  for (uint8_t b : data) {
    h ^= b;
    h *= 0x100000001B3ULL;
  }
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

RgbImage DecodeOk(const std::string& bytes) {
  absl::StatusOr<ImageDecoder> d = ImageDecoder::Create();
  EXPECT_TRUE(d.ok());
  absl::StatusOr<RgbImage> img = d->Decode(bytes);
  EXPECT_TRUE(img.ok()) << img.status();
  return img.ok() ? *img : RgbImage{};
}

absl::Status DecodeStatus(const std::string& bytes, DecodeOptions options = {}) {
  absl::StatusOr<ImageDecoder> d = ImageDecoder::Create(options);
  EXPECT_TRUE(d.ok());
  return d->Decode(bytes).status();
}

// ------------------------------------------------------------------ decoding = PIL + convert_to_rgb

TEST(VisionDecode, EveryFixtureImageDecodesAsPil) {
  int n = 0;
  for (const auto& [name, want] : Expected()["decoded"].items()) {
    SCOPED_TRACE(name);
    RgbImage img = DecodeOk(testing::ReadWholeFile(kDir + "images/" + name));
    EXPECT_EQ(img.width, want["width"].get<int>());
    EXPECT_EQ(img.height, want["height"].get<int>());
    // Bit-exact: the FNV-1a hash of PIL's RGB bytes (mode in the fixture: RGB, L, P, RGBA, LA, I;16, CMYK).
    EXPECT_EQ(Fnv1a64(img.pixels), want["fnv1a64"].get<std::string>()) << "mode " << want["mode"];
    ++n;
  }
  EXPECT_GE(n, 17);
}

TEST(VisionDecode, ExifOrientationIsNotApplied) {
  // exif6 carries orientation 6 (rotate to display); PIL's Image.open and the processor ignore it.
  RgbImage img = DecodeOk(testing::ReadWholeFile(kDir + "images/exif6_56x30.jpg"));
  EXPECT_EQ(img.width, 56);
  EXPECT_EQ(img.height, 30);
}

TEST(VisionDecode, AlphaDropKeepsColorChannels) {
  const std::string bytes = testing::ReadWholeFile(kDir + "images/rgba_60x60.png");
  absl::StatusOr<ImageDecoder> drop = ImageDecoder::Create({.alpha = AlphaMode::kDrop});
  ASSERT_TRUE(drop.ok());
  absl::StatusOr<RgbImage> a = drop->Decode(bytes);
  ASSERT_TRUE(a.ok()) << a.status();
  RgbImage b = DecodeOk(bytes);
  // Pixel 0 has alpha 0 in the fixture: white when composited, its own color when dropped.
  EXPECT_EQ(b.pixels[0], 255);
  EXPECT_NE(a->pixels, b.pixels);
}

// ------------------------------------------------------------------ preprocessing = transformers

TEST(VisionProcess, PixelValuesEqualTransformers) {
  const Json& e = Expected();
  int cases = 0;
  for (const Json& c : e["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const std::string backend = c["backend"];
    Glm4vProcessorOptions o;
    o.backend = backend == "pil" ? ResizeBackend::kPil : ResizeBackend::kTorchvision;
    absl::StatusOr<Glm4vImageProcessor> proc = Glm4vImageProcessor::Create(o);
    ASSERT_TRUE(proc.ok()) << proc.status();
    ProcessOverrides ov;
    if (!c["max_pixels"].is_null()) ov.max_pixels = c["max_pixels"].get<int64_t>();
    RgbImage img = DecodeOk(testing::ReadWholeFile(kDir + "images/" + c["image"].get<std::string>()));
    absl::StatusOr<ProcessedImage> out = proc->Process(img, ov);
    ASSERT_TRUE(out.ok()) << out.status();

    const std::vector<int> thw = c["image_grid_thw"];
    EXPECT_EQ(out->grid.grid_t, thw[0]);
    EXPECT_EQ(out->grid.grid_h, thw[1]);
    EXPECT_EQ(out->grid.grid_w, thw[2]);
    const std::vector<int64_t> shape = c["pixel_values_shape"];
    ASSERT_EQ(out->grid.num_patches(), shape[0]);
    ASSERT_EQ(out->patch_dim, shape[1]);
    EXPECT_EQ(out->num_image_tokens, shape[0] / 4);

    const size_t n = static_cast<size_t>(shape[0] * shape[1]);
    std::vector<uint8_t> codes = Inflate(testing::ReadWholeFile(kDir + c["codes"].get<std::string>()), n);
    const Json& table = e["tables"][backend];
    const int64_t per_channel = shape[1] / 3;
    // Tolerance 0: every element bit-equal to transformers' float32. The count of resized-uint8
    // differences is reported on failure (an off-by-one in resampling moves one code).
    size_t mismatches = 0;
    float max_diff = 0;
    const std::vector<float> pixel_values = out->PixelValues();
    ASSERT_EQ(pixel_values.size(), n);
    for (size_t i = 0; i < n; ++i) {
      const int ch = static_cast<int>((i % shape[1]) / per_channel);
      const float want = table[ch][codes[i]].get<float>();
      const float got = pixel_values[i];
      if (got != want) {
        ++mismatches;
        max_diff = std::max(max_diff, std::abs(got - want));
      }
    }
    EXPECT_EQ(mismatches, 0u) << "of " << n << " elements differ, max |diff| " << max_diff;
    ++cases;
  }
  EXPECT_GE(cases, 20);
}

TEST(VisionProcess, GridsEqualTransformersSmartResize) {
  absl::StatusOr<Glm4vImageProcessor> proc = Glm4vImageProcessor::Create();
  ASSERT_TRUE(proc.ok());
  for (const Json& g : Expected()["grids"]) {
    SCOPED_TRACE(g.dump());
    ProcessOverrides ov;
    if (!g["max_pixels"].is_null()) ov.max_pixels = g["max_pixels"].get<int64_t>();
    absl::StatusOr<ImageGrid> grid = proc->Grid(g["height"].get<int64_t>(), g["width"].get<int64_t>(), ov);
    ASSERT_TRUE(grid.ok()) << grid.status();
    EXPECT_EQ(grid->resized_height, g["resized"][0].get<int>());
    EXPECT_EQ(grid->resized_width, g["resized"][1].get<int>());
    EXPECT_EQ(grid->grid_h, g["grid"][1].get<int>());
    EXPECT_EQ(grid->grid_w, g["grid"][2].get<int>());
    EXPECT_EQ(grid->num_patches(), g["patches"].get<int64_t>());
    absl::StatusOr<int64_t> tokens = proc->NumImageTokens(g["height"].get<int64_t>(), g["width"].get<int64_t>(), ov);
    ASSERT_TRUE(tokens.ok());
    EXPECT_EQ(*tokens, g["image_tokens"].get<int64_t>());
  }
}

TEST(VisionProcess, PhoneScreenshotUnderFiveMillionPixels) {
  // Issue 20: a 1080x2400 screenshot with max_pixels 5,000,000 is a 168x74 patch grid, 3,108 tokens.
  absl::StatusOr<Glm4vImageProcessor> proc = Glm4vImageProcessor::Create();
  ASSERT_TRUE(proc.ok());
  absl::StatusOr<ImageGrid> g = proc->Grid(2400, 1080, {.max_pixels = 5'000'000});
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->grid_h, 168);
  EXPECT_EQ(g->grid_w, 74);
  EXPECT_EQ(g->resized_height, 2352);
  EXPECT_EQ(g->resized_width, 1036);
  EXPECT_EQ(*proc->NumImageTokens(2400, 1080, {.max_pixels = 5'000'000}), 3108);

  RgbImage img;
  img.width = 1080;
  img.height = 2400;
  img.pixels.assign(size_t{1080} * 2400 * 3, 200);
  absl::StatusOr<ProcessedImage> out = proc->Process(img, {.max_pixels = 5'000'000});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->grid.num_patches(), 12432);
  EXPECT_EQ(out->num_image_tokens, 3108);
  EXPECT_EQ(out->pixel_codes.size(), size_t{12432} * 1176);
}

TEST(VisionProcess, ExtremeAspectRatiosRefusedAsTransformers) {
  absl::StatusOr<Glm4vImageProcessor> proc = Glm4vImageProcessor::Create();
  ASSERT_TRUE(proc.ok());
  for (const Json& g : Expected()["grid_errors"]) {
    SCOPED_TRACE(g.dump());
    absl::StatusOr<ImageGrid> grid = proc->Grid(g["height"].get<int64_t>(), g["width"].get<int64_t>());
    ASSERT_FALSE(grid.ok());
    EXPECT_EQ(grid.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(grid.status().message().find("absolute aspect ratio must be smaller than 200"), std::string::npos)
        << grid.status();
    RgbImage img;
    img.width = g["width"].get<int>();
    img.height = g["height"].get<int>();
    img.pixels.assign(static_cast<size_t>(img.width) * img.height * 3, 0);
    EXPECT_EQ(proc->Process(img).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(VisionProcess, ZeroSizeAndBadOverridesRefused) {
  absl::StatusOr<Glm4vImageProcessor> proc = Glm4vImageProcessor::Create();
  ASSERT_TRUE(proc.ok());
  EXPECT_EQ(proc->Process(RgbImage{}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(proc->Grid(0, 100).status().code(), absl::StatusCode::kInvalidArgument);
  absl::Status s = proc->Grid(100, 100, {.max_pixels = 1000}).status();  // below 2 * 28 * 28
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("max_pixels"), std::string::npos) << s;
  EXPECT_EQ(proc->Grid(100, 100, {.max_pixels = -5}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(VisionProcess, OptionsValidatedByCreate) {
  auto field_named = [](Glm4vProcessorOptions o, const char* field) {
    absl::Status s = Glm4vImageProcessor::Create(o).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_NE(s.message().find(field), std::string::npos) << s;
  };
  field_named({.patch_size = 0}, "patch_size");
  field_named({.temporal_patch_size = 0}, "temporal_patch_size");
  field_named({.merge_size = 0}, "merge_size");
  field_named({.min_pixels = 0}, "min_pixels");
  field_named({.min_pixels = 20000, .max_pixels = 10000}, "min_pixels");
  field_named({.max_pixels = 100}, "max_pixels");
  field_named({.rescale_factor = 0}, "rescale_factor");
  Glm4vProcessorOptions o;
  o.image_std[1] = 0;
  field_named(o, "image_std");
  EXPECT_EQ(ImageDecoder::Create({.max_pixels = 0}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ImageDecoder::Create({.max_jpeg_scans = 0}).status().code(), absl::StatusCode::kInvalidArgument);
}

// ------------------------------------------------------------------ preprocessor_config.json

TEST(VisionConfig, Glm41vConfigParses) {
  // GLM-4.1V-9B-Thinking's preprocessor_config.json.
  absl::StatusOr<Glm4vProcessorOptions> o = ParsePreprocessorConfig(R"({
    "size": {"shortest_edge": 12544, "longest_edge": 9633792},
    "do_rescale": true, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Glm4vImageProcessor", "processor_class": "Glm4vProcessor"})");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->min_pixels, 12544);
  EXPECT_EQ(o->max_pixels, 9633792);
  EXPECT_EQ(o->backend, ResizeBackend::kTorchvision);
  absl::StatusOr<Glm4vProcessorOptions> empty = ParsePreprocessorConfig("{}");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->max_pixels, 28 * 28 * 15000);
}

TEST(VisionConfig, BadFieldsNamed) {
  const std::pair<const char*, const char*> cases[] = {
      {R"({"size": {"shortest_edge": 12544, "longest_edge": -3}})", "size.longest_edge"},
      {R"({"size": {"longest_edge": 9633792}})", "size"},
      {R"({"size": {"shortest_edge": 12544, "longest_edge": 9.5}})", "size.longest_edge"},
      {R"({"patch_size": "14"})", "patch_size"},
      {R"({"temporal_patch_size": 0})", "temporal_patch_size"},
      {R"({"merge_size": 100})", "merge_size"},
      {R"({"image_mean": [0.5, 0.5]})", "image_mean"},
      {R"({"image_std": [0.5, 0, 0.5]})", "image_std"},
      {R"({"do_rescale": 1})", "do_rescale"},
      {R"({"rescale_factor": -1})", "rescale_factor"},
      {R"({"resample": 2})", "resample"},
      {R"({"do_convert_rgb": false})", "do_convert_rgb"},
      {R"({"image_processor_type": "Qwen2VLImageProcessor"})", "image_processor_type"},
      {R"({"size": {"shortest_edge": 5000000, "longest_edge": 12544}})", "min_pixels"},
      {R"([1, 2])", "object"},
      {R"({"patch_size": 14,)", "JSON"},
  };
  for (const auto& [text, field] : cases) {
    absl::Status s = ParsePreprocessorConfig(text).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_NE(s.message().find(field), std::string::npos) << text << " -> " << s;
  }
  EXPECT_EQ(LoadPreprocessorConfig(kDir + "no-such-file.json").status().code(), absl::StatusCode::kNotFound);
}

// ------------------------------------------------------------------ hostile input

std::string PngChunk(const char* type, const std::string& data) {
  std::string out;
  auto be32 = [&out](uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<char>((v >> s) & 0xff));
  };
  be32(static_cast<uint32_t>(data.size()));
  const std::string body = std::string(type, 4) + data;
  out += body;
  be32(static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(body.data()), body.size())));
  return out;
}

std::string PngHeaderOnly(uint32_t w, uint32_t h) {
  std::string ihdr;
  for (uint32_t v : {w, h}) {
    for (int s = 24; s >= 0; s -= 8) ihdr.push_back(static_cast<char>((v >> s) & 0xff));
  }
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);
  return std::string("\x89PNG\r\n\x1a\n", 8) + PngChunk("IHDR", ihdr);
}

// A decompression bomb: the header claims w x h RGB, the IDAT is a small zlib stream of zeros
// (1 MiB of them in about 1 KiB), as a hostile client would send.
std::string PngBomb(uint32_t w, uint32_t h) {
  std::string zeros(1 << 20, '\0');
  std::vector<Bytef> z(compressBound(zeros.size()));
  uLongf n = z.size();
  EXPECT_EQ(compress2(z.data(), &n, reinterpret_cast<const Bytef*>(zeros.data()), zeros.size(), 9), Z_OK);
  return PngHeaderOnly(w, h) + PngChunk("IDAT", std::string(reinterpret_cast<const char*>(z.data()), n)) +
         PngChunk("IEND", "");
}

// A PNG of `w` x `h` pixels: raw rows (each a filter byte 0 and its samples), bit depth and colour
// type as given, a PLTE chunk when given, and a tRNS chunk.
std::string PngWithTrns(uint32_t w, uint32_t h, int depth, int color_type, const std::string& rows,
                        const std::string& trns, const std::string& plte = "") {
  std::string ihdr;
  for (uint32_t v : {w, h}) {
    for (int s = 24; s >= 0; s -= 8) ihdr.push_back(static_cast<char>((v >> s) & 0xff));
  }
  ihdr += std::string{static_cast<char>(depth), static_cast<char>(color_type), 0, 0, 0};
  std::vector<Bytef> z(compressBound(rows.size()));
  uLongf n = z.size();
  EXPECT_EQ(compress2(z.data(), &n, reinterpret_cast<const Bytef*>(rows.data()), rows.size(), 9), Z_OK);
  return std::string("\x89PNG\r\n\x1a\n", 8) + PngChunk("IHDR", ihdr) + (plte.empty() ? "" : PngChunk("PLTE", plte)) +
         PngChunk("tRNS", trns) + PngChunk("IDAT", std::string(reinterpret_cast<const char*>(z.data()), n)) +
         PngChunk("IEND", "");
}

// A tRNS colour key, as PIL 11 / transformers 5.24 read it (the values below are theirs:
// load_image() for kDrop, convert_to_rgb() on the opened image for kCompositeOnWhite). 8-bit gray
// and RGB keys are painted white either way (PIL keeps the key through convert("RGB") and
// convert_to_rgb composites it); a 16-bit gray image clips at 255 (its key ignored by
// convert("RGB"), white under convert_to_rgb). Here they kept their colour, and 16-bit gray with a
// key came out as its high byte.
TEST(VisionDecode, TrnsColourKeysAsTransformers) {
  auto pixels = [](const std::string& png, AlphaMode mode) {
    absl::StatusOr<ImageDecoder> decoder = ImageDecoder::Create({.alpha = mode});
    EXPECT_TRUE(decoder.ok());
    absl::StatusOr<RgbImage> image = decoder->Decode(png);
    EXPECT_TRUE(image.ok()) << image.status();
    return image.ok() ? std::vector<int>(image->pixels.begin(), image->pixels.end()) : std::vector<int>{};
  };
  // 16-bit gray [[7, 300], [600, 5]], key 7.
  const std::string gray16 =
      PngWithTrns(2, 2, 16, 0, std::string("\0\x00\x07\x01\x2c\0\x02\x58\x00\x05", 10), std::string("\x00\x07", 2));
  EXPECT_EQ(pixels(gray16, AlphaMode::kDrop), (std::vector<int>{7, 7, 7, 255, 255, 255, 255, 255, 255, 5, 5, 5}));
  EXPECT_EQ(pixels(gray16, AlphaMode::kCompositeOnWhite),
            (std::vector<int>{255, 255, 255, 255, 255, 255, 255, 255, 255, 5, 5, 5}));
  // 8-bit gray [[7, 80], [144, 7]], key 7.
  const std::string gray8 = PngWithTrns(2, 2, 8, 0, std::string("\0\x07\x50\0\x90\x07", 6), std::string("\x00\x07", 2));
  for (AlphaMode mode : {AlphaMode::kDrop, AlphaMode::kCompositeOnWhite}) {
    EXPECT_EQ(pixels(gray8, mode), (std::vector<int>{255, 255, 255, 80, 80, 80, 144, 144, 144, 255, 255, 255}));
  }
  // 8-bit RGB [(1, 2, 3), (16, 32, 48)], key (1, 2, 3).
  const std::string rgb =
      PngWithTrns(2, 1, 8, 2, std::string("\0\x01\x02\x03\x10\x20\x30", 7), std::string("\x00\x01\x00\x02\x00\x03", 6));
  for (AlphaMode mode : {AlphaMode::kDrop, AlphaMode::kCompositeOnWhite}) {
    EXPECT_EQ(pixels(rgb, mode), (std::vector<int>{255, 255, 255, 16, 32, 48}));
  }
  // The keys PIL keeps through convert("RGB") in other forms (kDrop, load_image's path; PIL's
  // values). A palette whose tRNS is one transparent entry among opaque ones: that entry's colour,
  // wherever it appears (index 2 has index 0's colour); alphas of any other form are dropped.
  const std::string palette("\x0a\x14\x1e\x28\x32\x3c\x0a\x14\x1e", 9);  // (10,20,30) (40,50,60) (10,20,30)
  const std::string indices("\0\x00\x01\0\x02\x01", 6);                  // [[0, 1], [2, 1]]
  EXPECT_EQ(pixels(PngWithTrns(2, 2, 8, 3, indices, std::string("\x00\xff\xff", 3), palette), AlphaMode::kDrop),
            (std::vector<int>{255, 255, 255, 40, 50, 60, 255, 255, 255, 40, 50, 60}));
  EXPECT_EQ(pixels(PngWithTrns(2, 2, 8, 3, indices, std::string("\x00\x80", 2), palette), AlphaMode::kDrop),
            (std::vector<int>{10, 20, 30, 40, 50, 60, 10, 20, 30, 40, 50, 60}));
  // 1-bit gray [1, 0, 1, 0], key 0 (PIL: 0 or 255); 2-bit gray [0, 1, 2, 3] with its raw key
  // compared with the expanded values (key 0 matches 0, key 1 matches nothing).
  EXPECT_EQ(pixels(PngWithTrns(4, 1, 1, 0, std::string("\0\xa0", 2), std::string("\x00\x00", 2)), AlphaMode::kDrop),
            std::vector<int>(12, 255));
  EXPECT_EQ(pixels(PngWithTrns(4, 1, 2, 0, std::string("\0\x1b", 2), std::string("\x00\x00", 2)), AlphaMode::kDrop),
            (std::vector<int>{255, 255, 255, 85, 85, 85, 170, 170, 170, 255, 255, 255}));
  EXPECT_EQ(pixels(PngWithTrns(4, 1, 2, 0, std::string("\0\x1b", 2), std::string("\x00\x01", 2)), AlphaMode::kDrop),
            (std::vector<int>{0, 0, 0, 85, 85, 85, 170, 170, 170, 255, 255, 255}));
  // 16-bit RGB [(5, 6, 7), (0x1000, 0x2000, 0x3000)], key (16, 32, 48): PIL compares the 16-bit
  // key with the 8-bit high bytes it keeps.
  EXPECT_EQ(pixels(PngWithTrns(2, 1, 16, 2, std::string("\0\x00\x05\x00\x06\x00\x07\x10\x00\x20\x00\x30\x00", 13),
                               std::string("\x00\x10\x00\x20\x00\x30", 6)),
                   AlphaMode::kDrop),
            (std::vector<int>{0, 0, 0, 255, 255, 255}));
}

TEST(VisionHostile, EmptyAndNonImageBytes) {
  absl::Status s = DecodeStatus("");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("empty"), std::string::npos) << s;
  s = DecodeStatus("GIF89a....");
  EXPECT_NE(s.message().find("not a PNG or JPEG"), std::string::npos) << s;
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    std::string bytes(1 + rng() % 4096, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    // Half of them behind a valid signature, so the libraries' own parsers see garbage.
    if (trial % 2 == 0) bytes = std::string("\x89PNG\r\n\x1a\n", 8) + bytes;
    if (trial % 4 == 1) bytes = std::string("\xff\xd8\xff", 3) + bytes;
    EXPECT_EQ(DecodeStatus(bytes).code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(VisionHostile, TruncatedPngAndJpeg) {
  for (const char* name : {"rgb_64x48.png", "interlaced_rgb_52x31.png", "photo_120x80.jpg", "progressive_70x50.jpg"}) {
    const std::string bytes = testing::ReadWholeFile(kDir + "images/" + name);
    for (size_t cut : {size_t{4}, size_t{9}, size_t{30}, bytes.size() / 3, bytes.size() / 2, bytes.size() - 40}) {
      SCOPED_TRACE(std::string(name) + " cut at " + std::to_string(cut));
      absl::Status s = DecodeStatus(bytes.substr(0, cut));
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    }
  }
  absl::Status s = DecodeStatus(testing::ReadWholeFile(kDir + "images/rgb_64x48.png").substr(0, 300));
  EXPECT_NE(s.message().find("PNG"), std::string::npos) << s;
}

TEST(VisionHostile, CorruptedBytesNeverCrash) {
  std::mt19937 rng(11);
  for (const char* name :
       {"rgb_64x48.png", "palette_trns_40x56.png", "photo_120x80.jpg", "cmyk_40x32.jpg", "progressive_70x50.jpg"}) {
    const std::string bytes = testing::ReadWholeFile(kDir + "images/" + name);
    for (int trial = 0; trial < 100; ++trial) {
      std::string b = bytes;
      for (int k = 0; k < 1 + trial % 8; ++k) b[rng() % b.size()] = static_cast<char>(rng());
      absl::StatusOr<ImageDecoder> d = ImageDecoder::Create();
      absl::StatusOr<RgbImage> img = d->Decode(b);  // any answer but a crash; if OK, a whole image
      if (img.ok()) {
        EXPECT_EQ(img->pixels.size(), static_cast<size_t>(img->width) * img->height * 3);
      }
    }
  }
}

TEST(VisionHostile, DecompressionBombRefusedFromHeader) {
  const std::string png = PngBomb(40000, 40000);
  EXPECT_LT(png.size(), 4096u);
  absl::Status s = DecodeStatus(png);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("40000x40000"), std::string::npos) << s;
  EXPECT_NE(s.message().find("limit of 50000000"), std::string::npos) << s;
  // The limit is the option: a 3000x3000 bomb passes the default limit and fails later, at its
  // missing rows; under max_pixels 1,000,000 it is refused from the header.
  const std::string small_bomb = PngBomb(3000, 3000);
  s = DecodeStatus(small_bomb);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message().find("limit"), std::string::npos) << s;
  s = DecodeStatus(small_bomb, {.max_pixels = 1'000'000});
  EXPECT_NE(s.message().find("limit of 1000000"), std::string::npos) << s;

  // A real JPEG whose SOF0 claims 40000x40000.
  std::string jpg = testing::ReadWholeFile(kDir + "images/photo_120x80.jpg");
  size_t sof = jpg.find("\xff\xc0");
  ASSERT_NE(sof, std::string::npos);
  jpg[sof + 5] = static_cast<char>(40000 >> 8);
  jpg[sof + 6] = static_cast<char>(40000 & 0xff);
  jpg[sof + 7] = static_cast<char>(40000 >> 8);
  jpg[sof + 8] = static_cast<char>(40000 & 0xff);
  s = DecodeStatus(jpg);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("40000x40000"), std::string::npos) << s;
}

// The image data goes on past the last row: 32 KiB more of stored zeros, then bytes no inflater
// takes. The decoder stops reading once every row is out (libpng would inflate on to the end of
// the data only to check it: a 2.9 MB file of 100x100 pixels inflating to 2.9 GB held a decode
// slot 3.3 s, now 0.1 s through the server); the stop must leave every row intact, the last
// included, and take the data after it for nothing.
TEST(VisionHostile, DataPastTheLastRowIsNotInflated) {
  constexpr uint32_t kSide = 4;
  std::string rows;
  for (uint32_t y = 0; y < kSide; ++y) {
    rows.push_back('\0');  // filter: none
    for (uint32_t x = 0; x < kSide; ++x) rows += std::string{static_cast<char>(10 * y), static_cast<char>(10 * x), 7};
  }
  z_stream z{};
  ASSERT_EQ(deflateInit(&z, 0), Z_OK);  // level 0: stored blocks, byte-aligned
  std::string idat(1 << 17, '\0');
  z.next_out = reinterpret_cast<Bytef*>(idat.data());
  z.avail_out = static_cast<uInt>(idat.size());
  const std::string zeros(32 << 10, '\0');
  for (const std::string* part : {static_cast<const std::string*>(&rows), &zeros}) {
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(part->data()));
    z.avail_in = static_cast<uInt>(part->size());
    ASSERT_EQ(deflate(&z, Z_SYNC_FLUSH), Z_OK);
  }
  idat.resize(idat.size() - z.avail_out);
  deflateEnd(&z);
  idat += std::string(16, '\xff');  // a block header of the reserved type 3: invalid
  std::string png = PngHeaderOnly(kSide, kSide);
  for (size_t at = 0; at < idat.size(); at += 4096) png += PngChunk("IDAT", idat.substr(at, 4096));
  png += PngChunk("IEND", "");
  const RgbImage img = DecodeOk(png);
  ASSERT_EQ(img.pixels.size(), size_t{kSide} * kSide * 3);
  EXPECT_EQ(img.pixels[(3 * kSide + 2) * 3 + 0], 30);
  EXPECT_EQ(img.pixels[(3 * kSide + 2) * 3 + 1], 20);
  EXPECT_EQ(img.pixels[(3 * kSide + 2) * 3 + 2], 7);
}

TEST(VisionHostile, ZeroSizeHeaders) {
  absl::Status s = DecodeStatus(PngHeaderOnly(0, 10));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  std::string jpg = testing::ReadWholeFile(kDir + "images/photo_120x80.jpg");
  size_t sof = jpg.find("\xff\xc0");
  ASSERT_NE(sof, std::string::npos);
  jpg[sof + 5] = 0;
  jpg[sof + 6] = 0;
  EXPECT_EQ(DecodeStatus(jpg).code(), absl::StatusCode::kInvalidArgument);
}

TEST(VisionHostile, TooManyProgressiveScans) {
  const std::string jpg = testing::ReadWholeFile(kDir + "images/progressive_70x50.jpg");
  absl::Status s = DecodeStatus(jpg, {.max_jpeg_scans = 2});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("progressive scans"), std::string::npos) << s;
  EXPECT_TRUE(DecodeStatus(jpg).ok());
}

// ------------------------------------------------------------------ reduced-scale JPEG decoding, stop

// A photo-like RGB JPEG (smooth gradients, edges and noise; 4:2:0, quality 90) encoded here so
// any size can be made.
std::string PhotoJpeg(int width, int height, bool progressive = false) {
  std::vector<uint8_t> rgb(static_cast<size_t>(width) * height * 3);
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> noise(-12, 12);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      uint8_t* p = &rgb[(static_cast<size_t>(y) * width + x) * 3];
      const bool edge = ((x / 37) + (y / 53)) % 2 == 0;
      const int base[3] = {x * 255 / width, y * 255 / height, edge ? 200 : 40};
      for (int c = 0; c < 3; ++c) p[c] = static_cast<uint8_t>(std::clamp(base[c] + noise(rng), 0, 255));
    }
  }
  jpeg_compress_struct c;
  jpeg_error_mgr err;
  c.err = jpeg_std_error(&err);
  jpeg_create_compress(&c);
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&c, &buf, &size);
  c.image_width = static_cast<JDIMENSION>(width);
  c.image_height = static_cast<JDIMENSION>(height);
  c.input_components = 3;
  c.in_color_space = JCS_RGB;
  jpeg_set_defaults(&c);
  jpeg_set_quality(&c, 90, TRUE);
  if (progressive) jpeg_simple_progression(&c);
  jpeg_start_compress(&c, TRUE);
  while (c.next_scanline < c.image_height) {
    JSAMPROW row = &rgb[static_cast<size_t>(c.next_scanline) * width * 3];
    jpeg_write_scanlines(&c, &row, 1);
  }
  jpeg_finish_compress(&c);
  jpeg_destroy_compress(&c);
  std::string out(reinterpret_cast<char*>(buf), size);
  std::free(buf);
  return out;
}

DecodeHint Hint(int min_width, int min_height) {
  DecodeHint hint;
  hint.min_width = min_width;
  hint.min_height = min_height;
  return hint;
}

TEST(VisionDecode, JpegScalePicksTheSmallestScaleAtLeastTheTarget) {
  EXPECT_EQ(JpegScaleEighths(7000, 7000, Hint(56, 56)), 1);
  // ceil(1000 M / 8) >= 400 needs M >= 3.2; ceil(800 M / 8) >= 300 needs M >= 3: 4/8.
  EXPECT_EQ(JpegScaleEighths(1000, 800, Hint(400, 300)), 4);
  // 3/8: ceil(1000 * 3 / 8) = 375 >= 350, ceil(900 * 3 / 8) = 338 >= 300.
  EXPECT_EQ(JpegScaleEighths(1000, 900, Hint(350, 300)), 3);
  // At most 2x the target in one dimension, or no target: full size (PIL parity).
  EXPECT_EQ(JpegScaleEighths(1000, 800, Hint(500, 100)), 8);
  EXPECT_EQ(JpegScaleEighths(1000, 800, Hint(100, 400)), 8);
  EXPECT_EQ(JpegScaleEighths(1000, 800, {}), 8);
  // Every choice: the output reaches the target, one step smaller would not, and a scaled source
  // was more than 2x the target in both dimensions.
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> side(1, 9000);
  for (int i = 0; i < 20000; ++i) {
    const int w = side(rng), h = side(rng);
    const DecodeHint hint = Hint(1 + side(rng) % w, 1 + side(rng) % h);
    const int m = JpegScaleEighths(w, h, hint);
    ASSERT_GE(m, 1);
    ASSERT_LE(m, 8);
    if (m == 8) continue;
    auto out = [](int s, int k) { return (int64_t{s} * k + 7) / 8; };
    ASSERT_GT(w, 2 * hint.min_width);
    ASSERT_GT(h, 2 * hint.min_height);
    ASSERT_GE(out(w, m), hint.min_width) << w << "x" << h << " m=" << m;
    ASSERT_GE(out(h, m), hint.min_height) << w << "x" << h << " m=" << m;
    ASSERT_TRUE(m == 1 || out(w, m - 1) < hint.min_width || out(h, m - 1) < hint.min_height);
  }
}

TEST(VisionDecode, ScaledJpegDecodeCoversTheTargetAndStaysClose) {
  absl::StatusOr<ImageDecoder> d = ImageDecoder::Create();
  ASSERT_TRUE(d.ok());
  for (const bool progressive : {false, true}) {
    const std::string jpg = PhotoJpeg(1200, 900, progressive);
    absl::StatusOr<ImageHeader> header = d->ReadHeader(jpg);
    ASSERT_TRUE(header.ok()) << header.status();
    EXPECT_EQ(header->format, ImageFormat::kJpeg);
    EXPECT_EQ(header->width, 1200);
    EXPECT_EQ(header->height, 900);
    // smart_resize of 900x1200 under max_pixels 2 x 280 x 224 is 224x280 (28-multiples).
    const int tw = 280, th = 224;
    absl::StatusOr<RgbImage> full = d->Decode(jpg);
    absl::StatusOr<RgbImage> scaled = d->Decode(jpg, Hint(tw, th));
    ASSERT_TRUE(full.ok() && scaled.ok());
    EXPECT_EQ(full->width, 1200);
    // 2/8: 300x225, the smallest libjpeg scale that still covers 280x224.
    EXPECT_EQ(scaled->width, 300);
    EXPECT_EQ(scaled->height, 225);
    ASSERT_EQ(scaled->pixels.size(), size_t{300} * 225 * 3);
    // After the resize both take, the reduced decode differs from the full one by little: the DCT
    // scaling low-passes before the antialiased bicubic does (runtime/vision/README.md, DecodeHint).
    const RgbImage a = ResizeBicubicAntialias(*full, th, tw, ResizeBackend::kTorchvision);
    const RgbImage b = ResizeBicubicAntialias(*scaled, th, tw, ResizeBackend::kTorchvision);
    ASSERT_EQ(a.pixels.size(), b.pixels.size());
    double sum = 0;
    int worst = 0;
    for (size_t i = 0; i < a.pixels.size(); ++i) {
      const int diff = std::abs(int{a.pixels[i]} - int{b.pixels[i]});
      sum += diff;
      worst = std::max(worst, diff);
    }
    const double mean = sum / static_cast<double>(a.pixels.size());
    std::printf("progressive=%d: mean |full - scaled| = %.3f, max %d (uint8 levels)\n", progressive, mean, worst);
    EXPECT_LT(mean, 3.0);
    EXPECT_LT(worst, 64);
  }
}

TEST(VisionDecode, SmallJpegAndPngIgnoreTheHint) {
  // Every fixture image with a hint of half its size: decoded in full, the same bytes as without.
  absl::StatusOr<ImageDecoder> d = ImageDecoder::Create();
  ASSERT_TRUE(d.ok());
  for (const char* name : {"photo_120x80.jpg", "progressive_70x50.jpg", "rgb_64x48.png"}) {
    const std::string bytes = testing::ReadWholeFile(kDir + "images/" + name);
    absl::StatusOr<RgbImage> plain = d->Decode(bytes);
    ASSERT_TRUE(plain.ok());
    absl::StatusOr<RgbImage> hinted = d->Decode(bytes, Hint(plain->width / 2, plain->height / 2));
    ASSERT_TRUE(hinted.ok()) << name;
    EXPECT_EQ(hinted->width, plain->width) << name;
    EXPECT_EQ(hinted->pixels, plain->pixels) << name;
  }
}

TEST(VisionDecode, StopEndsTheDecodeCancelled) {
  absl::StatusOr<ImageDecoder> d = ImageDecoder::Create();
  ASSERT_TRUE(d.ok());
  const std::string jpg = PhotoJpeg(640, 480);
  const std::string progressive = PhotoJpeg(640, 480, true);
  const std::string png = testing::ReadWholeFile(kDir + "images/screen_360x800.png");
  const std::string interlaced = testing::ReadWholeFile(kDir + "images/interlaced_rgb_52x31.png");
  for (const std::string* bytes : {&jpg, &progressive, &png, &interlaced}) {
    int asked = 0;
    DecodeHint hint;
    hint.stop = [&] { return ++asked > 1; };
    absl::StatusOr<RgbImage> stopped = d->Decode(*bytes, hint);
    EXPECT_EQ(stopped.status().code(), absl::StatusCode::kCancelled) << stopped.status();
    EXPECT_NE(stopped.status().message().find("stopped"), std::string::npos);
    hint.stop = [] { return false; };
    absl::StatusOr<RgbImage> whole = d->Decode(*bytes, hint);
    ASSERT_TRUE(whole.ok()) << whole.status();
    absl::StatusOr<RgbImage> plain = d->Decode(*bytes);
    ASSERT_TRUE(plain.ok());
    EXPECT_EQ(whole->pixels, plain->pixels);
  }
}

TEST(VisionHostile, HeaderRefusalsAreDecodes) {
  // ReadHeader refuses what Decode refuses from the header, with the same message.
  absl::StatusOr<ImageDecoder> d = ImageDecoder::Create({.max_pixels = 1000});
  ASSERT_TRUE(d.ok());
  const std::string jpg = PhotoJpeg(64, 48);
  const std::string png = testing::ReadWholeFile(kDir + "images/rgb_64x48.png");
  for (const std::string& bytes : {jpg, png, std::string("GIF89a...."), std::string(), jpg.substr(0, 20)}) {
    absl::StatusOr<ImageHeader> header = d->ReadHeader(bytes);
    absl::StatusOr<RgbImage> image = d->Decode(bytes);
    ASSERT_FALSE(header.ok());
    EXPECT_EQ(header.status(), image.status());
  }
  absl::StatusOr<ImageDecoder> wide = ImageDecoder::Create();
  ASSERT_TRUE(wide.ok());
  absl::StatusOr<ImageHeader> header = wide->ReadHeader(png);
  ASSERT_TRUE(header.ok());
  EXPECT_EQ(header->format, ImageFormat::kPng);
  EXPECT_EQ(header->width, 64);
  EXPECT_EQ(header->height, 48);
}

}  // namespace
}  // namespace glmserve::vision
