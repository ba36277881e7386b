// Images in requests (GLM-4.1V / glm4v): where an image's bytes come from (a data: URL, a file://
// URL under --allowed-local-media-path, gRPC bytes), the per-request limits (count, max_pixels),
// decoding and preprocessing (runtime/vision), and the prompt's image placeholders expanded into
// the engine's multimodal prompt. Runs on the front end's thread inside ValidateRequest, never on
// the engine thread; every refusal names the image's field as the client spelled it
// (`messages[1].content[0].image_url.url`, `messages[1].parts[0].image.data`). No gRPC, no HTTP,
// no LibTorch.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/checkpoint/model_config.h"
#include "runtime/generation.h"
#include "runtime/vision/glm4v_processor.h"
#include "runtime/vision/image_decode.h"
#include "runtime/vision/multimodal_prompt.h"
#include "server/request/media_fetch.h"
#include "server/request/request.h"

namespace glmserve {

// Image limits of `serve` (flags), shared by both front ends.
struct MediaOptions {
  // Images in one request, all messages together (--limit-images-per-prompt). One more is refused
  // naming the first image over the limit. 0 = images refused. 10 is vLLM's recommendation for
  // GLM-4.1V; an Open-AutoGLM step sends one.
  int32_t limit_images_per_prompt = 10;
  // The server's image size limit (--max-pixels): replaces the checkpoint preprocessor's
  // size.longest_edge, i.e. temporal_patch_size x height x width after resizing (2 x H x W for
  // GLM-4.1V). Larger images are scaled down to fit, never cropped. 0 = size.longest_edge.
  int64_t max_pixels = 0;
  // file:// image URLs are read only from under this directory (--allowed-local-media-path),
  // canonical (symlinks and '..' resolved by ParseServeFlags); "" = file:// URLs refused.
  std::string allowed_local_media_path;
  // Images decoded and preprocessed at once, server-wide; more wait (holding only their encoded
  // bytes). A decoded image can take 150 MB (50 M pixels of RGB) and every HTTP connection has a
  // thread, so without this bound 512 connections could hold 75 GB. 0 = the machine's cores.
  int32_t max_concurrent_decodes = 0;
  // http(s) image URLs are fetched (--allow-media-fetch) within `fetch` (timeout, size, hosts);
  // off = refused naming the field. A server that fetches what clients name can be pointed at
  // hosts only it can reach: keep it off or list the hosts.
  bool allow_fetch = false;
  MediaFetchLimits fetch;
};

// Largest image file a file:// URL may name (the body limit bounds inline images).
inline constexpr int64_t kMaxImageFileBytes = int64_t{64} << 20;

// What a vision model's requests need: the decoder, the processor with the checkpoint's
// preprocessor_config.json, the image token ids and the merge size. Immutable; any thread.
class ImageSupport {
 public:
  // `processor`: the checkpoint's preprocessing; `media.max_pixels` > 0 replaces its max_pixels
  // (INVALID_ARGUMENT naming --max-pixels when below the smallest image there is).
  static absl::StatusOr<std::shared_ptr<const ImageSupport>> Create(const VisionConfig& vision,
                                                                    const vision::Glm4vProcessorOptions& processor,
                                                                    const MediaOptions& media);
  // Create with `model_dir`/preprocessor_config.json (absent: transformers' class defaults, and
  // *note says so; a bad file: its error naming the field).
  static absl::StatusOr<std::shared_ptr<const ImageSupport>> ForModel(const std::string& model_dir,
                                                                      const VisionConfig& vision,
                                                                      const MediaOptions& media, std::string* note);

  // The server's limit on temporal_patch_size x height x width after resizing.
  int64_t max_pixels() const { return max_pixels_; }
  // The smallest max_pixels accepted: temporal_patch_size * (patch_size * merge_size)^2 (one
  // image token).
  int64_t min_max_pixels() const;
  const vision::ImageTokenIds& token_ids() const { return ids_; }
  int32_t spatial_merge_size() const { return spatial_merge_size_; }
  const vision::ImageDecoder& decoder() const { return decoder_; }
  const vision::Glm4vImageProcessor& processor() const { return processor_; }

 private:
  ImageSupport(vision::ImageDecoder decoder, vision::Glm4vImageProcessor processor)
      : decoder_(std::move(decoder)), processor_(std::move(processor)) {}
  friend std::optional<Refusal> PrepareImages(const GenerateRequest&, const MediaOptions&, const ImageSupport*, Dialect,
                                              std::vector<ImageInput>*);
  // One of max_concurrent_decodes slots while an image is decoded and processed.
  void AcquireDecode() const;
  void ReleaseDecode() const;

  vision::ImageDecoder decoder_;
  vision::Glm4vImageProcessor processor_;
  int32_t max_decodes_ = 1;
  mutable std::mutex decode_mu_;
  mutable std::condition_variable decode_cv_;
  mutable int32_t decoding_ = 0;  // guarded by decode_mu_
  vision::ImageTokenIds ids_;
  int32_t spatial_merge_size_ = 2;
  int64_t max_pixels_ = 0;
};

// The bytes of one image: gRPC's bytes as they are (a mime_type other than image/png or
// image/jpeg refused), a base64 data: URL of image/png or image/jpeg, or a file:// URL whose
// canonical path is under media.allowed_local_media_path (read at most kMaxImageFileBytes).
// http(s) URLs are refused (the server does not fetch). Refusals name image.field.
std::optional<Refusal> ImageBytes(const ImageData& image, const MediaOptions& media, std::string* bytes);

// Every image of `request`, resolved, decoded and preprocessed in prompt order, one at a time (a
// decoded image is dropped once processed): the count against media.limit_images_per_prompt, the
// request's max_pixels against the server's, the roles that may carry images (user: the glm4v
// chat template renders image parts only there), then each image. A model without images
// (support null) refuses any image. Nothing to do without images.
std::optional<Refusal> PrepareImages(const GenerateRequest& request, const MediaOptions& media,
                                     const ImageSupport* support, Dialect dialect, std::vector<ImageInput>* out);

// The prompt with each image's placeholder (image_start, image_token, image_end) expanded to its
// image tokens, and the multimodal prompt (3-D positions) the engine runs; `images` is moved in.
// For a vision model every prompt goes through here: placeholders without images (e.g. spelled
// in the text) are refused. A refusal names `ids_field` (input_ids / messages / prompt).
std::optional<Refusal> ExpandImagePrompt(const ImageSupport& support, std::vector<ImageInput> images,
                                         const std::string& ids_field, std::vector<int32_t>* ids,
                                         std::shared_ptr<const MultimodalPrompt>* multimodal);

// What a response's usage and the request log report per image: the size it was resized to and
// its tokens.
struct ImageUsage {
  int32_t height = 0;
  int32_t width = 0;
  int32_t tokens = 0;
  double decode_ms = 0;  // ImageInput's host times
  double preprocess_ms = 0;
};
std::vector<ImageUsage> ImageUsages(const MultimodalPrompt* multimodal);
// "HxW,HxW" for the request log.
std::string ResizedSizes(const std::vector<ImageUsage>& images);

}  // namespace glmserve
