#pragma once
// The per-element bodies of the element-wise kernels (dropout, the optimizer updates), written once
// for every backend: the CPU loops call them, and CUDA kernels call the same functions on the device
// (VGG_HOST_DEVICE), so their arithmetic and indexing are tested on every machine, GPU or not.

#include <cmath>
#include <cstdint>

#include "vgg/random.hpp"

#if defined(__CUDACC__)
#define VGG_HOST_DEVICE __host__ __device__
#else
#define VGG_HOST_DEVICE
#endif

namespace vgg::elementwise {

/// Whether inverted dropout keeps element i of stream (seed, stream): a counter-based hash, so the
/// mask depends on neither the thread count nor the device.
VGG_HOST_DEVICE constexpr bool dropout_keeps(std::uint64_t seed, std::uint64_t stream, std::uint64_t i, float p) {
  return unit_float(hash_draw(seed, stream, i)) >= p;
}

/// y = x / (1 - p) where kept, 0 where dropped (the forward and, with dy for x, the backward).
VGG_HOST_DEVICE inline float dropout(float x, std::uint64_t seed, std::uint64_t stream, std::uint64_t i, float p,
                                     float scale) {
  return dropout_keeps(seed, stream, i, p) ? x * scale : 0.0f;
}

/// One element of torch.optim.Adam's update (amsgrad off): updates p, m and v in place.
template <class Step>
VGG_HOST_DEVICE inline void adam(float& p, float g, float& m, float& v, const Step& s) {
  const float grad = g + s.weight_decay * p;
  m = s.beta1 * m + (1.0f - s.beta1) * grad;
  v = s.beta2 * v + (1.0f - s.beta2) * grad * grad;
  const float denom = std::sqrt(v) / s.bias2_sqrt + s.eps;
  p -= s.step_size * m / denom;
}

/// One element of torch.optim.SGD's update: updates p and the momentum buffer in place.
template <class Step>
VGG_HOST_DEVICE inline void sgd(float& p, float g, float& buf, const Step& s) {
  float d = g + s.weight_decay * p;
  if (s.momentum != 0.0f) {
    buf = s.first ? d : s.momentum * buf + (1.0f - s.dampening) * d;
    d = s.nesterov ? d + s.momentum * buf : buf;
  }
  p -= s.lr * d;
}

}  // namespace vgg::elementwise
