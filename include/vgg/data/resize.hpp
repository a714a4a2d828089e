#pragma once
// Bilinear resizing of uint8 images to float in [0, 1].
//
// Formula (half-pixel centres, "align_corners=False", no antialiasing), the same as
// torch.nn.functional.interpolate(mode='bilinear', align_corners=False, antialias=False), per axis:
//   src = max((dst + 0.5) * in / out - 0.5, 0)
//   i0 = floor(src), i1 = min(i0 + 1, in - 1), w1 = src - i0, w0 = 1 - w1
//   out(y, x) = (wy0 * (wx0 * p(y0, x0) + wx1 * p(y0, x1)) + wy1 * (wx0 * p(y1, x0) + wx1 * p(y1, x1))) / 255
// The division by 255 is ToTensor's scaling. For downsampling this differs from PIL's resize
// (which antialiases); Fashion-MNIST is only ever upsampled here (28 -> 32 .. 224).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace vgg::data {

/// Precomputed per-axis interpolation tables for one (input size, output size) pair, so that
/// resizing an image allocates nothing. Immutable after construction, hence safe to share between
/// threads.
class Resizer {
 public:
  /// requires: all sizes > 0.  ensures: a resizer from in_rows x in_cols to out_rows x out_cols.
  Resizer(int in_rows, int in_cols, int out_rows, int out_cols)
      : in_rows_(in_rows), in_cols_(in_cols), out_rows_(out_rows), out_cols_(out_cols) {
    if (in_rows <= 0 || in_cols <= 0 || out_rows <= 0 || out_cols <= 0)
      throw std::invalid_argument("Resizer: sizes must be positive, got " + std::to_string(in_rows) + "x" +
                                  std::to_string(in_cols) + " -> " + std::to_string(out_rows) + "x" +
                                  std::to_string(out_cols));
    rows_ = make_axis(in_rows, out_rows);
    cols_ = make_axis(in_cols, out_cols);
  }

  /// requires: in_size, out_size > 0.  ensures: a square in_size^2 -> out_size^2 resizer.
  Resizer(int in_size, int out_size) : Resizer(in_size, in_size, out_size, out_size) {}

  int in_rows() const { return in_rows_; }
  int in_cols() const { return in_cols_; }
  int out_rows() const { return out_rows_; }
  int out_cols() const { return out_cols_; }
  std::size_t in_pixels() const { return std::size_t(in_rows_) * std::size_t(in_cols_); }
  std::size_t out_pixels() const { return std::size_t(out_rows_) * std::size_t(out_cols_); }

  /// requires: in.size() == in_pixels(), out.size() == out_pixels() (std::invalid_argument otherwise);
  /// both row-major.  ensures: out holds the bilinear resize of `in` divided by 255, each value in
  /// [0, 1]; allocates nothing.
  void operator()(std::span<const std::uint8_t> in, std::span<float> out) const {
    if (in.size() != in_pixels() || out.size() != out_pixels())
      throw std::invalid_argument("Resizer: expected " + std::to_string(in_pixels()) + " input and " +
                                  std::to_string(out_pixels()) + " output values, got " + std::to_string(in.size()) +
                                  " and " + std::to_string(out.size()));
    constexpr float inv255 = 1.0f / 255.0f;
    float* dst = out.data();
    for (const Tap& r : rows_) {
      const std::uint8_t* row0 = in.data() + r.i0 * std::size_t(in_cols_);
      const std::uint8_t* row1 = in.data() + r.i1 * std::size_t(in_cols_);
      for (const Tap& c : cols_) {
        const float top = c.w0 * float(row0[c.i0]) + c.w1 * float(row0[c.i1]);
        const float bottom = c.w0 * float(row1[c.i0]) + c.w1 * float(row1[c.i1]);
        *dst++ = (r.w0 * top + r.w1 * bottom) * inv255;
      }
    }
  }

 private:
  struct Tap {
    std::size_t i0, i1;  // the two source indices
    float w0, w1;        // their weights, w0 + w1 == 1
  };

  static std::vector<Tap> make_axis(int in, int out) {
    std::vector<Tap> taps(static_cast<std::size_t>(out));
    const double scale = double(in) / double(out);
    for (int o = 0; o < out; ++o) {
      // Clamping at 0 is torch's rule for the first half output pixel; the right edge is
      // handled by i1 = min(i0 + 1, in - 1).
      const double src = std::max((o + 0.5) * scale - 0.5, 0.0);
      const int i0 = std::min(static_cast<int>(std::floor(src)), in - 1);
      const int i1 = std::min(i0 + 1, in - 1);
      const double w1 = src - i0;
      taps[static_cast<std::size_t>(o)] = {static_cast<std::size_t>(i0), static_cast<std::size_t>(i1),
                                           static_cast<float>(1.0 - w1), static_cast<float>(w1)};
    }
    return taps;
  }

  int in_rows_, in_cols_, out_rows_, out_cols_;
  std::vector<Tap> rows_, cols_;
};

/// requires: in.size() == in_rows * in_cols, all sizes > 0.
/// ensures: a freshly allocated out_rows * out_cols resize (see Resizer); for one-off use only.
inline std::vector<float> resize_bilinear(std::span<const std::uint8_t> in, int in_rows, int in_cols, int out_rows,
                                          int out_cols) {
  const Resizer resizer(in_rows, in_cols, out_rows, out_cols);
  std::vector<float> out(resizer.out_pixels());
  resizer(in, out);
  return out;
}

}  // namespace vgg::data
