// Where a request's image time goes before the engine sees it: base64 decode, PNG/JPEG decode,
// and the Glm4v preprocessing (resize + pixel codes) at 1 and N threads, each the median of
// --repeat runs on one image file.
//   build/bench/image_bench [--repeat N] [--max-pixels P] [--threads N] [--fresh-pages true] IMAGE
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "flags/flags.h"
#include "runtime/vision/glm4v_processor.h"
#include "runtime/vision/image_decode.h"
#include "server/ops/host_memory.h"

namespace {

double MedianMs(int repeat, const std::function<void()>& run) {
  using Clock = std::chrono::steady_clock;
  std::vector<double> ms;
  for (int i = 0; i < repeat; ++i) {
    const Clock::time_point start = Clock::now();
    run();
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int repeat = 5, threads = 4;
  int64_t max_pixels = 5000000;
  bool fresh_pages = false;
  std::vector<std::string> paths;
  glmserve::flags::FlagSet flags("image_bench",
                                 "[--repeat N] [--max-pixels P] [--threads N] [--fresh-pages true] IMAGE",
                                 "Times an image's base64 decode, decode and Glm4v preprocessing.");
  flags.Int("repeat", &repeat, 1, 1000, "runs per stage (the median is printed)");
  flags.Int("threads", &threads, 1, 256, "preprocessing threads of the second row");
  flags.Int("max-pixels", &max_pixels, 1, int64_t{1} << 40, "the processor's size.longest_edge");
  flags.Bool("fresh-pages", &fresh_pages,
             "leave glibc's allocator as it is (every large buffer a fresh mmap) instead of the "
             "server's KeepLargeHostBuffersMapped()");
  flags.Positional("IMAGE", &paths, "a PNG or JPEG file");
  if (std::optional<int> exit_code = flags.ParseCommandLine(argc, argv)) return *exit_code;
  if (!fresh_pages) glmserve::KeepLargeHostBuffersMapped();
  if (paths.size() != 1) {
    std::fprintf(stderr, "image_bench: expected one IMAGE, got %zu\n", paths.size());
    return 2;
  }
  std::ifstream in(paths[0], std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "image_bench: cannot read %s\n", paths[0].c_str());
    return 2;
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string bytes = buffer.str();
  const std::string base64 = absl::Base64Escape(bytes);

  auto decoder = glmserve::vision::ImageDecoder::Create();
  if (!decoder.ok()) return 1;
  auto image = decoder->Decode(bytes);
  if (!image.ok()) {
    std::fprintf(stderr, "image_bench: %s\n", std::string(image.status().message()).c_str());
    return 1;
  }
  std::printf("%s: %zu bytes (%zu in base64), %dx%d\n\n", paths[0].c_str(), bytes.size(), base64.size(), image->width,
              image->height);
  std::printf("| stage | threads | ms (median of %d) |\n|---|---:|---:|\n", repeat);
  std::string unescaped;
  std::printf("| base64 decode | 1 | %.2f |\n", MedianMs(repeat, [&] { absl::Base64Unescape(base64, &unescaped); }));
  std::printf("| decode | 1 | %.2f |\n", MedianMs(repeat, [&] { (void)decoder->Decode(bytes); }));
  for (int t : {1, threads}) {
    glmserve::vision::Glm4vProcessorOptions options;
    options.max_pixels = max_pixels;
    options.threads = t;
    auto processor = glmserve::vision::Glm4vImageProcessor::Create(options);
    if (!processor.ok()) return 1;
    auto grid = processor->Grid(image->height, image->width);
    if (!grid.ok()) return 1;
    const double resize_ms = MedianMs(repeat, [&] {
      (void)glmserve::vision::ResizeBicubicAntialias(*image, grid->resized_height, grid->resized_width, options.backend,
                                                     t);
    });
    const double process_ms = MedianMs(repeat, [&] { (void)processor->Process(*image); });
    std::printf("| resize to %dx%d | %d | %.2f |\n| resize + pixel codes (Process) | %d | %.2f |\n",
                grid->resized_width, grid->resized_height, t, resize_ms, t, process_ms);
  }
  return 0;
}
