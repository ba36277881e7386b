// GLM-4.1V / Glm4v image preprocessing, equal to transformers' Glm4vImageProcessor (5.24):
// smart_resize, antialiased bicubic resize, rescale + normalize, patchify into pixel_values and
// image_grid_thw. LibTorch-free; a Glm4vImageProcessor is immutable and callable from any thread.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/generation.h"
#include "runtime/vision/image_decode.h"

namespace glmserve::vision {

// Which transformers backend to match; they differ only in resize rounding (fixed-point weight
// precision) and float rounding of normalize.
enum class ResizeBackend {
  // Glm4vImageProcessor (torchvision): the one transformers picks when torchvision is installed,
  // as in vLLM / SGLang deployments. Bit-exact here.
  kTorchvision,
  // Glm4vImageProcessorPil (PIL's Image.resize BICUBIC, numpy float normalize). Bit-exact here.
  kPil,
};

// Field names follow preprocessor_config.json; defaults are transformers' class defaults.
struct Glm4vProcessorOptions {
  // size.shortest_edge: smallest temporal_patch_size * height * width after resize; smaller images
  // are scaled up to reach it.
  int64_t min_pixels = 112 * 112;
  // size.longest_edge: largest temporal_patch_size * height * width after resize (note the
  // temporal factor: 5,000,000 lets a 1080x2400 screenshot keep 2352x1036). Larger images are
  // scaled down to fit, never cropped.
  int64_t max_pixels = 28 * 28 * 15000;
  // Side of a square patch in pixels.
  int patch_size = 14;
  // Frames per patch; a still image is repeated this many times inside each patch row.
  int temporal_patch_size = 2;
  // Patches merged per side into one image token (tokens = patches / merge_size^2).
  int merge_size = 2;
  // Resize at all. When false, both sides must already be multiples of patch_size * merge_size.
  bool do_resize = true;
  // Multiply by rescale_factor (1/255 maps uint8 to [0, 1]).
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  // Subtract image_mean and divide by image_std per channel (in rescaled units).
  bool do_normalize = true;
  std::array<double, 3> image_mean = {0.48145466, 0.4578275, 0.40821073};  // OPENAI_CLIP_MEAN
  std::array<double, 3> image_std = {0.26862954, 0.26130258, 0.27577711};  // OPENAI_CLIP_STD
  ResizeBackend backend = ResizeBackend::kTorchvision;
  // Threads one Process() call uses for the resize and the patches (the caller's plus threads - 1
  // started for the call; rows are independent, so the output is the same for any count). A
  // 1080x2400 screenshot took 190 ms on one core. Not a preprocessor_config.json field (serve uses
  // 4 to 8: server/request/media.cc). Must be >= 1.
  int threads = 4;
};

// Reads a checkpoint's preprocessor_config.json text. Absent fields keep the defaults above;
// present ones are type- and range-checked, and an error names the field (e.g. "size.longest_edge
// must be an integer > 0, got -3"). Behaviour we do not implement is refused by name: resample
// other than 3 (bicubic), do_convert_rgb false, an image_processor_type other than Glm4v's.
// Unknown keys are ignored, as transformers ignores them (top-level "max_pixels" included: the
// Glm4v processor reads only size.longest_edge).
absl::StatusOr<Glm4vProcessorOptions> ParsePreprocessorConfig(absl::string_view json_text);
// The same from a file; NOT_FOUND when it does not exist.
absl::StatusOr<Glm4vProcessorOptions> LoadPreprocessorConfig(const std::string& path);
// A checkpoint's preprocessing: `model_dir`/preprocessor_config.json, or, where the directory has
// none (a config-only directory for --random-weights), the processor's defaults with the vision
// tower's patch geometry. `source` (optional) says which was used. Other errors are
// LoadPreprocessorConfig's (they name the file).
absl::StatusOr<Glm4vProcessorOptions> LoadCheckpointPreprocessing(const std::string& model_dir, int patch_size,
                                                                  int temporal_patch_size, int merge_size,
                                                                  std::string* source = nullptr);

// transformers' smart_resize for a still image (num_frames = temporal_factor =
// temporal_patch_size, factor = patch_size * merge_size): the resized {height, width}.
// INVALID_ARGUMENT for a zero or negative side and, as transformers, for an aspect ratio above 200
// (after small images are scaled up to factor): "absolute aspect ratio must be smaller than 200".
struct ResizedSize {
  int height = 0;
  int width = 0;
};
absl::StatusOr<ResizedSize> SmartResize(int64_t height, int64_t width, const Glm4vProcessorOptions& options);

// Patch grid of one image: pixel_values has grid_t * grid_h * grid_w rows.
struct ImageGrid {
  int grid_t = 1;
  int grid_h = 0;
  int grid_w = 0;
  int resized_height = 0;
  int resized_width = 0;
  int64_t num_patches() const { return static_cast<int64_t>(grid_t) * grid_h * grid_w; }
};

struct ProcessedImage {
  ImageGrid grid;
  // Number of image tokens the text model sees: num_patches / merge_size^2.
  int64_t num_image_tokens = 0;
  // Row length: channels(3) * temporal_patch_size * patch_size^2.
  int64_t patch_dim = 0;
  // Row-major [num_patches, patch_dim] in transformers' order: rows by (block row, block column,
  // row in block, column in block) over merge_size x merge_size blocks of patches; inside a row
  // (channel, frame, y, x). The resized image's uint8 values; value_table[channel * 256 + code]
  // is transformers' float for each (the device looks them up: 4x fewer bytes to move).
  std::vector<uint8_t> pixel_codes;
  std::vector<float> value_table;  // 3 * 256
  // transformers' pixel_values, expanded.
  std::vector<float> PixelValues() const { return ExpandPixelCodes(pixel_codes, value_table, patch_dim); }
};

// Per-call settings (e.g. a request's max_pixels).
struct ProcessOverrides {
  // Replaces Glm4vProcessorOptions::max_pixels when > 0. Must be at least
  // temporal_patch_size * (patch_size * merge_size)^2, the smallest image there is.
  int64_t max_pixels = 0;
};

class Glm4vImageProcessor {
 public:
  // INVALID_ARGUMENT naming the field when an option is out of range.
  static absl::StatusOr<Glm4vImageProcessor> Create(const Glm4vProcessorOptions& options = {});

  // Grid and token count for an image of this size, without touching pixels (for admission and
  // usage accounting before decoding finishes).
  absl::StatusOr<ImageGrid> Grid(int64_t height, int64_t width, const ProcessOverrides& overrides = {}) const;
  absl::StatusOr<int64_t> NumImageTokens(int64_t height, int64_t width, const ProcessOverrides& overrides = {}) const;
  // The image tokens a grid makes: its patches / merge_size^2.
  int64_t ImageTokens(const ImageGrid& grid) const {
    return grid.num_patches() / (static_cast<int64_t>(options_.merge_size) * options_.merge_size);
  }

  absl::StatusOr<ProcessedImage> Process(const RgbImage& image, const ProcessOverrides& overrides = {}) const;

  const Glm4vProcessorOptions& options() const { return options_; }

 private:
  explicit Glm4vImageProcessor(const Glm4vProcessorOptions& options);
  absl::StatusOr<Glm4vProcessorOptions> Effective(const ProcessOverrides& overrides) const;

  Glm4vProcessorOptions options_;
  // value_[c][v]: the normalized float of uint8 value v in channel c, computed once with the
  // backend's own float steps, so every pixel is a table lookup.
  std::array<std::array<float, 256>, 3> value_{};
};

// Antialiased bicubic resize of interleaved RGB (Keys a = -0.5, support scaled by the downscale
// factor, horizontal pass then vertical, each rounded to uint8), with the fixed-point weights of
// the backend. Exposed for tests.
RgbImage ResizeBicubicAntialias(const RgbImage& image, int height, int width, ResizeBackend backend, int threads = 1);

}  // namespace glmserve::vision
