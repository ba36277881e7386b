// Images in requests (GLM-4.1V / glm4v): where an image's bytes come from (a data: URL, a file://
// URL under --allowed-local-media-path, gRPC bytes), the per-request limits (count, max_pixels),
// decoding and preprocessing (runtime/vision), and the prompt's image placeholders expanded into
// the engine's multimodal prompt. Runs on the front end's thread inside ValidateRequest, never on
// the engine thread; every refusal names the image's field as the client spelled it
// (`messages[1].content[0].image_url.url`, `messages[1].parts[0].image.data`). No gRPC, no HTTP,
// no LibTorch.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
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
  // bytes) in arrival order (DecodeSlots), until their request's deadline or their client leaves.
  // A decoded image can take 150 MB (50 M pixels of RGB) and every HTTP connection has a thread, so
  // without this bound 512 connections could hold 75 GB. 0 = the machine's cores.
  int32_t max_concurrent_decodes = 0;
  // Source pixels (width x height as sent, before any resize) summed over one request's images
  // (--max-request-image-pixels): the image that would pass it is refused INVALID_ARGUMENT naming
  // it, from the headers, before any image is decoded. Decoding costs by the source's pixels
  // (~30 ns each), not by the resized size: ten 49 M-pixel PNGs of 381 KB fit in a 4 MB body and
  // cost 15 s of CPU. 0 = limit_images_per_prompt images of the largest size the processor keeps
  // (max_pixels / temporal_patch_size: 58.8 M for GLM-4.1V's 10 x 5.88 M), and at least one image
  // of the source limit below.
  int64_t max_request_image_pixels = 0;
  // One image's source may have at most this many times the pixels of the largest image the server
  // resizes to (max_pixels / temporal_patch_size); larger ones are refused naming the image, from the
  // header. Matters where --max-pixels is set low: GLM-4.1V's own 5.88 M allows 94 M, above the
  // decoder's absolute 50 M (vision::DecodeOptions::max_pixels), which always holds. 0 = only that.
  int32_t max_source_pixels_ratio = 16;
  // http(s) image URLs are fetched (--allow-media-fetch) within `fetch` (timeout, size, hosts);
  // off = refused naming the field. A server that fetches what clients name can be pointed at
  // hosts only it can reach: keep it off or list the hosts.
  bool allow_fetch = false;
  MediaFetchLimits fetch;
};

// Where a request comes from, as image preparation needs to know it (RequestSessions::Validate
// fills it for each request; MediaOptions are the server's).
struct RequestOrigin {
  // Who sent it (its API key's name, else its peer address: as --max-requests-per-client counts),
  // for the decode slots' share per client (DecodeSlots).
  std::string client;
  // Answers true once the request's client has gone (gRPC: the call was cancelled; HTTP: the
  // connection closed). PrepareImages asks it before each image, while the image waits for a
  // decode slot (every 100 ms) and while it is decoded, and then refuses CANCELLED. Must be cheap
  // (a flag, or one non-blocking recv) and callable from the request's thread. Empty = never.
  std::function<bool()> abandoned;
};

// Largest image file a file:// URL may name (the body limit bounds inline images).
inline constexpr int64_t kMaxImageFileBytes = int64_t{64} << 20;

// The server's image decode slots, handed out first come, first served (a ticket queue): with a
// plain condition variable, whichever waiter the scheduler woke first got a freed slot, and one
// client's burst of costly images could overtake an earlier request indefinitely. A waiter whose
// deadline passes or whose client leaves gives up its place, and those behind it move up. A client
// holds at most half the slots (rounded up) while another client waits: one sending many costly
// images from several connections queued every other client's screenshot behind them (~2 s a
// step with six 49 M-pixel PNGs in flight); alone, it may use them all. Any thread.
class DecodeSlots {
 public:
  // `slots` >= 1. `poll`: how often a waiter asks its `abandoned` (a closed connection wakes
  // nobody).
  explicit DecodeSlots(int32_t slots, std::chrono::milliseconds poll = std::chrono::milliseconds(100));
  DecodeSlots(const DecodeSlots&) = delete;
  DecodeSlots& operator=(const DecodeSlots&) = delete;

  // Waits behind every earlier caller still waiting, then takes a slot: OK, and the caller holds it
  // until Release(). DEADLINE_EXCEEDED once `deadline` has passed (also when it had already passed
  // and a slot was free), CANCELLED once `abandoned` (empty = never) answers true; then nothing is
  // held.
  // `client`: whose request it is (the per-client share; "" is one client like any other).
  absl::Status Acquire(std::chrono::steady_clock::time_point deadline, const std::function<bool()>& abandoned,
                       const std::string& client = "");
  // Ends a slot Acquire gave `client`.
  void Release(const std::string& client = "");

  int32_t slots() const { return slots_; }
  // Callers waiting now (tests; what a metric would show).
  int32_t waiting() const;

 private:
  const int32_t slots_;
  const std::chrono::milliseconds poll_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  struct Waiter {
    uint64_t ticket;
    std::string client;
  };
  // Under mu_: the ticket the next free slot goes to (the first waiter whose client holds less than
  // its share, else the first), 0 when nobody waits.
  uint64_t NextTicket() const;

  const int32_t share_;                            // slots one client holds while others wait
  int32_t in_use_ = 0;                             // guarded by mu_
  uint64_t next_ticket_ = 1;                       // guarded by mu_
  std::deque<Waiter> queue_;                       // guarded by mu_; waiting callers, in arrival order
  std::unordered_map<std::string, int32_t> held_;  // guarded by mu_; slots in use by client
};

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
  // The most source pixels one image may have (MediaOptions::max_source_pixels_ratio and the
  // decoder's absolute limit), and one request's images together (max_request_image_pixels).
  int64_t max_source_pixels() const { return max_source_pixels_; }
  int64_t max_request_image_pixels() const { return max_request_image_pixels_; }
  // The smallest max_pixels accepted: temporal_patch_size * (patch_size * merge_size)^2 (one
  // image token).
  int64_t min_max_pixels() const;
  const vision::ImageTokenIds& token_ids() const { return ids_; }
  int32_t spatial_merge_size() const { return spatial_merge_size_; }
  const vision::ImageDecoder& decoder() const { return decoder_; }
  const vision::Glm4vImageProcessor& processor() const { return processor_; }

 private:
  ImageSupport(vision::ImageDecoder decoder, vision::Glm4vImageProcessor processor, int32_t decode_slots)
      : decoder_(std::move(decoder)),
        processor_(std::move(processor)),
        decode_slots_(std::make_unique<DecodeSlots>(decode_slots)) {}
  friend std::optional<Refusal> PrepareImages(const GenerateRequest&, const MediaOptions&, const RequestOrigin&,
                                              const ImageSupport*, Dialect, std::vector<ImageInput>*, int32_t);

  vision::ImageDecoder decoder_;
  vision::Glm4vImageProcessor processor_;
  // One of max_concurrent_decodes slots is held while an image is decoded and processed.
  std::unique_ptr<DecodeSlots> decode_slots_;
  vision::ImageTokenIds ids_;
  int32_t spatial_merge_size_ = 2;
  int64_t max_pixels_ = 0;
  int64_t max_source_pixels_ = 0;
  int64_t max_request_image_pixels_ = 0;
};

// The bytes of one image: gRPC's bytes as they are (a mime_type other than image/png or
// image/jpeg refused), a base64 data: URL of image/png or image/jpeg, or a file:// URL whose
// canonical path is under media.allowed_local_media_path (read at most kMaxImageFileBytes).
// http(s) URLs are refused (the server does not fetch). Refusals name image.field.
std::optional<Refusal> ImageBytes(const ImageData& image, const MediaOptions& media, std::string* bytes);

// Every image of `request`, resolved, decoded and preprocessed in prompt order, one at a time (a
// decoded image is dropped once processed): the count against media.limit_images_per_prompt, the
// request's max_pixels against the server's, the roles that may carry images (user: the glm4v
// chat template renders image parts only there); then every image's bytes and header (its size
// against the source limit and the request's against max_request_image_pixels, its resized size),
// and the image tokens they make against `max_prompt_tokens` (0 = none: the prompt's bound, text
// aside), so a request over a limit costs no decode (the encoded bytes are held until each is decoded:
// at most the body, or the file:// / fetched files); then each image under a decode slot, a JPEG
// far larger than its resized size at a reduced DCT scale (vision::DecodeHint). Stops as soon as
// request.deadline passes (DEADLINE_EXCEEDED) or origin.abandoned answers true (CANCELLED):
// before each image, while it waits for a slot, while it is decoded. A model without images
// (support null) refuses any image. Nothing to do without images.
std::optional<Refusal> PrepareImages(const GenerateRequest& request, const MediaOptions& media,
                                     const RequestOrigin& origin, const ImageSupport* support, Dialect dialect,
                                     std::vector<ImageInput>* out, int32_t max_prompt_tokens = 0);

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
