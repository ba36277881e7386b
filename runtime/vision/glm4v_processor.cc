#include "runtime/vision/glm4v_processor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace glmserve::vision {
namespace {

using Json = nlohmann::json;

absl::Status Bad(absl::string_view field, absl::string_view what, const Json& got) {
  return absl::InvalidArgumentError(
      absl::StrCat("preprocessor_config.json: ", field, " must be ", what, ", got ", got.dump()));
}

absl::Status ReadInt(const Json& obj, const char* key, const std::string& field, int64_t lo, int64_t hi, int64_t* out) {
  auto it = obj.find(key);
  if (it == obj.end()) return absl::OkStatus();
  if (!it->is_number_integer() || it->get<int64_t>() < lo || it->get<int64_t>() > hi) {
    return Bad(field, absl::StrCat("an integer in [", lo, ", ", hi, "]"), *it);
  }
  *out = it->get<int64_t>();
  return absl::OkStatus();
}

absl::Status ReadBool(const Json& obj, const char* key, bool* out) {
  auto it = obj.find(key);
  if (it == obj.end()) return absl::OkStatus();
  if (!it->is_boolean()) return Bad(key, "true or false", *it);
  *out = it->get<bool>();
  return absl::OkStatus();
}

absl::Status ReadTriple(const Json& obj, const char* key, bool positive, std::array<double, 3>* out) {
  auto it = obj.find(key);
  if (it == obj.end()) return absl::OkStatus();
  const char* what = positive ? "a list of 3 finite numbers > 0" : "a list of 3 finite numbers";
  if (it->is_number()) {  // transformers broadcasts a single number to every channel
    double v = it->get<double>();
    if (!std::isfinite(v) || (positive && v <= 0)) return Bad(key, what, *it);
    out->fill(v);
    return absl::OkStatus();
  }
  if (!it->is_array() || it->size() != 3) return Bad(key, what, *it);
  for (int c = 0; c < 3; ++c) {
    const Json& e = (*it)[c];
    if (!e.is_number() || !std::isfinite(e.get<double>()) || (positive && e.get<double>() <= 0)) {
      return Bad(key, what, *it);
    }
    (*out)[c] = e.get<double>();
  }
  return absl::OkStatus();
}

absl::Status Validate(const Glm4vProcessorOptions& o) {
  auto bad = [](absl::string_view field, auto value, absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(field, " must be ", what, ", got ", value));
  };
  if (o.patch_size < 1 || o.patch_size > 1024) return bad("patch_size", o.patch_size, "in [1, 1024]");
  if (o.temporal_patch_size < 1 || o.temporal_patch_size > 64) {
    return bad("temporal_patch_size", o.temporal_patch_size, "in [1, 64]");
  }
  if (o.merge_size < 1 || o.merge_size > 64) return bad("merge_size", o.merge_size, "in [1, 64]");
  if (o.threads < 1 || o.threads > 256) return bad("threads", o.threads, "in [1, 256]");
  const int64_t factor = static_cast<int64_t>(o.patch_size) * o.merge_size;
  const int64_t smallest = o.temporal_patch_size * factor * factor;
  // Two billion pixels bounds every int index below and any sane screen.
  constexpr int64_t kMaxPixels = int64_t{1} << 31;
  if (o.min_pixels < 1 || o.min_pixels > kMaxPixels) return bad("min_pixels", o.min_pixels, "in [1, 2^31]");
  if (o.max_pixels < smallest || o.max_pixels > kMaxPixels) {
    return bad("max_pixels", o.max_pixels,
               absl::StrCat("in [temporal_patch_size * (patch_size * merge_size)^2 = ", smallest, ", 2^31]"));
  }
  if (o.min_pixels > o.max_pixels) {
    return bad("min_pixels", o.min_pixels, absl::StrCat("<= max_pixels (", o.max_pixels, ")"));
  }
  if (!(o.rescale_factor > 0) || !std::isfinite(o.rescale_factor)) {
    return bad("rescale_factor", o.rescale_factor, "a finite number > 0");
  }
  for (int c = 0; c < 3; ++c) {
    if (!std::isfinite(o.image_mean[c])) return bad("image_mean", o.image_mean[c], "finite");
    if (!(o.image_std[c] > 0) || !std::isfinite(o.image_std[c]))
      return bad("image_std", o.image_std[c], "finite and > 0");
  }
  if (o.backend != ResizeBackend::kTorchvision && o.backend != ResizeBackend::kPil) {
    return absl::InvalidArgumentError("backend: unknown ResizeBackend");
  }
  return absl::OkStatus();
}

// ---- resize

double KeysCubic(double x) {
  constexpr double a = -0.5;  // PIL's and torchvision's antialiased bicubic (not OpenCV's -0.75)
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
  return 0.0;
}

struct Taps {
  std::vector<int> first;  // first input index per output index
  std::vector<int> count;  // taps per output index
  std::vector<int32_t> w;  // fixed-point weights, `stride` per output index
  int stride = 0;
  int precision = 0;  // fractional bits of w
};

// The weights both backends compute in double, then quantize: PIL with 22 fractional bits;
// torch's uint8 kernel with as many bits as keep the largest weight inside int16.
Taps ComputeTaps(int in_size, int out_size, ResizeBackend backend) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filter_scale = std::max(scale, 1.0);
  const double support = 2.0 * filter_scale;
  Taps t;
  t.stride = static_cast<int>(std::ceil(support)) * 2 + 1;
  t.first.resize(out_size);
  t.count.resize(out_size);
  std::vector<double> wd(static_cast<size_t>(out_size) * t.stride, 0.0);
  double w_max = 0.0;
  for (int i = 0; i < out_size; ++i) {
    const double center = scale * (i + 0.5);
    const int lo = std::max(static_cast<int>(center - support + 0.5), 0);
    const int hi = std::min(static_cast<int>(center + support + 0.5), in_size);
    const int n = std::clamp(hi - lo, 0, t.stride);
    double* w = &wd[static_cast<size_t>(i) * t.stride];
    double total = 0.0;
    for (int j = 0; j < n; ++j) {
      w[j] = KeysCubic((j + lo - center + 0.5) / filter_scale);
      total += w[j];
    }
    if (total != 0.0) {
      for (int j = 0; j < n; ++j) {
        w[j] /= total;
        w_max = std::max(w_max, w[j]);
      }
    }
    t.first[i] = lo;
    t.count[i] = n;
  }
  if (backend == ResizeBackend::kPil) {
    t.precision = 22;
  } else {
    for (t.precision = 0; t.precision < 22; ++t.precision) {
      if (static_cast<int>(0.5 + w_max * (1 << (t.precision + 1))) >= (1 << 15)) break;
    }
  }
  t.w.resize(wd.size());
  const double one = static_cast<double>(1 << t.precision);
  for (size_t k = 0; k < wd.size(); ++k) {
    const double v = wd[k] * one;
    t.w[k] = v < 0 ? static_cast<int32_t>(-0.5 + v) : static_cast<int32_t>(0.5 + v);
  }
  return t;
}

// Runs fn(begin, end) over [0, n) split into up to `threads` contiguous ranges of at least
// `min_per_thread` (small images are not worth a thread), one per thread (the caller takes the
// first). Rows of a resize pass or of patches are independent, so the result is the same for any
// split.
template <typename Fn>
void ForRanges(int n, int threads, int min_per_thread, const Fn& fn) {
  threads = std::max(1, std::min(threads, n / min_per_thread));
  if (threads <= 1) {
    fn(0, n);
    return;
  }
  std::vector<std::thread> workers;
  const int step = (n + threads - 1) / threads;
  for (int begin = step; begin < n; begin += step) workers.emplace_back(fn, begin, std::min(n, begin + step));
  fn(0, std::min(n, step));
  for (std::thread& w : workers) w.join();
}

// Sums of taps fit 32 bits for both backends: |acc| <= 255 * sum|w| * 2^precision with sum|w|
// under 1.3 for these bicubic weights (PIL's 22 bits: ~1.4e9 < 2^31). 32-bit lanes let the
// compiler vectorize the vertical pass.
inline uint8_t Clip8(int32_t acc, int precision) {
  const int32_t v = acc >> precision;  // arithmetic shift: floor, as both C kernels do
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// One output row of the vertical pass: out[i] = clip((half + sum_k w[k] * rows[k][i]) >>
// precision) over `count` input rows of `n` bytes.
void VerticalTaps(const uint8_t* const* rows, const int32_t* w, int count, int precision, size_t n, uint8_t* out,
                  int32_t* acc) {
  const int32_t half = int32_t{1} << (precision - 1);
  size_t i = 0;
#if defined(__SSE2__)
  // Weights that fit 16 bits (torchvision's: at most 15 fractional bits, see ComputeTaps): two
  // rows at a time through pmaddwd, 16 bytes a step; the same integer sums as below, exactly.
  bool fits16 = true;
  for (int k = 0; k < count; ++k) fits16 = fits16 && w[k] >= -32768 && w[k] <= 32767;
  if (fits16) {
    const __m128i zero = _mm_setzero_si128(), rounding = _mm_set1_epi32(half);
    for (; i + 16 <= n; i += 16) {
      __m128i sum[4] = {rounding, rounding, rounding, rounding};
      for (int k = 0; k < count; k += 2) {
        const bool pair = k + 1 < count;
        const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[k] + i));
        const __m128i b = pair ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[k + 1] + i)) : zero;
        const uint32_t low = static_cast<uint32_t>(w[k]) & 0xffffu;
        const uint32_t high = static_cast<uint32_t>(pair ? w[k + 1] : 0) << 16;
        const __m128i weights = _mm_set1_epi32(static_cast<int32_t>(low | high));  // (w[k], w[k + 1]) a lane
        const __m128i a_lo = _mm_unpacklo_epi8(a, zero), a_hi = _mm_unpackhi_epi8(a, zero);
        const __m128i b_lo = _mm_unpacklo_epi8(b, zero), b_hi = _mm_unpackhi_epi8(b, zero);
        sum[0] = _mm_add_epi32(sum[0], _mm_madd_epi16(_mm_unpacklo_epi16(a_lo, b_lo), weights));
        sum[1] = _mm_add_epi32(sum[1], _mm_madd_epi16(_mm_unpackhi_epi16(a_lo, b_lo), weights));
        sum[2] = _mm_add_epi32(sum[2], _mm_madd_epi16(_mm_unpacklo_epi16(a_hi, b_hi), weights));
        sum[3] = _mm_add_epi32(sum[3], _mm_madd_epi16(_mm_unpackhi_epi16(a_hi, b_hi), weights));
      }
      const __m128i shift = _mm_cvtsi32_si128(precision);
      for (__m128i& v : sum) v = _mm_sra_epi32(v, shift);  // floor, as Clip8
      // Saturating packs clamp to [0, 255] as Clip8 does (int32 -> int16 -> uint8).
      const __m128i packed = _mm_packus_epi16(_mm_packs_epi32(sum[0], sum[1]), _mm_packs_epi32(sum[2], sum[3]));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), packed);
    }
  }
#endif
  std::fill(acc + i, acc + n, half);
  for (int k = 0; k < count; ++k) {
    const uint8_t* in = rows[k];
    const int32_t wk = w[k];
    for (size_t j = i; j < n; ++j) acc[j] += in[j] * wk;
  }
  for (size_t j = i; j < n; ++j) out[j] = Clip8(acc[j], precision);
}

// The horizontal pass's weights as (w[k], w[k + 1]) pairs of 16 bits, one int32 each, when every
// weight fits 16 bits (torchvision's; PIL's 22-bit weights do not: pairs is then empty).
struct HorizontalPairs {
  std::vector<int32_t> pairs;  // `per_output` per output pixel, zero-padded
  int per_output = 0;
  int simd_outputs = 0;  // outputs [0, simd_outputs) read no byte past their row's end
};

HorizontalPairs PairTaps(const Taps& t, int in_width) {
  HorizontalPairs h;
  const int outputs = static_cast<int>(t.first.size());
  for (int32_t w : t.w) {
    if (w < -32768 || w > 32767) return h;
  }
  h.per_output = (t.stride + 1) / 2;
  h.pairs.assign(static_cast<size_t>(outputs) * h.per_output, 0);
  for (int x = 0; x < outputs; ++x) {
    const int32_t* w = &t.w[static_cast<size_t>(x) * t.stride];
    for (int k = 0; k < t.count[x]; k += 2) {
      const uint32_t low = static_cast<uint32_t>(w[k]) & 0xffffu;
      const uint32_t high = k + 1 < t.count[x] ? static_cast<uint32_t>(w[k + 1]) << 16 : 0u;
      h.pairs[static_cast<size_t>(x) * h.per_output + k / 2] = static_cast<int32_t>(low | high);
    }
  }
  // Each pair reads two pixels as 4 bytes each (the 4th byte is the next pixel's, weighted by a
  // lane the result drops): the last read ends at byte 3 * (first + 2 * pairs) + 1 of the row
  // (bounded here with the most pairs any output uses).
  h.simd_outputs = outputs;
  while (h.simd_outputs > 0 &&
         (int64_t{t.first[h.simd_outputs - 1]} + 2 * h.per_output) * 3 + 1 > int64_t{in_width} * 3) {
    --h.simd_outputs;
  }
  return h;
}

// The horizontal pass's outputs [0, returned) of one row (the caller does the rest): for each
// output pixel, pmaddwd over pairs of input pixels, (r, g, b) in three int32 lanes. The same
// integer sums as the scalar loop, exactly.
int HorizontalPairsRow(const HorizontalPairs& h, const Taps& t, const uint8_t* in, uint8_t* out) {
#if defined(__SSE2__)
  if (h.pairs.empty()) return 0;
  const __m128i zero = _mm_setzero_si128(), rounding = _mm_set1_epi32(int32_t{1} << (t.precision - 1));
  const __m128i shift = _mm_cvtsi32_si128(t.precision);
  auto load_pixel = [&](const uint8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm_unpacklo_epi8(_mm_cvtsi32_si128(v), zero);  // r, g, b, (next r) as int16
  };
  // Local pointers: stores through `out` (uint8_t, which may alias anything) would otherwise make
  // the compiler reload the vectors' data pointers for every output (1080x2400 on one core: 15-16
  // ms instead of 13 in paired image_bench runs).
  const int32_t* pairs = h.pairs.data();
  const int* first = t.first.data();
  const int* count = t.count.data();
  for (int x = 0; x < h.simd_outputs; ++x) {
    const int32_t* w = pairs + static_cast<size_t>(x) * h.per_output;
    const uint8_t* p = in + static_cast<size_t>(first[x]) * 3;
    __m128i sum = rounding;
    const int used = (count[x] + 1) / 2;  // pairs with a nonzero weight
    for (int k = 0; k < used; ++k, p += 6) {
      const __m128i ab = _mm_unpacklo_epi16(load_pixel(p), load_pixel(p + 3));  // (a.r, b.r, a.g, b.g, ...)
      sum = _mm_add_epi32(sum, _mm_madd_epi16(ab, _mm_set1_epi32(w[k])));
    }
    sum = _mm_sra_epi32(sum, shift);
    const __m128i packed = _mm_packus_epi16(_mm_packs_epi32(sum, zero), zero);  // clamps as Clip8
    const uint32_t rgb = static_cast<uint32_t>(_mm_cvtsi128_si32(packed));
    out[x * 3] = static_cast<uint8_t>(rgb);
    out[x * 3 + 1] = static_cast<uint8_t>(rgb >> 8);
    out[x * 3 + 2] = static_cast<uint8_t>(rgb >> 16);
  }
  return h.simd_outputs;
#else
  (void)h, (void)t, (void)in, (void)out;
  return 0;
#endif
}

}  // namespace

RgbImage ResizeBicubicAntialias(const RgbImage& image, int height, int width, ResizeBackend backend, int threads) {
  // The source is read in place (a screenshot is ~8 MB: no copy); each pass writes a new image.
  const RgbImage* src = &image;
  RgbImage horizontal, vertical;
  if (width != src->width) {
    const Taps t = ComputeTaps(src->width, width, backend);
    RgbImage next;
    next.width = width;
    next.height = src->height;
    next.pixels.resize(static_cast<size_t>(width) * src->height * 3);
    const int32_t half = int32_t{1} << (t.precision - 1);
    const HorizontalPairs pairs = PairTaps(t, src->width);
    ForRanges(src->height, threads, 64, [&](int y_begin, int y_end) {
      for (int y = y_begin; y < y_end; ++y) {
        const uint8_t* in = &src->pixels[static_cast<size_t>(y) * src->width * 3];
        uint8_t* out = &next.pixels[static_cast<size_t>(y) * width * 3];
        const int simd_end = HorizontalPairsRow(pairs, t, in, out);
        for (int x = simd_end; x < width; ++x) {
          const int32_t* w = &t.w[static_cast<size_t>(x) * t.stride];
          const uint8_t* p = in + static_cast<size_t>(t.first[x]) * 3;
          int32_t r = half, g = half, b = half;
          for (int k = 0; k < t.count[x]; ++k, p += 3) {
            r += p[0] * w[k];
            g += p[1] * w[k];
            b += p[2] * w[k];
          }
          out[x * 3] = Clip8(r, t.precision);
          out[x * 3 + 1] = Clip8(g, t.precision);
          out[x * 3 + 2] = Clip8(b, t.precision);
        }
      }
    });
    horizontal = std::move(next);
    src = &horizontal;
  }
  if (height != src->height) {
    const Taps t = ComputeTaps(src->height, height, backend);
    RgbImage next;
    next.width = src->width;
    next.height = height;
    next.pixels.resize(static_cast<size_t>(src->width) * height * 3);
    const size_t row = static_cast<size_t>(src->width) * 3;
    ForRanges(height, threads, 64, [&](int y_begin, int y_end) {
      std::vector<int32_t> acc(row);
      std::vector<const uint8_t*> rows(static_cast<size_t>(t.stride));
      for (int y = y_begin; y < y_end; ++y) {
        for (int k = 0; k < t.count[y]; ++k) rows[k] = &src->pixels[static_cast<size_t>(t.first[y] + k) * row];
        VerticalTaps(rows.data(), &t.w[static_cast<size_t>(y) * t.stride], t.count[y], t.precision, row,
                     &next.pixels[static_cast<size_t>(y) * row], acc.data());
      }
    });
    vertical = std::move(next);
    src = &vertical;
  }
  if (src == &vertical) return vertical;  // locals: moved out
  if (src == &horizontal) return horizontal;
  return image;
}

absl::StatusOr<Glm4vProcessorOptions> ParsePreprocessorConfig(absl::string_view json_text) {
  Json j = Json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("preprocessor_config.json: not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("preprocessor_config.json: top level must be an object");
  Glm4vProcessorOptions o;
  if (auto it = j.find("image_processor_type"); it != j.end()) {
    static const char* kOurs[] = {"Glm4vImageProcessor", "Glm4vImageProcessorFast", "Glm4vImageProcessorPil"};
    if (!it->is_string() || std::find(std::begin(kOurs), std::end(kOurs), it->get<std::string>()) == std::end(kOurs)) {
      return Bad("image_processor_type", "Glm4vImageProcessor, Glm4vImageProcessorFast or Glm4vImageProcessorPil", *it);
    }
    if (it->get<std::string>() == "Glm4vImageProcessorPil") o.backend = ResizeBackend::kPil;
  }
  if (auto it = j.find("size"); it != j.end()) {
    if (!it->is_object() || !it->contains("shortest_edge") || !it->contains("longest_edge")) {
      return Bad("size", "an object with shortest_edge and longest_edge (as transformers requires)", *it);
    }
    constexpr int64_t kMax = int64_t{1} << 31;
    if (absl::Status s = ReadInt(*it, "shortest_edge", "size.shortest_edge", 1, kMax, &o.min_pixels); !s.ok()) return s;
    if (absl::Status s = ReadInt(*it, "longest_edge", "size.longest_edge", 1, kMax, &o.max_pixels); !s.ok()) return s;
  }
  int64_t v = 0;
  v = o.patch_size;
  if (absl::Status s = ReadInt(j, "patch_size", "patch_size", 1, 1024, &v); !s.ok()) return s;
  o.patch_size = static_cast<int>(v);
  v = o.temporal_patch_size;
  if (absl::Status s = ReadInt(j, "temporal_patch_size", "temporal_patch_size", 1, 64, &v); !s.ok()) return s;
  o.temporal_patch_size = static_cast<int>(v);
  v = o.merge_size;
  if (absl::Status s = ReadInt(j, "merge_size", "merge_size", 1, 64, &v); !s.ok()) return s;
  o.merge_size = static_cast<int>(v);
  if (absl::Status s = ReadBool(j, "do_resize", &o.do_resize); !s.ok()) return s;
  if (absl::Status s = ReadBool(j, "do_rescale", &o.do_rescale); !s.ok()) return s;
  if (absl::Status s = ReadBool(j, "do_normalize", &o.do_normalize); !s.ok()) return s;
  if (auto it = j.find("rescale_factor"); it != j.end()) {
    if (!it->is_number() || !(it->get<double>() > 0) || !std::isfinite(it->get<double>())) {
      return Bad("rescale_factor", "a finite number > 0", *it);
    }
    o.rescale_factor = it->get<double>();
  }
  if (absl::Status s = ReadTriple(j, "image_mean", false, &o.image_mean); !s.ok()) return s;
  if (absl::Status s = ReadTriple(j, "image_std", true, &o.image_std); !s.ok()) return s;
  if (auto it = j.find("resample"); it != j.end() && !(it->is_number_integer() && it->get<int64_t>() == 3)) {
    return Bad("resample", "3 (bicubic, the only resample implemented)", *it);
  }
  if (auto it = j.find("do_convert_rgb"); it != j.end() && !(it->is_boolean() && it->get<bool>())) {
    return Bad("do_convert_rgb", "true (images are always converted to RGB)", *it);
  }
  if (absl::Status s = Validate(o); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("preprocessor_config.json: ", s.message()));
  }
  return o;
}

absl::StatusOr<Glm4vProcessorOptions> LoadPreprocessorConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  absl::StatusOr<Glm4vProcessorOptions> o = ParsePreprocessorConfig(ss.str());
  if (!o.ok()) return absl::Status(o.status().code(), absl::StrCat(path, ": ", o.status().message()));
  return o;
}

absl::StatusOr<Glm4vProcessorOptions> LoadCheckpointPreprocessing(const std::string& model_dir, int patch_size,
                                                                  int temporal_patch_size, int merge_size,
                                                                  std::string* source) {
  const std::string path = model_dir + "/preprocessor_config.json";
  absl::StatusOr<Glm4vProcessorOptions> options = LoadPreprocessorConfig(path);
  if (!absl::IsNotFound(options.status())) {
    if (source != nullptr && options.ok()) *source = path;
    return options;
  }
  if (source != nullptr) *source = path + " not found: transformers' Glm4vImageProcessor defaults";
  Glm4vProcessorOptions defaults;
  defaults.patch_size = patch_size;
  defaults.temporal_patch_size = temporal_patch_size;
  defaults.merge_size = merge_size;
  return defaults;
}

absl::StatusOr<ResizedSize> SmartResize(int64_t height, int64_t width, const Glm4vProcessorOptions& o) {
  if (height <= 0 || width <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat("image has a zero or negative side (%dx%d)", width, height));
  }
  // Python semantics, step for step: floats where transformers divides, int() truncation,
  // round() half-to-even (nearbyint in the default rounding mode), floor/ceil on doubles.
  const int64_t factor = static_cast<int64_t>(o.patch_size) * o.merge_size;
  const int64_t num_frames = o.temporal_patch_size;
  const int64_t temporal_factor = o.temporal_patch_size;
  double h = static_cast<double>(height), w = static_cast<double>(width);
  if (height < factor || width < factor) {
    const double scale = std::max(static_cast<double>(factor) / h, static_cast<double>(factor) / w);
    h = std::trunc(h * scale);
    w = std::trunc(w * scale);
  }
  const double ratio = std::max(h, w) / std::min(h, w);
  if (ratio > 200) {
    return absl::InvalidArgumentError(
        absl::StrFormat("image %dx%d: absolute aspect ratio must be smaller than 200, got %g", width, height, ratio));
  }
  const double f = static_cast<double>(factor);
  double h_bar = std::nearbyint(h / f) * f;
  double w_bar = std::nearbyint(w / f) * f;
  const double t_bar = std::nearbyint(static_cast<double>(num_frames) / temporal_factor) * temporal_factor;
  // Python compares exact integers; these products stay far below 2^53.
  const double frames_hw = static_cast<double>(num_frames) * h * w;
  if (t_bar * h_bar * w_bar > static_cast<double>(o.max_pixels)) {
    const double beta = std::sqrt(frames_hw / static_cast<double>(o.max_pixels));
    h_bar = std::max(f, std::floor(h / beta / f) * f);
    w_bar = std::max(f, std::floor(w / beta / f) * f);
  } else if (t_bar * h_bar * w_bar < static_cast<double>(o.min_pixels)) {
    const double beta = std::sqrt(static_cast<double>(o.min_pixels) / frames_hw);
    h_bar = std::ceil(h * beta / f) * f;
    w_bar = std::ceil(w * beta / f) * f;
  }
  if (h_bar > std::numeric_limits<int>::max() / 4 || w_bar > std::numeric_limits<int>::max() / 4) {
    return absl::InvalidArgumentError(absl::StrFormat("image %dx%d: resized size out of range", width, height));
  }
  return ResizedSize{static_cast<int>(h_bar), static_cast<int>(w_bar)};
}

absl::StatusOr<Glm4vImageProcessor> Glm4vImageProcessor::Create(const Glm4vProcessorOptions& options) {
  if (absl::Status s = Validate(options); !s.ok()) return s;
  return Glm4vImageProcessor(options);
}

Glm4vImageProcessor::Glm4vImageProcessor(const Glm4vProcessorOptions& options) : options_(options) {
  const Glm4vProcessorOptions& o = options_;
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) {
      float x;
      if (o.backend == ResizeBackend::kTorchvision) {
        // torchvision backend: rescale folded into float32 mean/std (mean * (1 / rescale_factor)),
        // then float32 (x - mean) / std.
        const float inv = static_cast<float>(1.0 / o.rescale_factor);
        if (o.do_rescale && o.do_normalize) {
          const float mean = static_cast<float>(o.image_mean[c]) * inv;
          const float std = static_cast<float>(o.image_std[c]) * inv;
          x = (static_cast<float>(v) - mean) / std;
        } else if (o.do_normalize) {
          x = (static_cast<float>(v) - static_cast<float>(o.image_mean[c])) / static_cast<float>(o.image_std[c]);
        } else if (o.do_rescale) {
          x = static_cast<float>(v) * static_cast<float>(o.rescale_factor);
        } else {
          x = static_cast<float>(v);
        }
      } else {
        // PIL backend (numpy): rescale in float64 then to float32; normalize in float32.
        x = o.do_rescale ? static_cast<float>(static_cast<double>(v) * o.rescale_factor) : static_cast<float>(v);
        if (o.do_normalize) {
          x = (x - static_cast<float>(o.image_mean[c])) / static_cast<float>(o.image_std[c]);
        }
      }
      value_[c][v] = x;
    }
  }
}

absl::StatusOr<Glm4vProcessorOptions> Glm4vImageProcessor::Effective(const ProcessOverrides& overrides) const {
  Glm4vProcessorOptions o = options_;
  if (overrides.max_pixels < 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_pixels must be > 0, got ", overrides.max_pixels));
  }
  if (overrides.max_pixels > 0) {
    o.max_pixels = overrides.max_pixels;
    // An override below min_pixels lowers it too: the caller asked for small images.
    o.min_pixels = std::min(o.min_pixels, o.max_pixels);
    if (absl::Status s = Validate(o); !s.ok()) return s;
  }
  return o;
}

absl::StatusOr<ImageGrid> Glm4vImageProcessor::Grid(int64_t height, int64_t width,
                                                    const ProcessOverrides& overrides) const {
  absl::StatusOr<Glm4vProcessorOptions> o = Effective(overrides);
  if (!o.ok()) return o.status();
  ResizedSize size{static_cast<int>(height), static_cast<int>(width)};
  const int64_t factor = static_cast<int64_t>(o->patch_size) * o->merge_size;
  if (o->do_resize) {
    absl::StatusOr<ResizedSize> r = SmartResize(height, width, *o);
    if (!r.ok()) return r.status();
    size = *r;
  } else if (height <= 0 || width <= 0 || height % factor != 0 || width % factor != 0 || height > (int64_t{1} << 20) ||
             width > (int64_t{1} << 20)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "do_resize is false: image %dx%d must have both sides positive multiples of patch_size * merge_size = %d",
        width, height, factor));
  }
  ImageGrid g;
  g.grid_t = 1;  // one still image fills one temporal patch
  g.grid_h = size.height / o->patch_size;
  g.grid_w = size.width / o->patch_size;
  g.resized_height = size.height;
  g.resized_width = size.width;
  return g;
}

absl::StatusOr<int64_t> Glm4vImageProcessor::NumImageTokens(int64_t height, int64_t width,
                                                            const ProcessOverrides& overrides) const {
  absl::StatusOr<ImageGrid> g = Grid(height, width, overrides);
  if (!g.ok()) return g.status();
  return ImageTokens(*g);
}

absl::StatusOr<ProcessedImage> Glm4vImageProcessor::Process(const RgbImage& image,
                                                            const ProcessOverrides& overrides) const {
  if (image.width <= 0 || image.height <= 0 ||
      image.pixels.size() != static_cast<size_t>(image.width) * image.height * 3) {
    return absl::InvalidArgumentError(absl::StrFormat("image %dx%d: zero-size or pixel buffer of %d bytes", image.width,
                                                      image.height, image.pixels.size()));
  }
  absl::StatusOr<ImageGrid> grid = Grid(image.height, image.width, overrides);
  if (!grid.ok()) return grid.status();
  const ImageGrid& g = *grid;
  RgbImage resized;
  const RgbImage* src = &image;
  if (g.resized_height != image.height || g.resized_width != image.width) {
    resized = ResizeBicubicAntialias(image, g.resized_height, g.resized_width, options_.backend, options_.threads);
    src = &resized;
  }

  const int p = options_.patch_size, m = options_.merge_size, t_len = options_.temporal_patch_size;
  ProcessedImage out;
  out.grid = g;
  out.num_image_tokens = ImageTokens(g);
  out.patch_dim = 3LL * t_len * p * p;
  out.value_table.resize(3 * 256);
  for (int c = 0; c < 3; ++c) std::copy(value_[c].begin(), value_[c].end(), out.value_table.begin() + c * 256);
  out.pixel_codes.resize(static_cast<size_t>(g.num_patches() * out.patch_dim));
  const int blocks_h = g.grid_h / m, blocks_w = g.grid_w / m;
  const int64_t block_row_values = int64_t{blocks_w} * m * m * out.patch_dim;  // one row of merge blocks
  ForRanges(blocks_h, options_.threads, 4, [&](int bh_begin, int bh_end) {     // rows of merge blocks
    for (int bh = bh_begin; bh < bh_end; ++bh) {
      uint8_t* row = out.pixel_codes.data() + static_cast<size_t>(bh) * block_row_values;
      for (int bw = 0; bw < blocks_w; ++bw) {
        for (int mh = 0; mh < m; ++mh) {
          for (int mw = 0; mw < m; ++mw, row += out.patch_dim) {
            const int y0 = (bh * m + mh) * p, x0 = (bw * m + mw) * p;
            for (int c = 0; c < 3; ++c) {
              uint8_t* dst = row + static_cast<size_t>(c) * t_len * p * p;
              for (int py = 0; py < p; ++py) {
                const uint8_t* in = &src->pixels[(static_cast<size_t>(y0 + py) * src->width + x0) * 3 + c];
                for (int px = 0; px < p; ++px) dst[py * p + px] = in[px * 3];
              }
              // The still image repeated over the temporal patch, as transformers' expand does.
              for (int t = 1; t < t_len; ++t) std::copy(dst, dst + p * p, dst + static_cast<size_t>(t) * p * p);
            }
          }
        }
      }
    }
  });
  return out;
}

}  // namespace glmserve::vision
