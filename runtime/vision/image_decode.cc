#include "runtime/vision/image_decode.h"

#include <jerror.h>
#include <jpeglib.h>
#include <png.h>

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace glmserve::vision {
namespace {

// Both libraries report fatal errors by longjmp. Every function that calls setjmp below keeps its
// state in a plain struct owned by the caller, and no object with a destructor lives in a frame
// that a longjmp crosses, so nothing is skipped and nothing leaks.

constexpr unsigned char kPngSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

absl::Status TooManyPixels(const char* what, uint64_t w, uint64_t h, int64_t max_pixels) {
  return absl::InvalidArgumentError(
      absl::StrFormat("%s image is %dx%d = %d pixels, above the limit of %d pixels (refused from the header, nothing "
                      "decoded)",
                      what, w, h, w * h, max_pixels));
}

// White-background composite, bit-exact with PIL's ImagingAlphaComposite for an opaque white
// destination (its 7-bit fixed point and the divide-by-255 shift trick).
inline uint8_t CompositeOnWhite(uint32_t c, uint32_t a) {
  if (a == 0) return 255;
  uint32_t tmp = c * a * 128 + 255 * (255 - a) * 128 + (0x80 << 7);
  return static_cast<uint8_t>(((((tmp >> 8) + tmp) >> 8)) >> 7);
}

// PIL's cmyk2rgb (Convert.c): r = clip(nk - nk * c / 255) with its rounding.
inline uint8_t CmykChannel(int c, int nk) {
  int tmp = c * nk + 128;
  int v = nk - (((tmp >> 8) + tmp) >> 8);
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// ---------------------------------------------------------------- PNG

struct PngState {
  const unsigned char* data = nullptr;
  size_t size = 0;
  size_t pos = 0;
  char error[256] = {0};
  png_structp png = nullptr;
  png_infop info = nullptr;
  // From the header.
  png_uint_32 width = 0, height = 0;
  int bit_depth = 0, color_type = 0, interlace = 0;
  bool has_trns = false;
  // An 8-bit gray or RGB image's tRNS colour key: PIL keeps it as info["transparency"] through
  // convert("RGB"), and transformers' convert_to_rgb then paints those pixels white, alpha mode or
  // not. The key's pixels come out of libpng with alpha 0, the others 255.
  bool colour_key = false;
  // A 16-bit gray image's tRNS value (PIL's I;16 keeps it aside; convert("RGB") ignores it, the
  // processor's convert_to_rgb on the opened image paints it white): -1 = none.
  int gray16_key = -1;
  // AlphaMode::kDrop (PIL's convert("RGB"), then the processor's convert_to_rgb): the colour key
  // PIL keeps as info["transparency"] for a palette whose tRNS is one fully transparent entry among
  // opaque ones (the entry's colour), a 1/2/4-bit gray image (its raw key compared with the
  // expanded 8-bit values; 1-bit: 0 or 255) and a 16-bit RGB image (its 16-bit key compared with
  // the 8-bit values PIL keeps). Pixels of that colour in the RGB result become white; libpng is
  // not asked for alpha.
  bool drop_alpha = false;
  bool rgb_key_set = false;
  int rgb_key[3] = {-1, -1, -1};
  // After the transforms: samples per pixel and bytes per sample of the rows we get.
  int channels = 0;
  int sample_bytes = 1;
  size_t rowbytes = 0;
  unsigned char** rows = nullptr;
  int passes = 1;  // png_set_interlace_handling's: 7 for Adam7
  // Every row was decoded and libpng asked for more input anyway (PngRead stopped it).
  bool rows_complete = false;
  const std::function<bool()>* stop = nullptr;  // DecodeHint::stop; null = never
  bool stopped = false;                         // it answered true
};

void PngOnError(png_structp png, png_const_charp msg) {
  auto* st = static_cast<PngState*>(png_get_error_ptr(png));
  std::snprintf(st->error, sizeof(st->error), "%s", msg ? msg : "unknown libpng error");
  png_longjmp(png, 1);
}

void PngOnWarning(png_structp, png_const_charp) {}  // PIL ignores ancillary problems too

void PngRead(png_structp png, png_bytep out, size_t n) {
  auto* st = static_cast<PngState*>(png_get_io_ptr(png));
  // Once every row is out, libpng would inflate the rest of the image data to its end only to
  // check it: a 2.9 MB file of 100x100 pixels whose data inflates to 2.9 GB took 3.3 s of a decode
  // slot. Nothing after the last row is needed; stop there.
  if (st->rows != nullptr && (png_get_current_pass_number(png) >= 7 ||
                              (st->interlace == PNG_INTERLACE_NONE && png_get_current_row_number(png) >= st->height))) {
    st->rows_complete = true;
    png_longjmp(png, 1);
  }
  if (n > st->size - st->pos) {
    std::snprintf(st->error, sizeof(st->error), "truncated: needed %zu more bytes at offset %zu of %zu", n, st->pos,
                  st->size);
    png_longjmp(png, 1);
  }
  std::memcpy(out, st->data + st->pos, n);
  st->pos += n;
}

// Reads the header and sets up the transforms. Returns false with st->error set on failure.
bool PngReadHeader(PngState* st) {
  if (setjmp(png_jmpbuf(st->png))) return false;
  png_set_read_fn(st->png, st, PngRead);
  // Our own pixel limit is checked right after; libpng's limits are left as wide as the format
  // allows so that its message never pre-empts ours. Metadata chunks are capped (zTXt/iCCP bombs).
  png_set_user_limits(st->png, 0x7fffffff, 0x7fffffff);
  png_set_chunk_malloc_max(st->png, 8 << 20);
  png_read_info(st->png, st->info);
  png_get_IHDR(st->png, st->info, &st->width, &st->height, &st->bit_depth, &st->color_type, &st->interlace, nullptr,
               nullptr);
  st->has_trns = png_get_valid(st->png, st->info, PNG_INFO_tRNS) != 0;
  return true;
}

// PngState::rgb_key for the images whose tRNS PIL keeps as a colour key through convert("RGB")
// (PngImagePlugin's chunk_tRNS, then Image.convert); false for the others.
bool PilKeepsColourKey(PngState* st) {
  png_bytep alphas = nullptr;
  int alpha_count = 0;
  png_color_16p key = nullptr;
  if (png_get_tRNS(st->png, st->info, &alphas, &alpha_count, &key) == 0) return false;
  if (st->color_type == PNG_COLOR_TYPE_PALETTE) {
    png_colorp palette = nullptr;
    int palette_size = 0;
    if (alphas == nullptr || png_get_PLTE(st->png, st->info, &palette, &palette_size) == 0) return false;
    int transparent = -1;  // PIL's _simple_palette: 0xff* 0x00 0xff*
    for (int i = 0; i < alpha_count; ++i) {
      if (alphas[i] == 0 && transparent < 0) {
        transparent = i;
      } else if (alphas[i] != 255) {
        return false;
      }
    }
    if (transparent < 0 || transparent >= palette_size) return false;
    st->rgb_key[0] = palette[transparent].red;
    st->rgb_key[1] = palette[transparent].green;
    st->rgb_key[2] = palette[transparent].blue;
  } else if (st->color_type == PNG_COLOR_TYPE_GRAY && st->bit_depth < 8 && key != nullptr) {
    const int value = st->bit_depth == 1 ? (key->gray != 0 ? 255 : 0) : key->gray;
    st->rgb_key[0] = st->rgb_key[1] = st->rgb_key[2] = value;
  } else if (st->color_type == PNG_COLOR_TYPE_RGB && st->bit_depth == 16 && key != nullptr) {
    st->rgb_key[0] = key->red;
    st->rgb_key[1] = key->green;
    st->rgb_key[2] = key->blue;
  } else {
    return false;
  }
  st->rgb_key_set = true;
  return true;
}

// Transforms to 8-bit gray / gray+alpha / RGB / RGBA (16-bit gray without alpha stays 16-bit:
// PIL saturates those values rather than keeping the high byte).
bool PngSetTransforms(PngState* st) {
  if (setjmp(png_jmpbuf(st->png))) return false;
  const bool gray16 = st->bit_depth == 16 && st->color_type == PNG_COLOR_TYPE_GRAY;
  if (st->color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(st->png);
  if (st->color_type == PNG_COLOR_TYPE_GRAY && st->bit_depth < 8) png_set_expand_gray_1_2_4_to_8(st->png);
  if (gray16 && st->has_trns) {
    png_color_16p key = nullptr;
    if (png_get_tRNS(st->png, st->info, nullptr, nullptr, &key) != 0 && key != nullptr) st->gray16_key = key->gray;
  } else if (st->has_trns && st->drop_alpha && PilKeepsColourKey(st)) {
    // rgb_key set: the rows stay without alpha.
  } else if (st->has_trns) {
    st->colour_key =
        st->bit_depth == 8 && (st->color_type == PNG_COLOR_TYPE_GRAY || st->color_type == PNG_COLOR_TYPE_RGB);
    png_set_tRNS_to_alpha(st->png);
  }
  if (st->bit_depth == 16 && !gray16) png_set_strip_16(st->png);  // high byte, as PIL's ";16B" modes
  st->passes = png_set_interlace_handling(st->png);
  png_read_update_info(st->png, st->info);
  st->channels = png_get_channels(st->png, st->info);
  st->sample_bytes = png_get_bit_depth(st->png, st->info) == 16 ? 2 : 1;
  st->rowbytes = png_get_rowbytes(st->png, st->info);
  return true;
}

// png_read_image's loop (every pass over every row), asking st->stop every 64 rows.
bool PngReadRows(PngState* st) {
  if (setjmp(png_jmpbuf(st->png))) return st->rows_complete;
  for (int pass = 0; pass < st->passes; ++pass) {
    for (png_uint_32 y = 0; y < st->height; ++y) {
      if (st->stop != nullptr && y % 64 == 0 && (*st->stop)()) {
        st->stopped = true;
        return false;
      }
      png_read_row(st->png, st->rows[y], nullptr);
    }
  }
  return true;
}

// Reads the header into st (a fresh state). Returns OK or Decode's refusal.
absl::Status PngHeader(PngState* st, absl::string_view bytes, const DecodeOptions& options) {
  st->data = reinterpret_cast<const unsigned char*>(bytes.data());
  st->size = bytes.size();
  st->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, st, PngOnError, PngOnWarning);
  if (st->png == nullptr) return absl::ResourceExhaustedError("PNG: libpng could not allocate its state");
  st->info = png_create_info_struct(st->png);
  if (st->info == nullptr) return absl::ResourceExhaustedError("PNG: libpng could not allocate its state");
  if (!PngReadHeader(st)) return absl::InvalidArgumentError(absl::StrCat("PNG: bad header: ", st->error));
  if (st->width == 0 || st->height == 0) {
    return absl::InvalidArgumentError(absl::StrFormat("PNG: zero-size image (%dx%d)", st->width, st->height));
  }
  if (static_cast<uint64_t>(st->width) * st->height > static_cast<uint64_t>(options.max_pixels)) {
    return TooManyPixels("PNG", st->width, st->height, options.max_pixels);
  }
  return absl::OkStatus();
}

struct PngCleanup {
  PngState* st;
  ~PngCleanup() {
    if (st->png != nullptr) png_destroy_read_struct(&st->png, st->info ? &st->info : nullptr, nullptr);
  }
};

// PngState::rgb_key's pixels white (what convert_to_rgb makes of PIL's kept colour key).
RgbImage PaintColourKeyWhite(const PngState& st, RgbImage image) {
  if (!st.rgb_key_set) return image;
  for (size_t i = 0; i + 2 < image.pixels.size(); i += 3) {
    uint8_t* p = image.pixels.data() + i;
    if (p[0] == st.rgb_key[0] && p[1] == st.rgb_key[1] && p[2] == st.rgb_key[2]) p[0] = p[1] = p[2] = 255;
  }
  return image;
}

absl::StatusOr<RgbImage> DecodePng(absl::string_view bytes, const DecodeOptions& options, const DecodeHint& hint) {
  PngState st;
  PngCleanup cleanup{&st};
  if (absl::Status header = PngHeader(&st, bytes, options); !header.ok()) return header;
  st.stop = hint.stop ? &hint.stop : nullptr;
  st.drop_alpha = options.alpha == AlphaMode::kDrop;
  if (!PngSetTransforms(&st)) return absl::InvalidArgumentError(absl::StrCat("PNG: ", st.error));

  RgbImage out;
  out.width = static_cast<int>(st.width);
  out.height = static_cast<int>(st.height);
  out.pixels.resize(static_cast<size_t>(st.width) * st.height * 3);
  // 8-bit RGB (a screenshot's usual form) is decoded straight into the result.
  const bool rgb8 = st.channels == 3 && st.sample_bytes == 1 && st.rowbytes == size_t{st.width} * 3;
  std::vector<unsigned char> raw(rgb8 ? 0 : st.rowbytes * st.height);
  std::vector<unsigned char*> rows(st.height);
  for (png_uint_32 y = 0; y < st.height; ++y) {
    rows[y] = rgb8 ? out.pixels.data() + size_t{y} * st.rowbytes : raw.data() + y * st.rowbytes;
  }
  st.rows = rows.data();
  if (!PngReadRows(&st)) {
    if (st.stopped) return absl::CancelledError("PNG: stopped");
    return absl::InvalidArgumentError(absl::StrCat("PNG: corrupt or truncated: ", st.error));
  }
  if (rgb8) return PaintColourKeyWhite(st, std::move(out));
  const bool composite = options.alpha == AlphaMode::kCompositeOnWhite || st.colour_key;
  for (png_uint_32 y = 0; y < st.height; ++y) {
    const unsigned char* in = rows[y];
    uint8_t* o = out.pixels.data() + static_cast<size_t>(y) * st.width * 3;
    for (png_uint_32 x = 0; x < st.width; ++x, o += 3) {
      uint8_t r, g, b;
      if (st.sample_bytes == 2) {  // 16-bit gray: PIL's I;16 -> RGB clips at 255
        unsigned v = (static_cast<unsigned>(in[2 * x]) << 8) | in[2 * x + 1];
        const bool keyed = options.alpha == AlphaMode::kCompositeOnWhite && static_cast<int>(v) == st.gray16_key;
        r = g = b = keyed ? 255 : static_cast<uint8_t>(v > 255 ? 255 : v);
      } else {
        const unsigned char* p = in + static_cast<size_t>(x) * st.channels;
        const bool gray = st.channels <= 2;
        r = p[0];
        g = gray ? p[0] : p[1];
        b = gray ? p[0] : p[2];
        if (st.channels == 2 || st.channels == 4) {
          const uint8_t a = p[st.channels - 1];
          if (composite) {
            r = CompositeOnWhite(r, a);
            g = CompositeOnWhite(g, a);
            b = CompositeOnWhite(b, a);
          }
        }
      }
      o[0] = r;
      o[1] = g;
      o[2] = b;
    }
  }
  return PaintColourKeyWhite(st, std::move(out));
}

// ---------------------------------------------------------------- JPEG

struct JpegState {
  jpeg_decompress_struct cinfo;
  jpeg_error_mgr err;
  jpeg_progress_mgr progress;
  std::jmp_buf jump;
  char error[JMSG_LENGTH_MAX + 64] = {0};
  int max_scans = 0;
  bool created = false;
  unsigned char* out = nullptr;  // out_width * out_height * out_components
  JDIMENSION out_width = 0;      // what `out` is sized for
  JDIMENSION out_height = 0;
  int out_components = 0;
  const std::function<bool()>* stop = nullptr;  // DecodeHint::stop; null = never
  unsigned progress_calls = 0;
  bool stopped = false;  // stop answered true
};

void JpegOnError(j_common_ptr cinfo) {
  auto* st = reinterpret_cast<JpegState*>(cinfo->client_data);
  (*cinfo->err->format_message)(cinfo, st->error);
  std::longjmp(st->jump, 1);
}

void JpegOnMessage(j_common_ptr cinfo, int msg_level) {
  // A premature end of data is a warning to libjpeg (it pads with gray); PIL refuses the image as
  // truncated, so do we. Other corrupt-data warnings are ignored, as PIL ignores them.
  if (msg_level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) JpegOnError(cinfo);
}

void JpegOnProgress(j_common_ptr cinfo) {
  auto* st = reinterpret_cast<JpegState*>(cinfo->client_data);
  auto* d = reinterpret_cast<j_decompress_ptr>(cinfo);
  if (d->input_scan_number > st->max_scans) {
    std::snprintf(st->error, sizeof(st->error), "more than %d progressive scans", st->max_scans);
    std::longjmp(st->jump, 1);
  }
  // Called per row group (and per iMCU row of every progressive scan): ask every 16th time.
  if (st->stop != nullptr && ++st->progress_calls % 16 == 0 && (*st->stop)()) {
    st->stopped = true;
    std::snprintf(st->error, sizeof(st->error), "stopped");
    std::longjmp(st->jump, 1);
  }
}

bool JpegReadHeader(JpegState* st, const unsigned char* data, size_t size) {
  if (setjmp(st->jump)) return false;
  jpeg_create_decompress(&st->cinfo);
  st->created = true;
  jpeg_mem_src(&st->cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&st->cinfo, TRUE);
  return true;
}

// The output size for the scale and color space set on cinfo (libjpeg's own arithmetic).
bool JpegOutputSize(JpegState* st) {
  if (setjmp(st->jump)) return false;
  jpeg_calc_output_dimensions(&st->cinfo);
  return true;
}

bool JpegReadPixels(JpegState* st) {
  if (setjmp(st->jump)) return false;
  jpeg_start_decompress(&st->cinfo);
  // Never write past what `out` holds, whatever libjpeg chose.
  if (st->cinfo.output_width != st->out_width || st->cinfo.output_height != st->out_height ||
      st->cinfo.output_components != st->out_components) {
    std::snprintf(st->error, sizeof(st->error), "libjpeg's output layout is not the one asked for");
    return false;
  }
  const size_t stride = static_cast<size_t>(st->cinfo.output_width) * st->cinfo.output_components;
  while (st->cinfo.output_scanline < st->cinfo.output_height) {
    JSAMPROW row = st->out + st->cinfo.output_scanline * stride;
    jpeg_read_scanlines(&st->cinfo, &row, 1);
  }
  return true;
}

struct JpegCleanup {
  JpegState* st;
  ~JpegCleanup() {
    if (st->created) jpeg_destroy_decompress(&st->cinfo);
  }
};

// Reads the header into st (a fresh state). Returns OK or Decode's refusal.
absl::Status JpegHeader(JpegState* st, absl::string_view bytes, const DecodeOptions& options) {
  st->cinfo.err = jpeg_std_error(&st->err);
  st->err.error_exit = JpegOnError;
  st->err.emit_message = JpegOnMessage;
  st->cinfo.client_data = st;
  st->max_scans = options.max_jpeg_scans;
  if (!JpegReadHeader(st, reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size())) {
    return absl::InvalidArgumentError(absl::StrCat("JPEG: bad header: ", st->error));
  }
  const jpeg_decompress_struct& c = st->cinfo;
  if (c.image_width == 0 || c.image_height == 0) {
    return absl::InvalidArgumentError(absl::StrFormat("JPEG: zero-size image (%dx%d)", c.image_width, c.image_height));
  }
  if (static_cast<uint64_t>(c.image_width) * c.image_height > static_cast<uint64_t>(options.max_pixels)) {
    return TooManyPixels("JPEG", c.image_width, c.image_height, options.max_pixels);
  }
  return absl::OkStatus();
}

absl::StatusOr<RgbImage> DecodeJpeg(absl::string_view bytes, const DecodeOptions& options, const DecodeHint& hint) {
  auto st = std::make_unique<JpegState>();  // big (jmp_buf, libjpeg structs): off the stack
  JpegCleanup cleanup{st.get()};
  if (absl::Status header = JpegHeader(st.get(), bytes, options); !header.ok()) return header;
  jpeg_decompress_struct& c = st->cinfo;
  bool cmyk = false;
  switch (c.jpeg_color_space) {
    case JCS_GRAYSCALE:
      c.out_color_space = JCS_GRAYSCALE;
      break;
    case JCS_YCbCr:
    case JCS_RGB:
      c.out_color_space = JCS_RGB;
      break;
    case JCS_CMYK:
    case JCS_YCCK:
      c.out_color_space = JCS_CMYK;
      cmyk = true;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrFormat("JPEG: unsupported color space %d with %d components",
                                                        static_cast<int>(c.jpeg_color_space), c.num_components));
  }
  // PIL's decoder settings: accurate integer IDCT and fancy upsampling (libjpeg's defaults).
  c.dct_method = JDCT_ISLOW;
  c.do_fancy_upsampling = TRUE;
  st->progress.progress_monitor = JpegOnProgress;
  c.progress = &st->progress;
  st->stop = hint.stop ? &hint.stop : nullptr;
  c.scale_num =
      static_cast<unsigned>(JpegScaleEighths(static_cast<int>(c.image_width), static_cast<int>(c.image_height), hint));
  c.scale_denom = 8;
  if (!JpegOutputSize(st.get())) return absl::InvalidArgumentError(absl::StrCat("JPEG: ", st->error));

  const int comps = cmyk ? 4 : (c.out_color_space == JCS_GRAYSCALE ? 1 : 3);
  st->out_width = c.output_width;
  st->out_height = c.output_height;
  RgbImage out;
  out.width = static_cast<int>(c.output_width);
  out.height = static_cast<int>(c.output_height);
  const size_t n = static_cast<size_t>(out.width) * out.height;
  out.pixels.resize(n * 3);
  // RGB (a photo's or a screenshot's usual form) is decoded straight into the result: no second
  // copy of the image.
  std::vector<unsigned char> raw(comps == 3 ? 0 : n * comps);
  st->out = comps == 3 ? out.pixels.data() : raw.data();
  st->out_components = comps;
  if (!JpegReadPixels(st.get())) {
    if (st->stopped) return absl::CancelledError("JPEG: stopped");
    return absl::InvalidArgumentError(absl::StrCat("JPEG: corrupt or truncated: ", st->error));
  }
  if (comps == 3) return out;
  for (size_t i = 0; i < n; ++i) {
    uint8_t* o = &out.pixels[i * 3];
    if (comps == 1) {
      o[0] = o[1] = o[2] = raw[i];
    } else {
      // PIL reads every CMYK JPEG as Adobe-inverted ("CMYK;I"), then converts with cmyk2rgb.
      const unsigned char* p = &raw[i * 4];
      const int nk = p[3];  // 255 - (255 - stored k)
      o[0] = CmykChannel(255 - p[0], nk);
      o[1] = CmykChannel(255 - p[1], nk);
      o[2] = CmykChannel(255 - p[2], nk);
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<ImageFormat> SniffImageFormat(absl::string_view bytes) {
  if (bytes.empty()) return absl::InvalidArgumentError("image is empty (0 bytes)");
  if (bytes.size() >= 8 && std::memcmp(bytes.data(), kPngSignature, 8) == 0) return ImageFormat::kPng;
  if (bytes.size() >= 3 && static_cast<unsigned char>(bytes[0]) == 0xFF &&
      static_cast<unsigned char>(bytes[1]) == 0xD8 && static_cast<unsigned char>(bytes[2]) == 0xFF) {
    return ImageFormat::kJpeg;
  }
  std::string head;
  for (size_t i = 0; i < bytes.size() && i < 8; ++i) {
    absl::StrAppend(&head, i ? " " : "", absl::Hex(static_cast<unsigned char>(bytes[i]), absl::kZeroPad2));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("not a PNG or JPEG image (", bytes.size(), " bytes starting ", head, ")"));
}

absl::StatusOr<ImageDecoder> ImageDecoder::Create(const DecodeOptions& options) {
  if (options.max_pixels <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_pixels must be > 0, got ", options.max_pixels));
  }
  if (options.max_jpeg_scans <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_jpeg_scans must be > 0, got ", options.max_jpeg_scans));
  }
  if (options.alpha != AlphaMode::kCompositeOnWhite && options.alpha != AlphaMode::kDrop) {
    return absl::InvalidArgumentError("alpha: unknown AlphaMode");
  }
  return ImageDecoder(options);
}

absl::StatusOr<RgbImage> ImageDecoder::Decode(absl::string_view bytes, const DecodeHint& hint) const {
  absl::StatusOr<ImageFormat> format = SniffImageFormat(bytes);
  if (!format.ok()) return format.status();
  return *format == ImageFormat::kPng ? DecodePng(bytes, options_, hint) : DecodeJpeg(bytes, options_, hint);
}

absl::StatusOr<ImageHeader> ImageDecoder::ReadHeader(absl::string_view bytes) const {
  absl::StatusOr<ImageFormat> format = SniffImageFormat(bytes);
  if (!format.ok()) return format.status();
  ImageHeader header;
  header.format = *format;
  if (*format == ImageFormat::kPng) {
    PngState st;
    PngCleanup cleanup{&st};
    if (absl::Status s = PngHeader(&st, bytes, options_); !s.ok()) return s;
    header.width = static_cast<int>(st.width);
    header.height = static_cast<int>(st.height);
    return header;
  }
  auto st = std::make_unique<JpegState>();
  JpegCleanup cleanup{st.get()};
  if (absl::Status s = JpegHeader(st.get(), bytes, options_); !s.ok()) return s;
  header.width = static_cast<int>(st->cinfo.image_width);
  header.height = static_cast<int>(st->cinfo.image_height);
  return header;
}

int JpegScaleEighths(int width, int height, const DecodeHint& hint) {
  // At most 2x the target: decoded in full, as PIL does (the fixtures' parity holds there).
  if (hint.min_width <= 0 || hint.min_height <= 0 || int64_t{width} <= 2 * int64_t{hint.min_width} ||
      int64_t{height} <= 2 * int64_t{hint.min_height}) {
    return 8;
  }
  // libjpeg's output side is ceil(side * M / 8) (jdiv_round_up).
  auto scaled = [](int side, int m) { return (int64_t{side} * m + 7) / 8; };
  for (int m = 1; m < 8; ++m) {
    if (scaled(width, m) >= hint.min_width && scaled(height, m) >= hint.min_height) return m;
  }
  return 8;
}

}  // namespace glmserve::vision
