#include "server/request/media.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <limits>
#include <thread>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "runtime/shown_value.h"

namespace glmserve {
namespace {

bool SupportedMime(std::string type) {
  absl::AsciiStrToLower(&type);
  // image/jpg is not registered but common in clients; it means JPEG.
  return type == "image/png" || type == "image/jpeg" || type == "image/jpg";
}

// data:[<media type>][;parameters][;base64],<payload> (RFC 2397); base64 only.
std::optional<Refusal> DataUrlBytes(const ImageData& image, std::string* bytes) {
  const std::string& url = image.url;
  const size_t comma = url.find(',');
  if (comma == std::string::npos) {
    return InvalidField(image.field,
                        absl::StrCat("'", ShownValue(url), "' is not a data: URL (no ',' before the data)"));
  }
  std::vector<std::string> header = absl::StrSplit(url.substr(5, comma - 5), ';');
  const std::string type = header.empty() ? "" : header[0];
  bool base64 = false;
  for (size_t i = 1; i < header.size(); ++i) base64 = base64 || absl::EqualsIgnoreCase(header[i], "base64");
  if (!SupportedMime(type)) {
    return InvalidField(image.field,
                        absl::StrCat("media type '", type.substr(0, 64),
                                     "' is not supported; send image/png or image/jpeg "
                                     "(data:image/png;base64,...)"),
                        RefusalKind::kUnsupportedContent);
  }
  if (!base64) {
    return InvalidField(image.field, "only base64 data: URLs are supported (data:image/png;base64,...)");
  }
  if (!absl::Base64Unescape(absl::string_view(url).substr(comma + 1), bytes)) {
    const absl::string_view payload = absl::string_view(url).substr(comma + 1);
    const bool url_safe = payload.find_first_of("-_") != absl::string_view::npos;
    return InvalidField(image.field, absl::StrCat("the data: URL's payload is not valid base64",
                                                  url_safe ? " ('-' / '_': the URL-safe alphabet; send standard "
                                                             "base64, '+' and '/')"
                                                           : ""));
  }
  return std::nullopt;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// A file:// URL's path, percent-decoded; else why it is none (a host other than localhost, no
// absolute path, a query or fragment, a bad or NUL escape), for the refusal.
absl::StatusOr<std::string> FileUrlPath(const std::string& url) {
  std::string rest = url.substr(7);  // after "file://"
  if (absl::StartsWithIgnoreCase(rest, "localhost/")) rest = rest.substr(9);
  if (rest.empty() || rest[0] != '/') {
    return absl::InvalidArgumentError("is not a file:// URL with an absolute path (file:///DIR/FILE)");
  }
  if (rest.find_first_of("?#") != std::string::npos) {
    return absl::InvalidArgumentError(
        "holds a query or fragment ('?' or '#'); a file name with those characters is spelled %3F / %23");
  }
  std::string path;
  for (size_t i = 0; i < rest.size(); ++i) {
    if (rest[i] != '%') {
      path += rest[i];
      continue;
    }
    if (i + 2 >= rest.size() || HexValue(rest[i + 1]) < 0 || HexValue(rest[i + 2]) < 0) {
      return absl::InvalidArgumentError(absl::StrCat("has a '%' at byte ", 7 + i,
                                                     " not followed by two hex digits (a '%' in a file name is "
                                                     "spelled %25)"));
    }
    const char c = static_cast<char>(HexValue(rest[i + 1]) * 16 + HexValue(rest[i + 2]));
    if (c == '\0') return absl::InvalidArgumentError("holds %00 (a NUL byte names no file)");
    path += c;
    i += 2;
  }
  return path;
}

bool Under(const std::string& path, const std::string& dir) {
  if (dir == "/") return true;
  return path == dir || (path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 && path[dir.size()] == '/');
}

// file:// under the allowed directory. The path is canonicalized (symlinks, '..') before the
// check, and the file actually opened is checked again through /proc/self/fd, so a symlink
// swapped in between cannot lead outside. One message for missing, outside and unreadable files,
// so a client learns nothing about paths outside the directory.
std::optional<Refusal> FileUrlBytes(const ImageData& image, const MediaOptions& media, std::string* bytes) {
  if (media.allowed_local_media_path.empty()) {
    return InvalidField(image.field,
                        "file:// image URLs are not enabled on this server (it was started without "
                        "--allowed-local-media-path); send the image inline as a data:image/png;base64,... URL");
  }
  const absl::StatusOr<std::string> path = FileUrlPath(image.url);
  if (!path.ok()) {
    return InvalidField(image.field, absl::StrCat("'", ShownValue(image.url), "' ", path.status().message()));
  }
  const Refusal refused = InvalidField(
      image.field, absl::StrCat("'", ShownValue(image.url),
                                "' is not a readable image file under the server's allowed local media directory"));
  char resolved[PATH_MAX];
  if (realpath(path->c_str(), resolved) == nullptr || !Under(resolved, media.allowed_local_media_path)) return refused;
  const int fd = open(resolved, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) return refused;
  struct FdCloser {
    int fd;
    ~FdCloser() { close(fd); }
  } closer{fd};
  char opened[PATH_MAX];
  const std::string proc = absl::StrCat("/proc/self/fd/", fd);
  const ssize_t n = readlink(proc.c_str(), opened, sizeof opened - 1);
  if (n <= 0) return refused;
  opened[n] = '\0';
  struct stat st;
  if (!Under(opened, media.allowed_local_media_path) || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return refused;
  if (st.st_size > kMaxImageFileBytes) {
    return InvalidField(image.field, absl::StrCat("the file has ", st.st_size, " bytes; at most ", kMaxImageFileBytes,
                                                  " bytes allowed"));
  }
  bytes->resize(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < bytes->size()) {
    const ssize_t got = read(fd, bytes->data() + done, bytes->size() - done);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return refused;
    done += static_cast<size_t>(got);
  }
  return std::nullopt;
}

// An image preparation that stopped early: DEADLINE_EXCEEDED (the request's deadline passed) or
// CANCELLED (the client went away), saying when. The field is named in the message only: an HTTP
// error's param stays the deadline's ("timeout"); the image was not at fault.
Refusal Stopped(const ImageData& image, absl::StatusCode code, const std::string& when) {
  if (code == absl::StatusCode::kDeadlineExceeded) {
    return MakeRefusal(code, RefusalKind::kDeadline,
                       absl::StrCat(image.field, ": the request's deadline passed ", when, "; retry with a later one"));
  }
  return MakeRefusal(absl::StatusCode::kCancelled, RefusalKind::kCancelled,
                     absl::StrCat(image.field, ": the client went away (cancelled or closed the connection) ", when));
}

std::optional<Refusal> StoppedEarly(const ImageData& image, std::chrono::steady_clock::time_point deadline,
                                    const std::function<bool()>& abandoned, const char* when) {
  if (std::chrono::steady_clock::now() >= deadline) return Stopped(image, absl::StatusCode::kDeadlineExceeded, when);
  if (abandoned && abandoned()) return Stopped(image, absl::StatusCode::kCancelled, when);
  return std::nullopt;
}

}  // namespace

absl::StatusOr<std::shared_ptr<const ImageSupport>> ImageSupport::Create(const VisionConfig& vision,
                                                                         const vision::Glm4vProcessorOptions& processor,
                                                                         const MediaOptions& media) {
  // As transformers loads an image given by URL, path or base64 in a chat (load_image: PIL's
  // convert("RGB"), alpha dropped), and as `generate --image` and the fixtures' references do.
  vision::DecodeOptions decode;
  decode.alpha = vision::AlphaMode::kDrop;
  absl::StatusOr<vision::ImageDecoder> decoder = vision::ImageDecoder::Create(decode);
  if (!decoder.ok()) return decoder.status();
  absl::StatusOr<vision::Glm4vImageProcessor> made = vision::Glm4vImageProcessor::Create(processor);
  if (!made.ok()) return made.status();
  if (media.max_request_image_pixels < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--max-request-image-pixels: ", media.max_request_image_pixels,
                                                   " is below 0 (0 = derived from --limit-images-per-prompt)"));
  }
  if (media.max_source_pixels_ratio < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_source_pixels_ratio: ", media.max_source_pixels_ratio, " is below 0 (0 = no ratio)"));
  }
  const int32_t slots = media.max_concurrent_decodes > 0
                            ? media.max_concurrent_decodes
                            : std::max(1, static_cast<int32_t>(std::thread::hardware_concurrency()));
  std::shared_ptr<ImageSupport> support(new ImageSupport(*std::move(decoder), *std::move(made), slots));
  support->ids_.image_token_id = vision.image_token_id;
  support->ids_.image_start_token_id = vision.image_start_token_id;
  support->ids_.image_end_token_id = vision.image_end_token_id;
  support->spatial_merge_size_ = vision.spatial_merge_size;
  support->max_pixels_ = media.max_pixels > 0 ? media.max_pixels : processor.max_pixels;
  if (support->max_pixels_ < support->min_max_pixels()) {
    return absl::InvalidArgumentError(absl::StrCat(
        media.max_pixels > 0 ? "--max-pixels: " : "preprocessor_config.json: size.longest_edge ", support->max_pixels_,
        " is below the smallest image, temporal_patch_size x (patch_size x merge_size)^2 = ",
        support->min_max_pixels()));
  }
  // Saturating: --max-pixels may be up to 2^40.
  const int64_t largest = support->max_pixels_ / std::max(1, processor.temporal_patch_size);
  const int64_t decodable = support->decoder_.options().max_pixels;
  support->max_source_pixels_ = decodable;
  if (media.max_source_pixels_ratio > 0 && largest <= decodable / media.max_source_pixels_ratio) {
    support->max_source_pixels_ = largest * media.max_source_pixels_ratio;
  }
  support->max_request_image_pixels_ = media.max_request_image_pixels;
  if (support->max_request_image_pixels_ == 0) {
    const int64_t images = std::max<int64_t>(1, media.limit_images_per_prompt);
    support->max_request_image_pixels_ =
        std::max(support->max_source_pixels_,
                 largest > std::numeric_limits<int64_t>::max() / images ? largest : largest * images);
  }
  // The resize grid must be the model's merge grid, or the image tokens would not line up.
  if (processor.merge_size != vision.spatial_merge_size) {
    return absl::InvalidArgumentError(absl::StrCat("preprocessor_config.json: merge_size ", processor.merge_size,
                                                   " differs from config.json's vision_config.spatial_merge_size ",
                                                   vision.spatial_merge_size));
  }
  return std::shared_ptr<const ImageSupport>(std::move(support));
}

absl::StatusOr<std::shared_ptr<const ImageSupport>> ImageSupport::ForModel(const std::string& model_dir,
                                                                           const VisionConfig& vision,
                                                                           const MediaOptions& media,
                                                                           std::string* note) {
  absl::StatusOr<vision::Glm4vProcessorOptions> options = vision::LoadCheckpointPreprocessing(
      model_dir, vision.patch_size, vision.temporal_patch_size, vision.spatial_merge_size, note);
  if (!options.ok()) return options.status();
  // One screenshot's resize and patches on 4 to 8 threads (the machine's cores, at least 4): its
  // requester waits for them (on an H200 host's 16 cores, bench/image_bench: 15 ms on 4 threads,
  // 9.4 ms on 8; on a 2-core box 4 threads beat 2 beside the engine's thread).
  options->threads = std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 4, 8);
  return Create(vision, *options, media);
}

DecodeSlots::DecodeSlots(int32_t slots, std::chrono::milliseconds poll)
    : slots_(std::max<int32_t>(1, slots)),
      poll_(std::max(poll, std::chrono::milliseconds(1))),
      share_((std::max<int32_t>(1, slots) + 1) / 2) {}

uint64_t DecodeSlots::NextTicket() const {
  for (const Waiter& w : queue_) {
    auto it = held_.find(w.client);
    if (it == held_.end() || it->second < share_) return w.ticket;
  }
  // Every waiting client holds its share already: the slot is not left idle.
  return queue_.empty() ? 0 : queue_.front().ticket;
}

absl::Status DecodeSlots::Acquire(std::chrono::steady_clock::time_point deadline,
                                  const std::function<bool()>& abandoned, const std::string& client) {
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t ticket = next_ticket_++;
  queue_.push_back({ticket, client});
  auto leave_queue = [&] {
    queue_.erase(std::find_if(queue_.begin(), queue_.end(), [&](const Waiter& w) { return w.ticket == ticket; }));
  };
  absl::Status gave_up;
  while (true) {
    if (std::chrono::steady_clock::now() >= deadline) {
      gave_up = absl::DeadlineExceededError("the deadline passed");
      break;
    }
    if (in_use_ < slots_ && NextTicket() == ticket) {
      leave_queue();
      ++in_use_;
      ++held_[client];
      // The next in line may take another free slot.
      if (!queue_.empty() && in_use_ < slots_) cv_.notify_all();
      return absl::OkStatus();
    }
    if (abandoned) {
      // Asked unlocked: an HTTP connection's check is a syscall.
      lock.unlock();
      const bool gone = abandoned();
      lock.lock();
      if (gone) {
        gave_up = absl::CancelledError("the client went away");
        break;
      }
    }
    cv_.wait_until(lock, std::min(deadline, std::chrono::steady_clock::now() + poll_));
  }
  leave_queue();
  cv_.notify_all();  // the one behind may now be first
  return gave_up;
}

void DecodeSlots::Release(const std::string& client) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    --in_use_;
    if (auto it = held_.find(client); it != held_.end() && --it->second <= 0) held_.erase(it);
  }
  // Every waiter checks whether it is first; the queue is bounded by the threads that wait.
  cv_.notify_all();
}

int32_t DecodeSlots::waiting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int32_t>(queue_.size());
}

int64_t ImageSupport::min_max_pixels() const {
  const vision::Glm4vProcessorOptions& o = processor_.options();
  const int64_t side = int64_t{o.patch_size} * o.merge_size;
  return int64_t{o.temporal_patch_size} * side * side;
}

std::optional<Refusal> ImageBytes(const ImageData& image, const MediaOptions& media, std::string* bytes) {
  if (image.url.empty()) {
    if (!image.mime_type.empty() && !SupportedMime(image.mime_type)) {
      return InvalidField(image.mime_field.empty() ? image.field : image.mime_field,
                          absl::StrCat("'", image.mime_type.substr(0, 64),
                                       "' is not supported; image/png or image/jpeg (or empty: from the bytes)"),
                          RefusalKind::kUnsupportedContent);
    }
    *bytes = image.bytes;
    return std::nullopt;
  }
  const std::string& url = image.url;
  if (absl::StartsWithIgnoreCase(url, "data:")) return DataUrlBytes(image, bytes);
  if (absl::StartsWithIgnoreCase(url, "file://")) return FileUrlBytes(image, media, bytes);
  if (absl::StartsWithIgnoreCase(url, "http://") || absl::StartsWithIgnoreCase(url, "https://")) {
    if (!media.allow_fetch) {
      return InvalidField(image.field, absl::StrCat("'", ShownValue(url),
                                                    "': fetching image URLs is not enabled on this server; send the "
                                                    "image inline as a data:image/png;base64,... (or "
                                                    "data:image/jpeg;base64,...) URL"));
    }
    absl::StatusOr<std::string> fetched = FetchMediaUrl(url, media.fetch);
    if (!fetched.ok())
      return InvalidField(image.field, absl::StrCat("'", ShownValue(url), "': ", fetched.status().message()));
    *bytes = *std::move(fetched);
    return std::nullopt;
  }
  return InvalidField(image.field,
                      absl::StrCat("'", ShownValue(url),
                                   "' is not a supported image URL; expected data:image/png;base64,... or "
                                   "data:image/jpeg;base64,... (file:// only under --allowed-local-media-path)"));
}

std::optional<Refusal> PrepareImages(const GenerateRequest& request, const MediaOptions& media,
                                     const RequestOrigin& origin, const ImageSupport* support, Dialect dialect,
                                     std::vector<ImageInput>* out, int32_t max_prompt_tokens) {
  out->clear();
  const std::string max_pixels_field = FieldName(Field::kMaxPixels, dialect);
  if (request.max_pixels < 0) return InvalidField(max_pixels_field, absl::StrCat(request.max_pixels, " is below 0"));
  if (request.images.empty()) return std::nullopt;
  const ImageData& first = request.images[0];
  const std::string& first_field = first.part_field.empty() ? first.field : first.part_field;
  if (support == nullptr) {
    return InvalidField(first_field, "the loaded model takes no images: it has no vision input (text only)",
                        RefusalKind::kUnsupportedContent);
  }
  const int64_t count = static_cast<int64_t>(request.images.size());
  if (count > media.limit_images_per_prompt) {
    const ImageData& over = request.images[static_cast<size_t>(media.limit_images_per_prompt)];
    return InvalidField(over.part_field.empty() ? over.field : over.part_field,
                        absl::StrCat(count, " images in the request; at most ", media.limit_images_per_prompt,
                                     " allowed (--limit-images-per-prompt)"));
  }
  vision::ProcessOverrides overrides;
  overrides.max_pixels = support->max_pixels();
  if (request.max_pixels > 0) {
    if (request.max_pixels > support->max_pixels() || request.max_pixels < support->min_max_pixels()) {
      return InvalidField(
          max_pixels_field,
          absl::StrCat(request.max_pixels, " is outside [", support->min_max_pixels(), ", ", support->max_pixels(),
                       "] (temporal_patch_size x height x width after resizing; the server's limit)"));
    }
    overrides.max_pixels = request.max_pixels;
  }
  // The glm4v chat template renders image parts in user messages only.
  for (const ChatMessage& m : request.messages) {
    if (m.role == "user") continue;
    for (const ChatPart& part : m.parts) {
      if (!part.is_image) continue;
      const ImageData& image = request.images[static_cast<size_t>(part.image)];
      return InvalidField(
          image.part_field.empty() ? image.field : image.part_field,
          absl::StrCat("an image in a '", m.role, "' message; the chat template renders images in user messages only"),
          RefusalKind::kUnsupportedContent);
    }
  }
  const auto deadline = request.deadline;
  const std::function<bool()>& abandoned = origin.abandoned;
  // Every image's bytes and header first: a request over a limit is refused before any decode.
  struct Pending {
    std::string bytes;
    vision::ImageHeader header;
    vision::ImageGrid grid;  // the resized size, from the header (transformers' smart_resize)
  };
  std::vector<Pending> pending(request.images.size());
  int64_t request_pixels = 0;
  int64_t image_tokens = 0;
  for (size_t i = 0; i < request.images.size(); ++i) {
    const ImageData& image = request.images[i];
    if (auto stopped = StoppedEarly(image, deadline, abandoned, "before it was read")) return stopped;
    Pending& p = pending[i];
    if (auto refused = ImageBytes(image, media, &p.bytes)) return refused;
    absl::StatusOr<vision::ImageHeader> header = support->decoder().ReadHeader(p.bytes);
    if (!header.ok()) return InvalidField(image.field, std::string(header.status().message()));
    p.header = *header;
    const int64_t pixels = int64_t{p.header.width} * p.header.height;
    if (pixels > support->max_source_pixels()) {
      return InvalidField(image.field,
                          absl::StrCat("image ", p.header.width, "x", p.header.height, " (width x height) has ", pixels,
                                       " pixels; this server decodes at most ", support->max_source_pixels(), " (",
                                       media.max_source_pixels_ratio, " x the largest image it resizes to, max_pixels ",
                                       support->max_pixels(), " / temporal_patch_size); send it smaller"));
    }
    request_pixels += pixels;
    if (request_pixels > support->max_request_image_pixels()) {
      return InvalidField(image.field,
                          absl::StrCat("image ", p.header.width, "x", p.header.height,
                                       " (width x height) brings the request's images to ", request_pixels,
                                       " pixels to decode; at most ", support->max_request_image_pixels(),
                                       " per request (--max-request-image-pixels); send fewer or smaller images"));
    }
    absl::StatusOr<vision::ImageGrid> grid = support->processor().Grid(p.header.height, p.header.width, overrides);
    if (!grid.ok()) {
      // The processor's own messages name the size ("image 1x201: ..."); the others get it here.
      const std::string why(grid.status().message());
      return InvalidField(
          image.field, absl::StartsWith(why, "image ")
                           ? why
                           : absl::StrCat("image ", p.header.width, "x", p.header.height, " (width x height): ", why));
    }
    p.grid = *grid;
    // The image tokens are known from the headers: a prompt they alone make too long is refused
    // before any decode (a 146 KB PNG of 7071x7071 took a decode slot, 1 s and 190 MB first).
    image_tokens += support->processor().ImageTokens(p.grid);
    if (max_prompt_tokens > 0 && image_tokens > max_prompt_tokens) {
      Refusal r = InvalidField(
          image.field,
          absl::StrCat("image ", p.header.width, "x", p.header.height,
                       " (width x height) brings the prompt's images to ", image_tokens, " tokens; at most ",
                       max_prompt_tokens,
                       " prompt tokens allowed (send it smaller, or set mm_processor_kwargs.max_pixels / max_pixels)"),
          RefusalKind::kContextLength);
      r.prompt_tokens = static_cast<int32_t>(std::min<int64_t>(image_tokens, INT32_MAX));
      r.allowed_prompt_tokens = max_prompt_tokens;
      return r;
    }
  }
  out->reserve(request.images.size());
  for (size_t i = 0; i < request.images.size(); ++i) {
    const ImageData& image = request.images[i];
    Pending& p = pending[i];
    // Checked here too: a slot may be free, and Acquire asks `abandoned` only while it waits.
    if (auto stopped = StoppedEarly(image, deadline, abandoned, "before it was decoded")) return stopped;
    const absl::Status slot = support->decode_slots_->Acquire(deadline, abandoned, origin.client);
    if (!slot.ok()) return Stopped(image, slot.code(), "while it waited for a decode slot");
    struct Release {
      DecodeSlots* slots;
      const std::string& client;
      ~Release() { slots->Release(client); }
    } release{support->decode_slots_.get(), origin.client};
    const auto start = std::chrono::steady_clock::now();
    vision::DecodeHint hint;
    hint.min_width = p.grid.resized_width;
    hint.min_height = p.grid.resized_height;
    // The deadline every call; the client (a syscall for HTTP) at most every 10 ms.
    auto asked = start;
    hint.stop = [&] {
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) return true;
      if (!abandoned || now - asked < std::chrono::milliseconds(10)) return false;
      asked = now;
      return abandoned();
    };
    absl::StatusOr<vision::RgbImage> rgb = support->decoder().Decode(p.bytes, hint);
    if (!rgb.ok() && rgb.status().code() == absl::StatusCode::kCancelled) {
      return Stopped(image,
                     std::chrono::steady_clock::now() >= deadline ? absl::StatusCode::kDeadlineExceeded
                                                                  : absl::StatusCode::kCancelled,
                     "while it was decoded");
    }
    if (!rgb.ok()) return InvalidField(image.field, std::string(rgb.status().message()));
    p.bytes = std::string();
    const auto decoded = std::chrono::steady_clock::now();
    const vision::Glm4vImageProcessor& processor = support->processor();
    // A JPEG decoded at a reduced scale is resized to the size its header gave (what
    // transformers resizes the full image to); Process then finds it at that size and only
    // patches it.
    vision::RgbImage scaled_down;
    const vision::RgbImage* source = &*rgb;
    if (rgb->width != p.header.width || rgb->height != p.header.height) {
      scaled_down = vision::ResizeBicubicAntialias(*rgb, p.grid.resized_height, p.grid.resized_width,
                                                   processor.options().backend, processor.options().threads);
      *rgb = vision::RgbImage();
      source = &scaled_down;
    }
    absl::StatusOr<vision::ProcessedImage> processed = processor.Process(*source, overrides);
    if (!processed.ok()) {
      return InvalidField(image.field, absl::StrCat("image ", p.header.width, "x", p.header.height,
                                                    " (width x height): ", processed.status().message()));
    }
    if (processed->grid.resized_height != p.grid.resized_height ||
        processed->grid.resized_width != p.grid.resized_width) {
      return MakeRefusal(
          absl::StatusCode::kInternal, RefusalKind::kInternal,
          absl::StrCat(image.field, ": resized to ", processed->grid.resized_width, "x", processed->grid.resized_height,
                       ", not the ", p.grid.resized_width, "x", p.grid.resized_height, " its header gives"));
    }
    out->push_back(vision::ToImageInput(*std::move(processed)));
    out->back().decode_ms = std::chrono::duration<double, std::milli>(decoded - start).count();
    out->back().preprocess_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - decoded).count();
  }
  return std::nullopt;
}

std::optional<Refusal> ExpandImagePrompt(const ImageSupport& support, std::vector<ImageInput> images,
                                         const std::string& ids_field, std::vector<int32_t>* ids,
                                         std::shared_ptr<const MultimodalPrompt>* multimodal) {
  absl::StatusOr<std::vector<int32_t>> expanded = vision::ExpandImageTokens(*ids, images, support.token_ids());
  if (!expanded.ok()) {
    return InvalidField(ids_field,
                        absl::StrCat("image placeholders and images disagree: ", expanded.status().message()));
  }
  if (images.empty()) return std::nullopt;  // a text prompt: 1-D positions
  absl::StatusOr<std::shared_ptr<const MultimodalPrompt>> prompt = vision::BuildMultimodalPrompt(
      *expanded, std::move(images), support.token_ids().image_token_id, support.spatial_merge_size());
  if (!prompt.ok()) return InvalidField(ids_field, std::string(prompt.status().message()));
  *ids = *std::move(expanded);
  *multimodal = *std::move(prompt);
  return std::nullopt;
}

std::vector<ImageUsage> ImageUsages(const MultimodalPrompt* multimodal) {
  std::vector<ImageUsage> out;
  if (multimodal == nullptr) return out;
  for (const ImageInput& image : multimodal->images) {
    out.push_back({image.resized_height, image.resized_width, image.num_tokens, image.decode_ms, image.preprocess_ms});
  }
  return out;
}

std::string ResizedSizes(const std::vector<ImageUsage>& images) {
  return absl::StrJoin(images, ",",
                       [](std::string* s, const ImageUsage& u) { absl::StrAppend(s, u.height, "x", u.width); });
}

}  // namespace glmserve
