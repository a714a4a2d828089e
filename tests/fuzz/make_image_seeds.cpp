// Writes the seed corpus of fuzz_image (tests/fuzz/corpus/fuzz_image/): small PNGs of every colour
// type and bit depth and small JPEGs of each coding mode, made with libpng and libjpeg through the
// test encoders. Not built by CMake; run once when the seeds need to change:
//   g++ -std=c++20 -Itests/data tests/fuzz/make_image_seeds.cpp -lpng -ljpeg -o /tmp/make_image_seeds
//   /tmp/make_image_seeds tests/fuzz/corpus/fuzz_image
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "image_encoders.hpp"

namespace {

void save(const std::filesystem::path& dir, const std::string& name, const std::vector<std::uint8_t>& bytes) {
  std::ofstream out(dir / name, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  std::printf("%s: %zu bytes\n", name.c_str(), bytes.size());
}

// w x h rows of `bytes_per_pixel` bytes, a varied pattern so that filters and coefficients vary.
std::vector<std::vector<std::uint8_t>> rows(int w, int h, int bytes_per_pixel) {
  std::vector<std::vector<std::uint8_t>> out(static_cast<std::size_t>(h));
  for (int y = 0; y < h; ++y)
    for (int i = 0; i < w * bytes_per_pixel; ++i) out[std::size_t(y)].push_back(std::uint8_t((i * 29 + y * 53) % 256));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTPUT_DIR\n", argv[0]);
    return 2;
  }
  const std::filesystem::path dir = argv[1];
  std::filesystem::create_directories(dir);
  using test_images::encode_png;
  save(dir, "rgb8.png", encode_png({.width = 8, .height = 6}, rows(8, 6, 3)));
  save(dir, "rgb16-interlaced.png", encode_png({.width = 9, .height = 7, .bit_depth = 16, .interlaced = true}, rows(9, 7, 6)));
  save(dir, "rgba8.png", encode_png({.width = 6, .height = 4, .color_type = PNG_COLOR_TYPE_RGBA}, rows(6, 4, 4)));
  save(dir, "grey1.png", encode_png({.width = 16, .height = 3, .color_type = PNG_COLOR_TYPE_GRAY, .bit_depth = 1}, rows(2, 3, 1)));
  save(dir, "grey-alpha16.png",
       encode_png({.width = 5, .height = 5, .color_type = PNG_COLOR_TYPE_GRAY_ALPHA, .bit_depth = 16}, rows(5, 5, 4)));
  save(dir, "palette4-trns.png",
       encode_png({.width = 8, .height = 4, .color_type = PNG_COLOR_TYPE_PALETTE, .bit_depth = 4}, rows(4, 4, 1),
                  {{0, 0, 0}, {255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {9, 99, 199}, {1, 2, 3}, {4, 5, 6}, {7, 8, 9},
                   {10, 11, 12}, {13, 14, 15}, {16, 17, 18}, {19, 20, 21}, {22, 23, 24}, {25, 26, 27}, {28, 29, 30},
                   {31, 32, 33}},
                  {0, 128}));
  std::vector<std::uint8_t> rgb(16 * 8 * 3), grey(16 * 8), cmyk(8 * 8 * 4);
  for (std::size_t i = 0; i < rgb.size(); ++i) rgb[i] = std::uint8_t((i * 13) % 251);
  for (std::size_t i = 0; i < grey.size(); ++i) grey[i] = std::uint8_t(i * 2);
  for (std::size_t i = 0; i < cmyk.size(); ++i) cmyk[i] = std::uint8_t(i);
  using test_images::encode_jpeg;
  save(dir, "baseline.jpg", encode_jpeg({.width = 16, .height = 8, .quality = 80}, rgb));
  save(dir, "progressive.jpg", encode_jpeg({.width = 16, .height = 8, .progressive = true, .quality = 80}, rgb));
  save(dir, "grey.jpg", encode_jpeg({.width = 16, .height = 8, .components = 1, .quality = 80}, grey));
  save(dir, "cmyk.jpg", encode_jpeg({.width = 8, .height = 8, .components = 4, .quality = 80}, cmyk));
  return 0;
}
