// Test-only PNG and JPEG writers (libpng, libjpeg), so that the decoder tests can make every
// colour type, bit depth and coding mode in memory instead of committing binary fixtures.
#pragma once

#include <png.h>

#include <cstddef>
#include <cstdio>
#include <jpeglib.h>

#include <csetjmp>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <vector>

namespace test_images {

struct PngSpec {
  int width = 1, height = 1;
  int color_type = PNG_COLOR_TYPE_RGB;
  int bit_depth = 8;
  bool interlaced = false;
};

namespace detail {
inline void write_to_vector(png_structp png, png_bytep data, std::size_t n) {
  auto* out = static_cast<std::vector<std::uint8_t>*>(png_get_io_ptr(png));
  out->insert(out->end(), data, data + n);
}
inline void flush_nothing(png_structp) {}
inline bool write_png_rows(png_structp png, png_infop info, png_bytepp rows) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_write_info(png, info);
  png_write_image(png, rows);
  png_write_end(png, nullptr);
  return true;
}
}  // namespace detail

/// `rows`: height rows of packed samples as PNG stores them (16-bit big-endian); `palette` for
/// PNG_COLOR_TYPE_PALETTE, `alphas` its tRNS transparency.
inline std::vector<std::uint8_t> encode_png(const PngSpec& spec, const std::vector<std::vector<std::uint8_t>>& rows,
                                            const std::vector<png_color>& palette = {},
                                            const std::vector<std::uint8_t>& alphas = {}) {
  std::vector<std::uint8_t> out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  png_set_write_fn(png, &out, detail::write_to_vector, detail::flush_nothing);
  png_set_IHDR(png, info, png_uint_32(spec.width), png_uint_32(spec.height), spec.bit_depth, spec.color_type,
               spec.interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (!palette.empty()) png_set_PLTE(png, info, palette.data(), int(palette.size()));
  if (!alphas.empty()) png_set_tRNS(png, info, alphas.data(), int(alphas.size()), nullptr);
  std::vector<png_bytep> row_pointers;
  for (const auto& row : rows) row_pointers.push_back(const_cast<png_bytep>(row.data()));
  const bool ok = detail::write_png_rows(png, info, row_pointers.data());
  png_destroy_write_struct(&png, &info);
  if (!ok) throw std::runtime_error("test encode_png failed");
  return out;
}

struct JpegSpec {
  int width = 1, height = 1;
  int components = 3;  // 1 grey, 3 RGB, 4 CMYK
  bool progressive = false;
  int quality = 95;
};

/// `samples`: height x width x components bytes, interleaved.
inline std::vector<std::uint8_t> encode_jpeg(const JpegSpec& spec, const std::vector<std::uint8_t>& samples) {
  jpeg_compress_struct cinfo{};
  jpeg_error_mgr errors{};
  cinfo.err = jpeg_std_error(&errors);  // exits the process on error: acceptable in a test helper
  jpeg_create_compress(&cinfo);
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&cinfo, &buffer, &size);
  cinfo.image_width = JDIMENSION(spec.width);
  cinfo.image_height = JDIMENSION(spec.height);
  cinfo.input_components = spec.components;
  cinfo.in_color_space = spec.components == 1 ? JCS_GRAYSCALE : spec.components == 4 ? JCS_CMYK : JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, spec.quality, TRUE);
  if (spec.progressive) jpeg_simple_progression(&cinfo);
  jpeg_start_compress(&cinfo, TRUE);
  const std::size_t stride = std::size_t(spec.width) * std::size_t(spec.components);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = const_cast<JSAMPROW>(samples.data() + cinfo.next_scanline * stride);
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  std::vector<std::uint8_t> out(buffer, buffer + size);
  jpeg_destroy_compress(&cinfo);
  std::free(buffer);
  return out;
}

}  // namespace test_images
