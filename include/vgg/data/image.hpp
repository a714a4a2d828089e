#pragma once
// An RGB image in memory as the networks take it: float, channel-planar (C x H x W, PyTorch's
// layout), values in [0, 1] (torchvision's ToTensor scaling). Decoding files into it is
// <vgg/data/image_file.hpp> (libpng, libjpeg); preprocessing it is <vgg/data/imagenet_preprocess.hpp>.
// This header needs no library, so preprocessing works without the decoders.

#include <cstddef>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace vgg::data {

/// Thrown for every problem with an image: an undecodable or truncated file, a refused size or
/// colour space, a bad preprocessing request. The message names the file (when there is one),
/// what was expected and what was found.
class ImageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Three planes (R, G, B) of height x width floats, plane after plane, each row-major.
struct Image {
  static constexpr int channels = 3;
  int height = 0;
  int width = 0;
  std::vector<float> pixels;  // channels * height * width values

  /// requires: height, width >= 0 (ImageError otherwise).  ensures: a zero-filled image.
  static Image zeros(int height, int width) {
    if (height < 0 || width < 0)
      throw ImageError("vgg::data::Image: height and width must not be negative, found " + std::to_string(height) +
                       " x " + std::to_string(width));
    Image image;
    image.height = height;
    image.width = width;
    image.pixels.assign(std::size_t(channels) * std::size_t(height) * std::size_t(width), 0.0f);
    return image;
  }

  std::size_t plane_size() const { return std::size_t(height) * std::size_t(width); }
  std::span<float> plane(int c) { return {pixels.data() + std::size_t(c) * plane_size(), plane_size()}; }
  std::span<const float> plane(int c) const { return {pixels.data() + std::size_t(c) * plane_size(), plane_size()}; }
  /// requires: 0 <= c < 3, 0 <= y < height, 0 <= x < width (unchecked: inner loops use it).
  float& at(int c, int y, int x) { return pixels[(std::size_t(c) * std::size_t(height) + y) * std::size_t(width) + x]; }
  float at(int c, int y, int x) const {
    return pixels[(std::size_t(c) * std::size_t(height) + y) * std::size_t(width) + x];
  }
};

}  // namespace vgg::data
