#pragma once
// PyTorch's default initialisation of Conv2d and Linear: weights kaiming_uniform_(a = sqrt(5)),
// which is U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

#include <cmath>
#include <span>

#include "vgg/random.hpp"

namespace vgg {

/// ensures: every element of `weight` and `bias` is drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
///          weights first, then biases, in memory order.
inline void init_pytorch_default(std::span<float> weight, std::span<float> bias, long fan_in, Rng& rng) {
  // kaiming_uniform with a = sqrt(5): gain = sqrt(2 / (1 + 5)), bound = gain * sqrt(3 / fan_in).
  const float bound = float(1.0 / std::sqrt(double(fan_in)));
  for (float& v : weight) v = rng.uniform(-bound, bound);
  for (float& v : bias) v = rng.uniform(-bound, bound);
}

}  // namespace vgg
