// PNG / JPEG bytes -> 8-bit RGB, the way transformers' image processors see an image opened with
// PIL (Image.open + transformers' convert_to_rgb). LibTorch-free; callable from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace glmserve::vision {

// Interleaved RGB, row-major: pixels[(y * width + x) * 3 + c].
struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;
};

enum class ImageFormat { kPng, kJpeg };

// What transparency becomes (PNG alpha, tRNS, palette alpha).
enum class AlphaMode {
  // transformers' convert_to_rgb on a PIL image, which every Glm4v processor call does: alpha
  // composited onto opaque white with PIL's alpha_composite rounding.
  kCompositeOnWhite,
  // PIL's plain Image.convert("RGB") (what transformers' load_image does): alpha dropped.
  kDrop,
};

struct DecodeOptions {
  // Largest width * height accepted. Checked from the header, before any pixel buffer exists, so
  // a 40000x40000 "decompression bomb" costs nothing; above it Decode() answers INVALID_ARGUMENT
  // naming both numbers. Must be > 0.
  int64_t max_pixels = 50'000'000;
  // Largest number of progressive JPEG scans. A crafted progressive JPEG can hold thousands of tiny
  // scans, each a full pass over the coefficients: CPU time without a pixel-count bound. Must be > 0.
  int max_jpeg_scans = 500;
  AlphaMode alpha = AlphaMode::kCompositeOnWhite;
};

// What an image's header says, read without decoding a pixel.
struct ImageHeader {
  ImageFormat format = ImageFormat::kPng;
  int width = 0;
  int height = 0;
};

// Per call: what the caller will do with the image, so that Decode can skip work whose result
// would be thrown away, and when to give up.
struct DecodeHint {
  // The size the caller resizes the decoded image to (0 = the full size is wanted). A JPEG more than
  // twice as large in both dimensions is decoded with libjpeg's DCT scaling, at the smallest M/8
  // whose output is still at least this size (JpegScaleEighths): the resize that follows still sees
  // every pixel it needs, and a 7000x7000 JPEG headed for 56x56 costs a 1/8 decode. Not the
  // same numbers as a full decode plus that resize (the DCT already low-passed the image; see
  // runtime/vision/README.md); at most 2x larger, never scaled, so PIL parity holds there. PNG
  // is always decoded at full size.
  int min_width = 0;
  int min_height = 0;
  // Asked every few rows (PNG) or libjpeg progress steps (JPEG); once it answers true, Decode
  // stops and returns CANCELLED ("stopped"), so a request that was abandoned or ran out of time
  // does not hold a decode slot for a whole 50 M-pixel image. Empty = never. Called on the
  // decoding thread.
  std::function<bool()> stop;
};

// The numerator M of the scale M/8 that Decode uses for a width x height JPEG under `hint`: 8 (full
// size) unless the image is more than 2x the hint's size in both dimensions, else the smallest M
// whose output, ceil(side * M / 8), is at least the hint's size in both.
int JpegScaleEighths(int width, int height, const DecodeHint& hint);

// Decodes PNG or JPEG bytes (format sniffed from the signature). Never crashes, aborts or lets a
// longjmp escape on hostile input: every failure is INVALID_ARGUMENT naming what is wrong
// (empty, not PNG/JPEG, truncated, corrupt, too many pixels, unsupported). Conversions match
// PIL + transformers: gray/palette/16-bit/alpha PNGs and gray/CMYK JPEGs to RGB (16-bit samples
// keep their high byte, 16-bit gray saturates at 255 as PIL's I;16 -> RGB does, CMYK is read as
// Adobe-inverted as PIL assumes). EXIF orientation is NOT applied, as PIL's Image.open does not.
class ImageDecoder {
 public:
  // INVALID_ARGUMENT naming the field when an option is out of range.
  static absl::StatusOr<ImageDecoder> Create(const DecodeOptions& options = {});

  absl::StatusOr<RgbImage> Decode(absl::string_view bytes, const DecodeHint& hint = {}) const;
  // The format and size from the header alone (microseconds, nothing allocated for pixels), with
  // Decode's refusals of what a header shows: not PNG/JPEG, a bad header, zero size, more than
  // max_pixels.
  absl::StatusOr<ImageHeader> ReadHeader(absl::string_view bytes) const;
  const DecodeOptions& options() const { return options_; }

 private:
  explicit ImageDecoder(const DecodeOptions& options) : options_(options) {}
  DecodeOptions options_;
};

// PNG or JPEG from the first bytes; INVALID_ARGUMENT otherwise (empty input included).
absl::StatusOr<ImageFormat> SniffImageFormat(absl::string_view bytes);

}  // namespace glmserve::vision
