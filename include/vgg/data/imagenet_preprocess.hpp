#pragma once
// torchvision's ImageNet evaluation preprocessing (the transforms of VGG11_Weights.IMAGENET1K_V1
// and the other torchvision classification weights), on vgg::data::Image:
//   Resize(256, bilinear, antialias=True) -> CenterCrop(224) -> Normalize(ImageNet mean, std)
// applied to a float image in [0, 1], i.e. what
//   F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=True)
// followed by the crop and (x - mean) / std computes. Parity with torch 1.13 is tested against
// tests/data/imagenet_preprocess_reference.txt (tools/make_imagenet_reference.py); docs/DATA.md
// gives the measured error and how this differs from torchvision on uint8 images (which rounds
// the resized image to uint8).

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "vgg/data/image.hpp"

namespace vgg::data {

/// torchvision's output size for Resize(shorter) (an int size): the shorter side becomes
/// `shorter`, the longer one int(shorter * long / short) (truncated, as Python's int() does).
/// requires: height, width, shorter >= 1 (ImageError otherwise).  ensures: {height, width}.
inline std::pair<int, int> resized_shorter_side(int height, int width, int shorter) {
  if (height < 1 || width < 1 || shorter < 1)
    throw ImageError("vgg::data::resized_shorter_side: sizes must be at least 1, found a " + std::to_string(height) +
                     " x " + std::to_string(width) + " image and a shorter side of " + std::to_string(shorter));
  const bool portrait = width <= height;
  const double short_side = portrait ? width : height, long_side = portrait ? height : width;
  const double exact_long = double(shorter) * long_side / short_side;
  if (exact_long >= double(std::numeric_limits<int>::max()))
    throw ImageError("vgg::data::resized_shorter_side: a " + std::to_string(height) + " x " + std::to_string(width) +
                     " image with its shorter side resized to " + std::to_string(shorter) +
                     " has a longer side beyond the int range; expected a less extreme aspect ratio");
  const int new_long = static_cast<int>(exact_long);
  return portrait ? std::pair{new_long, shorter} : std::pair{shorter, new_long};
}

namespace detail {

// One output index's input range [first, first + weights.size()) and normalised weights, for
// torch's antialiased bilinear filter (aten/src/ATen/native/cpu/UpSampleKernel.cpp,
// _compute_indices_weights_aa, the same as PIL's): a triangle of half-width max(scale, 1) in input
// pixels, so downsampling averages every input pixel under the output pixel.
struct FilterTaps {
  std::vector<int> first;
  std::vector<int> count;
  std::vector<double> weights;  // count[o] weights for output o, starting at offsets[o]
  std::vector<std::size_t> offsets;
};

// Taps for outputs first_out .. first_out + count - 1 of an in -> out resize.
inline FilterTaps antialiased_bilinear_taps(int in, int out, int first_out, int count) {
  FilterTaps taps;
  const double scale = double(in) / double(out);
  const double support = scale >= 1.0 ? scale : 1.0;
  const double inverse = scale >= 1.0 ? 1.0 / scale : 1.0;
  for (int o = first_out; o < first_out + count; ++o) {
    const double center = scale * (o + 0.5);
    // Truncation toward zero, as torch's int64_t conversion does.
    const int first = std::max(static_cast<int>(center - support + 0.5), 0);
    const int last = std::min(static_cast<int>(center + support + 0.5), in);  // exclusive
    taps.first.push_back(first);
    taps.count.push_back(last - first);
    taps.offsets.push_back(taps.weights.size());
    double total = 0.0;
    for (int j = first; j < last; ++j) {
      const double w = std::max(0.0, 1.0 - std::abs((j - center + 0.5) * inverse));
      taps.weights.push_back(w);
      total += w;
    }
    if (total != 0.0)
      for (std::size_t k = taps.offsets.back(); k < taps.weights.size(); ++k) taps.weights[k] /= total;
  }
  return taps;
}

// torchvision's CenterCrop offset int(round(excess / 2.0)): Python's round takes halves to even.
inline int center_offset(int excess) {
  const int half = excess / 2;
  return (excess % 2 == 0 || half % 2 == 0) ? half : half + 1;
}

}  // namespace detail

/// The window of rows top .. top + window_height - 1 and columns left .. left + window_width - 1
/// of the antialiased bilinear resize of `image` to out_height x out_width (see resize_antialiased),
/// computed without the rest of the resized image.
/// requires: image non-empty, out sizes >= 1, the window non-empty and inside the output
/// (ImageError otherwise).  ensures: a window_height x window_width image.
inline Image resize_antialiased_window(const Image& image, int out_height, int out_width, int top, int left,
                                       int window_height, int window_width) {
  if (image.height < 1 || image.width < 1 || out_height < 1 || out_width < 1 || window_height < 1 ||
      window_width < 1 || top < 0 || left < 0 || top > out_height - window_height || left > out_width - window_width)
    throw ImageError("vgg::data::resize_antialiased_window: expected a non-empty image and a non-empty window inside "
                     "the output, found " + std::to_string(image.height) + " x " + std::to_string(image.width) +
                     " -> " + std::to_string(out_height) + " x " + std::to_string(out_width) + ", window " +
                     std::to_string(window_height) + " x " + std::to_string(window_width) + " at (" +
                     std::to_string(top) + ", " + std::to_string(left) + ")");
  const detail::FilterTaps columns = detail::antialiased_bilinear_taps(image.width, out_width, left, window_width);
  const detail::FilterTaps rows = detail::antialiased_bilinear_taps(image.height, out_height, top, window_height);
  // Only the input rows the window's vertical taps read (taps start in increasing order).
  const int first_row = rows.first.front();
  const int end_row = rows.first.back() + rows.count.back();
  // Horizontal pass first, then vertical, as torch does; in double, so that the only rounding is
  // the final one to float.
  std::vector<double> horizontal(std::size_t(std::max(end_row - first_row, 0)) * std::size_t(window_width));
  Image out = Image::zeros(window_height, window_width);
  for (int c = 0; c < Image::channels; ++c) {
    for (int y = first_row; y < end_row; ++y)
      for (int x = 0; x < window_width; ++x) {
        const std::size_t tap = std::size_t(x);
        const double* w = columns.weights.data() + columns.offsets[tap];
        double sum = 0.0;
        for (int k = 0; k < columns.count[tap]; ++k) sum += w[k] * image.at(c, y, columns.first[tap] + k);
        horizontal[std::size_t(y - first_row) * std::size_t(window_width) + tap] = sum;
      }
    for (int y = 0; y < window_height; ++y) {
      const std::size_t tap = std::size_t(y);
      const double* w = rows.weights.data() + rows.offsets[tap];
      for (int x = 0; x < window_width; ++x) {
        double sum = 0.0;
        for (int k = 0; k < rows.count[tap]; ++k)
          sum += w[k] * horizontal[std::size_t(rows.first[tap] - first_row + k) * std::size_t(window_width) + std::size_t(x)];
        out.at(c, y, x) = static_cast<float>(sum);
      }
    }
  }
  return out;
}

/// Antialiased bilinear resize, as F.interpolate(mode="bilinear", align_corners=False,
/// antialias=True) (and torchvision's Resize(antialias=True) on float tensors). Upsampling is
/// plain bilinear interpolation; downsampling averages with a triangle filter as wide as the scale.
/// requires: image non-empty, out_height, out_width >= 1 (ImageError otherwise).
/// ensures: an out_height x out_width image; values stay within the input's range.
inline Image resize_antialiased(const Image& image, int out_height, int out_width) {
  return resize_antialiased_window(image, out_height, out_width, 0, 0, out_height, out_width);
}

/// torchvision's CenterCrop: offsets int(round((size - crop) / 2.0)) with Python's round (halves
/// to even), so a 341-wide image cropped to 224 starts at column 58.
/// requires: 1 <= crop_height <= image.height, 1 <= crop_width <= image.width (ImageError otherwise;
/// torchvision would pad).  ensures: the crop_height x crop_width centre.
inline Image center_crop(const Image& image, int crop_height, int crop_width) {
  if (crop_height < 1 || crop_width < 1 || crop_height > image.height || crop_width > image.width)
    throw ImageError("vgg::data::center_crop: a " + std::to_string(crop_height) + " x " + std::to_string(crop_width) +
                     " crop needs an image at least that large and at least 1 x 1, found " +
                     std::to_string(image.height) + " x " + std::to_string(image.width));
  const int top = detail::center_offset(image.height - crop_height);
  const int left = detail::center_offset(image.width - crop_width);
  Image out = Image::zeros(crop_height, crop_width);
  for (int c = 0; c < Image::channels; ++c)
    for (int y = 0; y < crop_height; ++y)
      for (int x = 0; x < crop_width; ++x) out.at(c, y, x) = image.at(c, top + y, left + x);
  return out;
}

/// torchvision's Normalize: (x - mean[c]) / std[c] per channel, in float as torch computes it.
/// requires: every std > 0 (ImageError otherwise).
inline void normalize(Image& image, const std::array<float, 3>& mean, const std::array<float, 3>& std_dev) {
  for (int c = 0; c < Image::channels; ++c) {
    if (!(std_dev[std::size_t(c)] > 0.0f))
      throw ImageError("vgg::data::normalize: every std must be positive, found " +
                       std::to_string(std_dev[std::size_t(c)]) + " for channel " + std::to_string(c));
    for (float& v : image.plane(c)) v = (v - mean[std::size_t(c)]) / std_dev[std::size_t(c)];
  }
}

/// torchvision's ImageClassification(crop_size=224, resize_size=256): resize the shorter side to
/// resize_size (antialiased bilinear), centre-crop crop_size x crop_size, normalise with ImageNet's
/// mean and std. The sizes can be changed (tests use small ones).
struct ImageNetPreprocess {
  int resize_size = 256;
  int crop_size = 224;
  std::array<float, 3> mean{0.485f, 0.456f, 0.406f};
  std::array<float, 3> std_dev{0.229f, 0.224f, 0.225f};

  /// requires: image non-empty; 1 <= crop_size <= resize_size (ImageError otherwise).
  /// ensures: 3 x crop_size x crop_size normalised values.
  Image operator()(const Image& image) const {
    if (crop_size < 1 || crop_size > resize_size)
      throw ImageError("vgg::data::ImageNetPreprocess: expected 1 <= crop_size <= resize_size, found crop_size " +
                       std::to_string(crop_size) + " and resize_size " + std::to_string(resize_size));
    const auto [height, width] = resized_shorter_side(image.height, image.width, resize_size);
    const int top = detail::center_offset(height - crop_size), left = detail::center_offset(width - crop_size);
    // Only the crop is computed: the same values as resizing everything and cropping, but the cost
    // and memory do not depend on how elongated the image is.
    Image out = resize_antialiased_window(image, height, width, top, left, crop_size, crop_size);
    normalize(out, mean, std_dev);
    return out;
  }
};

}  // namespace vgg::data
