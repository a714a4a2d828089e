#pragma once
// Decoding PNG and JPEG files into vgg::data::Image (float RGB planes in [0, 1]) with libpng and
// libjpeg-turbo (CMake target vgg::image; Debian's libpng-dev and libjpeg62-turbo-dev).
//
// What is accepted, and how it becomes RGB:
//   PNG: every colour type and bit depth. Grey is replicated to R, G and B; palettes are looked
//        up; 1/2/4-bit samples are expanded; an alpha channel or tRNS transparency is dropped
//        (not composited, as PIL's convert("RGB") and torchvision's ImageReadMode.RGB do);
//        16-bit samples keep their precision (value / 65535); interlaced files are de-interlaced.
//        Gamma and colour profiles are ignored (as PIL and torchvision ignore them).
//   JPEG: baseline, progressive and arithmetic-coded 8-bit JPEGs in grey, YCbCr or RGB. CMYK and
//        YCCK JPEGs are refused (a CMYK-to-RGB conversion needs the file's colour profile to be
//        right; converting them with an image tool first gives a predictable result).
// 8-bit values become value / 255 (ToTensor's scaling).
//
// Files are untrusted: the size in the header is checked against a pixel cap (kMaxImagePixels
// by default) before anything is allocated, a PNG must be long enough to hold its declared
// pixels at deflate's best ratio, a JPEG is limited in its number of progressive scans, and
// truncated or corrupt data is an error (libjpeg would otherwise fill the rest with grey and
// merely warn). libpng and libjpeg report errors by longjmp; every call that can jump runs in
// a small function whose locals are trivially destructible, so no C++ destructor is skipped, and
// the decoder state is freed by RAII owners outside those functions.

#include <png.h>

// jpeglib.h uses FILE and size_t without including their headers.
#include <cstddef>
#include <cstdio>
#include <jpeglib.h>
#include <jerror.h>

#include <algorithm>
#include <cerrno>
#include <csetjmp>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include <unistd.h>

#include "vgg/data/image.hpp"
#include "vgg/io/posix_file.hpp"

namespace vgg::data {

/// The default cap on width * height: 2^25 = 33,554,432 pixels (for example 8192 x 4096, or a
/// 24-megapixel photo). The decoded image then takes at most 384 MiB of floats plus a 96 MiB
/// (16-bit PNG: 192 MiB) decoding buffer.
inline constexpr std::uint64_t kMaxImagePixels = std::uint64_t{1} << 25;
/// The largest image file read_image accepts: 1 GiB (far more than any image under the pixel cap
/// needs).
inline constexpr std::uint64_t kMaxImageFileBytes = std::uint64_t{1} << 30;
/// Progressive JPEGs rarely have more than a dozen scans; thousands of tiny scans make decoding
/// slow without any benefit (libjpeg-turbo's documentation suggests such a limit).
inline constexpr int kMaxJpegScans = 500;

namespace detail {

inline std::string image_label(const std::string& name) { return "image '" + name + "'"; }

inline std::string hex_bytes(std::span<const std::uint8_t> bytes) {
  static const char digits[] = "0123456789abcdef";
  std::string text;
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    if (i > 0) text += ' ';
    text += digits[bytes[i] >> 4];
    text += digits[bytes[i] & 15];
  }
  return text;
}

inline void check_pixel_count(const std::string& name, const char* format, std::uint64_t width,
                              std::uint64_t height, std::uint64_t max_pixels) {
  if (width == 0 || height == 0)
    throw ImageError(image_label(name) + ": the " + format + " header declares " + std::to_string(width) + " x " +
                     std::to_string(height) + " pixels (width x height); expected both to be at least 1");
  if (width * height > max_pixels)
    throw ImageError(image_label(name) + ": the " + format + " header declares " + std::to_string(width) + " x " +
                     std::to_string(height) + " = " + std::to_string(width * height) +
                     " pixels (width x height); expected at most " + std::to_string(max_pixels) + " pixels");
}

// ---- PNG ----

struct PngState {
  std::span<const std::uint8_t> data;
  std::size_t position = 0;
  char error[256] = {};
};

inline void png_on_error(png_structp png, png_const_charp message) {
  auto* state = static_cast<PngState*>(png_get_error_ptr(png));
  std::snprintf(state->error, sizeof state->error, "%s", message);
  png_longjmp(png, 1);
}

// Warnings concern ancillary chunks (a bad CRC in a text chunk, an odd gamma): the pixels are
// fine, so decoding goes on, as PIL and torchvision do.
inline void png_on_warning(png_structp, png_const_charp) {}

inline void png_read_from_memory(png_structp png, png_bytep out, std::size_t count) {
  auto* state = static_cast<PngState*>(png_get_io_ptr(png));
  if (count > state->data.size() - state->position) png_error(png, "the data ends early (truncated file)");
  std::memcpy(out, state->data.data() + state->position, count);
  state->position += count;
}

// Owns libpng's read and info structs.
struct PngReader {
  png_structp png = nullptr;
  png_infop info = nullptr;
  PngReader() = default;
  PngReader(const PngReader&) = delete;
  PngReader& operator=(const PngReader&) = delete;
  ~PngReader() {
    if (png != nullptr) png_destroy_read_struct(&png, info != nullptr ? &info : nullptr, nullptr);
  }
};

struct PngLayout {
  png_uint_32 width = 0, height = 0;
  int bit_depth = 0;        // after the transforms: 8 or 16
  int channels = 0;         // after the transforms: 3
  std::size_t row_bytes = 0;
};

// Reads the header and sets up the transforms to 8- or 16-bit RGB. false: libpng failed, with the
// reason in the state's error. (The only locals are trivially destructible: see the file comment.
// Compilers never inline a function that calls setjmp; noinline says so where it matters.)
[[gnu::noinline]] inline bool png_read_header(PngReader& reader, PngLayout& layout) {
  if (setjmp(png_jmpbuf(reader.png))) return false;
  png_read_info(reader.png, reader.info);
  const int color_type = png_get_color_type(reader.png, reader.info);
  const int bit_depth = png_get_bit_depth(reader.png, reader.info);
  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(reader.png);
  if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(reader.png);
  // Expanding a palette also turns tRNS transparency into an alpha channel: strip that too.
  if ((color_type & PNG_COLOR_MASK_ALPHA) != 0 || png_get_valid(reader.png, reader.info, PNG_INFO_tRNS) != 0)
    png_set_strip_alpha(reader.png);
  if (color_type == PNG_COLOR_TYPE_GRAY || color_type == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(reader.png);
  png_set_interlace_handling(reader.png);
  png_read_update_info(reader.png, reader.info);
  layout.width = png_get_image_width(reader.png, reader.info);
  layout.height = png_get_image_height(reader.png, reader.info);
  layout.bit_depth = png_get_bit_depth(reader.png, reader.info);
  layout.channels = png_get_channels(reader.png, reader.info);
  layout.row_bytes = png_get_rowbytes(reader.png, reader.info);
  return true;
}

[[gnu::noinline]] inline bool png_read_pixels(PngReader& reader, png_bytepp rows) {
  if (setjmp(png_jmpbuf(reader.png))) return false;
  png_read_image(reader.png, rows);
  png_read_end(reader.png, nullptr);
  return true;
}

inline std::uint32_t big_endian32(const std::uint8_t* p) {
  return (std::uint32_t(p[0]) << 24) | (std::uint32_t(p[1]) << 16) | (std::uint32_t(p[2]) << 8) | std::uint32_t(p[3]);
}

inline Image decode_png(std::span<const std::uint8_t> bytes, const std::string& name, std::uint64_t max_pixels) {
  // The IHDR chunk comes first (signature, length, "IHDR", width, height): reading the size here
  // gives our own messages for zero and huge sizes before libpng allocates anything.
  if (bytes.size() < 33 || std::memcmp(bytes.data() + 12, "IHDR", 4) != 0)
    throw ImageError(image_label(name) + ": the PNG file is " + std::to_string(bytes.size()) +
                     " bytes long and has no IHDR chunk after its signature; expected at least 33 bytes "
                     "(signature and IHDR; a truncated file?)");
  const std::uint64_t width = big_endian32(bytes.data() + 16), height = big_endian32(bytes.data() + 20);
  check_pixel_count(name, "PNG", width, height, max_pixels);

  PngState state;
  state.data = bytes;
  PngReader reader;
  reader.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &state, png_on_error, png_on_warning);
  if (reader.png != nullptr) reader.info = png_create_info_struct(reader.png);
  if (reader.png == nullptr || reader.info == nullptr)
    throw ImageError(image_label(name) + ": libpng could not allocate its decoder (out of memory)");
  png_set_read_fn(reader.png, &state, png_read_from_memory);
  // libpng's own limits must not refuse what ours allow; ours were checked above.
  png_set_user_limits(reader.png, 0x7fffffff, 0x7fffffff);
  PngLayout layout;
  if (!png_read_header(reader, layout))
    throw ImageError(image_label(name) + ": the PNG header is corrupt or truncated (libpng: " + state.error + ")");
  if (layout.channels != 3 || (layout.bit_depth != 8 && layout.bit_depth != 16))
    throw ImageError(image_label(name) + ": libpng produced " + std::to_string(layout.channels) + " channels of " +
                     std::to_string(layout.bit_depth) + " bits; expected 3 channels of 8 or 16 bits");
  // Deflate never compresses better than 1032:1, so a file shorter than that share of the
  // declared pixels is truncated or lying; refusing it avoids allocating for it.
  const std::uint64_t raw_bytes = std::uint64_t(layout.row_bytes) * layout.height;
  if (std::uint64_t(bytes.size()) * 1032 < raw_bytes)
    throw ImageError(image_label(name) + ": the PNG file is " + std::to_string(bytes.size()) + " bytes long, too short for " +
                     std::to_string(layout.width) + " x " + std::to_string(layout.height) +
                     " pixels even at deflate's best ratio; expected at least " + std::to_string(raw_bytes / 1032) +
                     " bytes (a truncated file?)");

  std::vector<std::uint8_t> decoded(raw_bytes);
  std::vector<png_bytep> rows(layout.height);
  for (png_uint_32 y = 0; y < layout.height; ++y) rows[y] = decoded.data() + std::size_t(y) * layout.row_bytes;
  if (!png_read_pixels(reader, rows.data()))
    throw ImageError(image_label(name) + ": the PNG pixel data is corrupt or truncated (libpng: " + state.error + ")");

  Image image = Image::zeros(int(layout.height), int(layout.width));
  const std::size_t pixels = image.plane_size();
  if (layout.bit_depth == 8) {
    for (std::size_t i = 0; i < pixels; ++i)
      for (int c = 0; c < 3; ++c) image.pixels[std::size_t(c) * pixels + i] = float(decoded[3 * i + std::size_t(c)]) / 255.0f;
  } else {
    for (std::size_t i = 0; i < pixels; ++i)
      for (int c = 0; c < 3; ++c) {
        const std::uint8_t* sample = decoded.data() + 6 * i + 2 * std::size_t(c);  // big-endian, as PNG stores it
        image.pixels[std::size_t(c) * pixels + i] = float((unsigned(sample[0]) << 8) | sample[1]) / 65535.0f;
      }
  }
  return image;
}

// ---- JPEG ----

struct JpegErrors {
  jpeg_error_mgr manager;  // first, so that libjpeg's pointer to it is a pointer to this struct
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX + 64] = {};
  int code = 0;
};

inline void jpeg_on_error(j_common_ptr cinfo) {
  auto* errors = reinterpret_cast<JpegErrors*>(cinfo->err);
  errors->code = errors->manager.msg_code;
  (*cinfo->err->format_message)(cinfo, errors->message);
  std::longjmp(errors->jump, 1);
}

// libjpeg only warns about corrupt or truncated data (and fills missing rows with grey); such an
// image would be classified as if it were fine, so every warning is an error here.
inline void jpeg_on_message(j_common_ptr cinfo, int level) {
  if (level < 0) jpeg_on_error(cinfo);
}

inline void jpeg_on_progress(j_common_ptr cinfo) {
  if (!cinfo->is_decompressor) return;
  const auto* decompress = reinterpret_cast<j_decompress_ptr>(cinfo);
  if (decompress->input_scan_number > kMaxJpegScans) {
    auto* errors = reinterpret_cast<JpegErrors*>(cinfo->err);
    errors->code = -1;
    std::snprintf(errors->message, sizeof errors->message, "more than %d progressive scans; expected at most %d",
                  kMaxJpegScans, kMaxJpegScans);
    std::longjmp(errors->jump, 1);
  }
}

// Owns libjpeg's decompressor.
struct JpegReader {
  jpeg_decompress_struct cinfo{};
  JpegErrors errors;
  jpeg_progress_mgr progress{};
  bool created = false;
  JpegReader() = default;
  JpegReader(const JpegReader&) = delete;
  JpegReader& operator=(const JpegReader&) = delete;
  ~JpegReader() {
    if (created) jpeg_destroy_decompress(&cinfo);
  }
};

// false: libjpeg failed, with the reason in reader.errors. (Trivially destructible locals only.)
[[gnu::noinline]] inline bool jpeg_read_header_from(JpegReader& reader, std::span<const std::uint8_t> bytes) {
  reader.cinfo.err = jpeg_std_error(&reader.errors.manager);
  reader.errors.manager.error_exit = jpeg_on_error;
  reader.errors.manager.emit_message = jpeg_on_message;
  if (setjmp(reader.errors.jump)) return false;
  jpeg_create_decompress(&reader.cinfo);
  reader.created = true;
  reader.progress.progress_monitor = jpeg_on_progress;
  reader.cinfo.progress = &reader.progress;
  jpeg_mem_src(&reader.cinfo, bytes.data(), static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&reader.cinfo, TRUE);
  return true;
}

[[gnu::noinline]] inline bool jpeg_read_pixels(JpegReader& reader, std::uint8_t* out, std::size_t row_bytes) {
  if (setjmp(reader.errors.jump)) return false;
  reader.cinfo.out_color_space = JCS_RGB;
  jpeg_start_decompress(&reader.cinfo);
  // The buffer was sized from the header; libjpeg must deliver exactly that (no scaling).
  if (reader.cinfo.output_components != 3 || reader.cinfo.output_width != reader.cinfo.image_width ||
      reader.cinfo.output_height != reader.cinfo.image_height) {
    std::snprintf(reader.errors.message, sizeof reader.errors.message,
                  "libjpeg would deliver %u x %u pixels of %d components; expected %u x %u of 3 (RGB)",
                  reader.cinfo.output_width, reader.cinfo.output_height, reader.cinfo.output_components,
                  reader.cinfo.image_width, reader.cinfo.image_height);
    return false;
  }
  while (reader.cinfo.output_scanline < reader.cinfo.output_height) {
    JSAMPROW row = out + std::size_t(reader.cinfo.output_scanline) * row_bytes;
    jpeg_read_scanlines(&reader.cinfo, &row, 1);
  }
  jpeg_finish_decompress(&reader.cinfo);
  return true;
}

inline const char* jpeg_color_space_name(J_COLOR_SPACE space) {
  switch (space) {
    case JCS_GRAYSCALE: return "greyscale";
    case JCS_RGB: return "RGB";
    case JCS_YCbCr: return "YCbCr";
    case JCS_CMYK: return "CMYK";
    case JCS_YCCK: return "YCCK";
    default: return "an unknown colour space";
  }
}

inline Image decode_jpeg(std::span<const std::uint8_t> bytes, const std::string& name, std::uint64_t max_pixels) {
  JpegReader reader;
  if (!jpeg_read_header_from(reader, bytes)) {
    if (reader.errors.code == JERR_EMPTY_IMAGE)
      throw ImageError(image_label(name) + ": the JPEG header declares a width or height of 0; expected both to be "
                       "at least 1 (libjpeg: " + reader.errors.message + ")");
    throw ImageError(image_label(name) + ": the JPEG header is corrupt or truncated (libjpeg: " + reader.errors.message + ")");
  }
  const J_COLOR_SPACE space = reader.cinfo.jpeg_color_space;
  if (space == JCS_CMYK || space == JCS_YCCK)
    throw ImageError(image_label(name) + ": the JPEG is in " + jpeg_color_space_name(space) +
                     "; expected greyscale, YCbCr or RGB (convert CMYK images to RGB first, with their colour profile)");
  if (space != JCS_GRAYSCALE && space != JCS_RGB && space != JCS_YCbCr)
    throw ImageError(image_label(name) + ": the JPEG has " + std::to_string(reader.cinfo.num_components) +
                     " components in an unknown colour space; expected greyscale, YCbCr or RGB");
  check_pixel_count(name, "JPEG", reader.cinfo.image_width, reader.cinfo.image_height, max_pixels);
  const std::size_t row_bytes = 3 * std::size_t(reader.cinfo.image_width);
  std::vector<std::uint8_t> decoded(row_bytes * reader.cinfo.image_height);
  if (!jpeg_read_pixels(reader, decoded.data(), row_bytes))
    throw ImageError(image_label(name) + ": the JPEG data is corrupt or truncated (libjpeg: " + reader.errors.message +
                     ")");

  Image image = Image::zeros(int(reader.cinfo.output_height), int(reader.cinfo.output_width));
  const std::size_t pixels = image.plane_size();
  for (std::size_t i = 0; i < pixels; ++i)
    for (int c = 0; c < 3; ++c) image.pixels[std::size_t(c) * pixels + i] = float(decoded[3 * i + std::size_t(c)]) / 255.0f;
  return image;
}

}  // namespace detail

/// Decodes a PNG or JPEG file held in memory; the format is recognised by its first bytes, not
/// by a file name. `name` labels messages (a path, or any description).
/// requires: nothing (any bytes).  ensures: an RGB image of at least 1 x 1 and at most max_pixels
/// pixels, values in [0, 1]; otherwise throws ImageError naming `name`, the problem and what was
/// expected, and frees everything it allocated.
inline Image decode_image(std::span<const std::uint8_t> bytes, const std::string& name,
                          std::uint64_t max_pixels = kMaxImagePixels) {
  static constexpr std::uint8_t png_signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (bytes.empty())
    throw ImageError(detail::image_label(name) + ": the file is empty; expected a PNG or JPEG image");
  if (bytes.size() >= 8 && std::memcmp(bytes.data(), png_signature, 8) == 0)
    return detail::decode_png(bytes, name, max_pixels);
  if (bytes.size() >= 3 && bytes[0] == 0xff && bytes[1] == 0xd8 && bytes[2] == 0xff)
    return detail::decode_jpeg(bytes, name, max_pixels);
  throw ImageError(detail::image_label(name) + ": not a PNG or JPEG file: it starts with " +
                   detail::hex_bytes(bytes.first(std::min<std::size_t>(bytes.size(), 8))) +
                   "; expected 89 50 4e 47 0d 0a 1a 0a (PNG) or ff d8 ff (JPEG)");
}

/// Reads and decodes a PNG or JPEG file (see decode_image).
/// requires: nothing.  ensures: the image, or ImageError naming the path and the problem (missing,
/// a directory or FIFO, unreadable, larger than kMaxImageFileBytes, or undecodable).
inline Image read_image(const std::filesystem::path& path, std::uint64_t max_pixels = kMaxImagePixels) {
  io::detail::OpenedFile opened = io::detail::open_regular_file(path);
  if (!opened.problem.empty())
    throw ImageError(detail::image_label(path.string()) + " " + opened.problem + "; expected a PNG or JPEG file");
  if (opened.size > kMaxImageFileBytes)
    throw ImageError(detail::image_label(path.string()) + ": the file is " + std::to_string(opened.size) +
                     " bytes; expected at most " + std::to_string(kMaxImageFileBytes) + " bytes for an image");
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(opened.size));
  std::size_t filled = 0;
  while (filled < bytes.size()) {
    const ssize_t got = ::read(opened.fd.get(), bytes.data() + filled, bytes.size() - filled);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0)
      throw ImageError(detail::image_label(path.string()) + " cannot be read: " + std::strerror(errno));
    if (got == 0) break;  // the file shrank while being read: decode what is there (truncation is reported)
    filled += static_cast<std::size_t>(got);
  }
  bytes.resize(filled);
  return decode_image(bytes, path.string(), max_pixels);
}

}  // namespace vgg::data
