#pragma once
// How the CUDA tests compare a GPU result with the CPU's: the largest difference relative to the
// largest magnitude (floating-point sums in another order differ by a few ulps of the whole).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <span>

/// max |a - b| / max |a|.
inline float relative_difference(std::span<const float> a, std::span<const float> b) {
  REQUIRE(a.size() == b.size());
  float scale = 1e-30f, diff = 0.0f;
  for (std::size_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, std::abs(a[i]));
    diff = std::max(diff, std::abs(a[i] - b[i]));
  }
  return diff / scale;
}
