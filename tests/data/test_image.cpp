// PNG and JPEG decoding (vgg/data/image_file.hpp): every PNG colour type and bit depth, JPEG
// coding modes, and the refusals (empty, not an image, truncated, corrupt, zero or huge sizes,
// CMYK), each with a message that names the file. Images are written in memory by libpng and
// libjpeg (image_encoders.hpp).

#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>
#include <zlib.h>

#include "image_encoders.hpp"
#include "vgg/data/image_file.hpp"

using vgg::data::decode_image;
using vgg::data::Image;
using vgg::data::ImageError;

namespace {

using Rows = std::vector<std::vector<std::uint8_t>>;

// 8-bit RGB rows of a w x h pattern, and the same pattern as an interleaved sample buffer.
std::uint8_t pattern(int x, int y, int c) { return std::uint8_t((x * 37 + y * 11 + c * 80) % 256); }

Rows rgb_rows(int w, int h) {
  Rows rows(static_cast<std::size_t>(h));
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c) rows[std::size_t(y)].push_back(pattern(x, y, c));
  return rows;
}

std::string error_of(const std::vector<std::uint8_t>& bytes, const std::string& name = "test.img",
                     std::uint64_t max_pixels = vgg::data::kMaxImagePixels) {
  try {
    decode_image(bytes, name, max_pixels);
  } catch (const ImageError& e) {
    return e.what();
  }
  return "(no error)";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

void set_be32(std::vector<std::uint8_t>& bytes, std::size_t at, std::uint32_t v) {
  for (std::size_t i = 0; i < 4; ++i) bytes.at(at + i) = std::uint8_t(v >> (24 - 8 * i));
}

}  // namespace

TEST_CASE("8-bit RGB PNG: exact values / 255 in planar R, G, B order") {
  const int w = 5, h = 3;
  const Image image = decode_image(test_images::encode_png({.width = w, .height = h}, rgb_rows(w, h)), "rgb.png");
  REQUIRE(image.height == h);
  REQUIRE(image.width == w);
  REQUIRE(image.pixels.size() == std::size_t(3 * w * h));
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) CHECK(image.at(c, y, x) == float(pattern(x, y, c)) / 255.0f);
}

TEST_CASE("interlaced PNG decodes to the same pixels") {
  const int w = 9, h = 7;
  const Image plain = decode_image(test_images::encode_png({.width = w, .height = h}, rgb_rows(w, h)), "a.png");
  const Image interlaced =
      decode_image(test_images::encode_png({.width = w, .height = h, .interlaced = true}, rgb_rows(w, h)), "b.png");
  CHECK(interlaced.pixels == plain.pixels);
}

TEST_CASE("grey PNGs are replicated to R, G and B; 1-bit samples become 0 or 1") {
  Rows grey8 = {{0, 128, 255}};
  const Image g8 = decode_image(test_images::encode_png({.width = 3, .height = 1, .color_type = PNG_COLOR_TYPE_GRAY}, grey8), "g.png");
  for (int c = 0; c < 3; ++c) {
    CHECK(g8.at(c, 0, 0) == 0.0f);
    CHECK(g8.at(c, 0, 1) == 128.0f / 255.0f);
    CHECK(g8.at(c, 0, 2) == 1.0f);
  }
  Rows grey1 = {{0b10100000}};  // 3 pixels: 1, 0, 1
  const Image g1 = decode_image(
      test_images::encode_png({.width = 3, .height = 1, .color_type = PNG_COLOR_TYPE_GRAY, .bit_depth = 1}, grey1), "g1.png");
  CHECK(g1.at(1, 0, 0) == 1.0f);
  CHECK(g1.at(1, 0, 1) == 0.0f);
  CHECK(g1.at(2, 0, 2) == 1.0f);
}

TEST_CASE("palette PNG: colours looked up, tRNS transparency dropped") {
  // Index 0 is fully transparent: its colour is kept, not composited.
  const Image image = decode_image(test_images::encode_png({.width = 2, .height = 1, .color_type = PNG_COLOR_TYPE_PALETTE},
                                                           {{1, 0}}, {{10, 20, 30}, {200, 100, 50}}, {0, 255}),
                                   "pal.png");
  CHECK(image.at(0, 0, 0) == 200.0f / 255.0f);
  CHECK(image.at(2, 0, 0) == 50.0f / 255.0f);
  CHECK(image.at(0, 0, 1) == 10.0f / 255.0f);
  CHECK(image.at(1, 0, 1) == 20.0f / 255.0f);
}

TEST_CASE("alpha is dropped; 16-bit samples keep their precision") {
  Rows rgba = {{1, 2, 3, 0, 4, 5, 6, 255}};
  const Image a = decode_image(test_images::encode_png({.width = 2, .height = 1, .color_type = PNG_COLOR_TYPE_RGBA}, rgba), "a.png");
  CHECK(a.at(0, 0, 0) == 1.0f / 255.0f);
  CHECK(a.at(2, 0, 1) == 6.0f / 255.0f);

  Rows rgb16 = {{0x12, 0x34, 0x00, 0x01, 0xff, 0xff}};  // one pixel: 0x1234, 1, 65535
  const Image b = decode_image(test_images::encode_png({.width = 1, .height = 1, .bit_depth = 16}, rgb16), "16.png");
  CHECK(b.at(0, 0, 0) == float(0x1234) / 65535.0f);
  CHECK(b.at(1, 0, 0) == 1.0f / 65535.0f);
  CHECK(b.at(2, 0, 0) == 1.0f);

  Rows grey_alpha16 = {{0x80, 0x01, 0x00, 0x00}};
  const Image c = decode_image(
      test_images::encode_png({.width = 1, .height = 1, .color_type = PNG_COLOR_TYPE_GRAY_ALPHA, .bit_depth = 16}, grey_alpha16),
      "ga16.png");
  for (int ch = 0; ch < 3; ++ch) CHECK(c.at(ch, 0, 0) == float(0x8001) / 65535.0f);
}

TEST_CASE("JPEG: RGB close to its source, grey replicated, progressive equal to baseline") {
  const int w = 16, h = 16;
  std::vector<std::uint8_t> smooth;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c) smooth.push_back(std::uint8_t(40 + 6 * x + 3 * y + 20 * c));
  const Image baseline = decode_image(test_images::encode_jpeg({.width = w, .height = h, .quality = 100}, smooth), "a.jpg");
  REQUIRE(baseline.height == h);
  REQUIRE(baseline.width == w);
  double worst = 0;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c)
        worst = std::max(worst, std::abs(double(baseline.at(c, y, x)) * 255.0 - smooth[std::size_t((y * w + x) * 3 + c)]));
  CHECK(worst <= 6.0);  // JPEG is lossy; quality 100 on a smooth ramp stays within a few levels
  const Image progressive =
      decode_image(test_images::encode_jpeg({.width = w, .height = h, .progressive = true, .quality = 100}, smooth), "p.jpg");
  REQUIRE(progressive.pixels.size() == baseline.pixels.size());
  for (std::size_t i = 0; i < progressive.pixels.size(); ++i)
    CHECK(std::abs(progressive.pixels[i] - baseline.pixels[i]) <= 1.5f / 255.0f);

  std::vector<std::uint8_t> grey(std::size_t(w * h));
  for (std::size_t i = 0; i < grey.size(); ++i) grey[i] = std::uint8_t(i);
  const Image g = decode_image(test_images::encode_jpeg({.width = w, .height = h, .components = 1}, grey), "g.jpg");
  for (std::size_t i = 0; i < g.plane_size(); ++i) {
    CHECK(g.plane(0)[i] == g.plane(1)[i]);
    CHECK(g.plane(0)[i] == g.plane(2)[i]);
  }
}

TEST_CASE("CMYK JPEG is refused, naming the colour space") {
  const std::vector<std::uint8_t> cmyk(4 * 8 * 8, 100);
  const std::string e = error_of(test_images::encode_jpeg({.width = 8, .height = 8, .components = 4}, cmyk), "cmyk.jpg");
  CHECK(contains(e, "image 'cmyk.jpg'"));
  CHECK(contains(e, "CMYK"));
  CHECK(contains(e, "expected greyscale, YCbCr or RGB"));
}

TEST_CASE("empty and non-image files are refused with what was found") {
  CHECK(contains(error_of({}, "empty.png"), "image 'empty.png': the file is empty"));
  const std::string html = "<!DOCTYPE html>";
  const std::string e = error_of(std::vector<std::uint8_t>(html.begin(), html.end()), "page.png");
  CHECK(contains(e, "image 'page.png': not a PNG or JPEG file: it starts with 3c 21 44 4f"));
  CHECK(contains(e, "expected 89 50 4e 47"));
  CHECK(contains(error_of({0xff, 0xd8, 0xff}, "stub.jpg"), "image 'stub.jpg'"));
  CHECK(contains(error_of({0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'}, "sig.png"), "no IHDR chunk"));
}

TEST_CASE("truncated PNG and JPEG files are refused") {
  const auto png = test_images::encode_png({.width = 20, .height = 20}, rgb_rows(20, 20));
  for (std::size_t keep : {png.size() - 12, png.size() / 2, std::size_t(40)}) {
    const std::string e = error_of(std::vector<std::uint8_t>(png.begin(), png.begin() + long(keep)), "cut.png");
    INFO(keep << " bytes: " << e);
    CHECK(contains(e, "image 'cut.png'"));
    CHECK((contains(e, "truncated") || contains(e, "too short")));
  }
  std::vector<std::uint8_t> samples(3 * 32 * 32);
  for (std::size_t i = 0; i < samples.size(); ++i) samples[i] = std::uint8_t(i * 7);
  for (bool progressive : {false, true}) {
    const auto jpeg = test_images::encode_jpeg({.width = 32, .height = 32, .progressive = progressive}, samples);
    for (std::size_t keep : {jpeg.size() - 2, jpeg.size() / 2, std::size_t(20)}) {
      const std::string e = error_of(std::vector<std::uint8_t>(jpeg.begin(), jpeg.begin() + long(keep)), "cut.jpg");
      INFO(keep << " bytes, progressive " << progressive << ": " << e);
      CHECK(contains(e, "image 'cut.jpg'"));
      CHECK(e != "(no error)");
    }
  }
}

TEST_CASE("corrupt PNG data (a bad CRC in IDAT) is refused") {
  auto png = test_images::encode_png({.width = 8, .height = 8}, rgb_rows(8, 8));
  png[png.size() - 20] ^= 0x55;  // inside the IDAT chunk (IEND is the last 12 bytes)
  const std::string e = error_of(png, "crc.png");
  CHECK(contains(e, "image 'crc.png'"));
  CHECK(e != "(no error)");
}

TEST_CASE("zero and huge sizes are refused before anything is allocated") {
  auto png = test_images::encode_png({.width = 4, .height = 4}, rgb_rows(4, 4));
  auto zero = png;
  set_be32(zero, 16, 0);  // IHDR width
  CHECK(contains(error_of(zero, "zero.png"), "declares 0 x 4 pixels (width x height); expected both to be at least 1"));
  auto huge = png;
  set_be32(huge, 16, 100000);
  set_be32(huge, 20, 100000);
  CHECK(contains(error_of(huge, "huge.png"),
                 "declares 100000 x 100000 = 10000000000 pixels (width x height); expected at most 33554432 pixels"));
  auto lying = png;  // under the cap but far more pixels than the file can hold
  set_be32(lying, 16, 4000);
  set_be32(lying, 20, 4000);
  CHECK(contains(error_of(lying, "lying.png"), "IHDR: CRC error"));
  set_be32(lying, 29, std::uint32_t(crc32(0, lying.data() + 12, 17)));  // chunk type and data
  CHECK(contains(error_of(lying, "lying.png"), "is " + std::to_string(png.size()) +
                                                   " bytes long, too short for 4000 x 4000 pixels even at deflate's "
                                                   "best ratio; expected at least 46511 bytes"));

  std::vector<std::uint8_t> samples(3 * 16 * 8, 90);
  const auto jpeg = test_images::encode_jpeg({.width = 16, .height = 8}, samples);
  CHECK(contains(error_of(jpeg, "big.jpg", 100), "declares 16 x 8 = 128 pixels (width x height); expected at most 100"));
  // The SOF0 marker (ff c0) holds precision, then height and width (big-endian 16 bits).
  auto zero_jpeg = jpeg;
  for (std::size_t i = 0; i + 8 < zero_jpeg.size(); ++i)
    if (zero_jpeg[i] == 0xff && zero_jpeg[i + 1] == 0xc0) {
      zero_jpeg[i + 5] = 0;
      zero_jpeg[i + 6] = 0;
      break;
    }
  CHECK(contains(error_of(zero_jpeg, "zero.jpg"),
                 "image 'zero.jpg': the JPEG header declares a width or height of 0; expected both to be at least 1"));
}

TEST_CASE("read_image: files, and paths that are not image files") {
  const auto dir = std::filesystem::temp_directory_path() / ("vgg_test_image_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto png = test_images::encode_png({.width = 3, .height = 2}, rgb_rows(3, 2));
  {
    std::ofstream out(dir / "ok.png", std::ios::binary);
    out.write(reinterpret_cast<const char*>(png.data()), std::streamsize(png.size()));
  }
  const Image image = vgg::data::read_image(dir / "ok.png");
  CHECK(image.width == 3);
  CHECK(image.height == 2);
  auto error_reading = [](const std::filesystem::path& p) {
    try {
      vgg::data::read_image(p);
    } catch (const ImageError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  CHECK(contains(error_reading(dir / "missing.png"), "cannot be opened for reading: No such file or directory"));
  CHECK(contains(error_reading(dir), "is a directory, not a regular file"));
  std::filesystem::remove_all(dir);
}
