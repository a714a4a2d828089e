// Fuzz target: the PNG and JPEG decoders (vgg::data::decode_image, libpng and libjpeg-turbo with
// our error handling around them), then the ImageNet preprocessing at a small size on whatever
// decodes. An ImageError is the expected way to refuse; a crash, a leak (a longjmp that skips a
// free), a sanitizer report or any other exception is a finding.
// The pixel cap is 2^20 here, not the library's 2^25, so that an input declaring a large image
// costs milliseconds, not seconds; the size checks themselves are the same code.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>

#include "fuzz_support.hpp"
#include "vgg/data/image_file.hpp"
#include "vgg/data/imagenet_preprocess.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  constexpr std::uint64_t max_pixels = std::uint64_t{1} << 20;
  vgg::data::Image image;
  try {
    image = vgg::data::decode_image(std::span<const std::uint8_t>(data, size), "fuzz-input", max_pixels);
  } catch (const vgg::data::ImageError&) {
    return 0;
  }
  VGG_FUZZ_CHECK(image.height >= 1 && image.width >= 1);
  VGG_FUZZ_CHECK(std::uint64_t(image.height) * std::uint64_t(image.width) <= max_pixels);
  VGG_FUZZ_CHECK(image.pixels.size() == 3 * image.plane_size());
  for (const float v : image.pixels) VGG_FUZZ_CHECK(v >= 0.0f && v <= 1.0f);
  // Whatever decodes can be preprocessed (only the crop is computed, so elongated images are cheap).
  const vgg::data::Image out = vgg::data::ImageNetPreprocess{.resize_size = 12, .crop_size = 10}(image);
  VGG_FUZZ_CHECK(out.height == 10 && out.width == 10);
  for (const float v : out.pixels) VGG_FUZZ_CHECK(std::isfinite(v));
  return 0;
}
