#pragma once
// Shapes of one sample (channels, height, width) and the network's input description.

#include <compare>
#include <cstddef>
#include <ostream>

namespace vgg {

/// The shape of one sample: C x H x W (the batch size is a run-time value and not part of it).
struct Shape {
  int c = 0;
  int h = 0;
  int w = 0;

  constexpr std::size_t size() const { return std::size_t(c) * std::size_t(h) * std::size_t(w); }
  constexpr bool operator==(const Shape&) const = default;
};

inline std::ostream& operator<<(std::ostream& os, const Shape& s) {
  return os << '[' << s.c << ", " << s.h << ", " << s.w << ']';
}

/// PyTorch's floor rule for a 2x2, stride-2 max-pool: 7 -> 3, 1 -> 0.
constexpr int pooled(int extent) { return extent / 2; }

/// First element of a `Vgg<...>` pack: the C x H x W of one input sample.
template <int C, int H, int W>
struct Input {
  static_assert(C > 0, "vgg::Input<C, H, W>: the channel count C must be positive.");
  static_assert(H > 0 && W > 0, "vgg::Input<C, H, W>: the height H and width W must be positive.");
  static constexpr Shape shape{C, H, W};
};

}  // namespace vgg

namespace vgg {
template <class T>
inline constexpr bool is_input = false;
template <int C, int H, int W>
inline constexpr bool is_input<Input<C, H, W>> = true;
}  // namespace vgg
