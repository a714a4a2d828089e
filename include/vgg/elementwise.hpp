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

// ---- batch norm (torch.nn.BatchNorm2d's arithmetic, as ATen's CPU kernels order it) ----
// A channel's statistics reduce over batch x plane values (M of them) in double; the per-channel
// and per-element steps below are shared by the CPU loops and the CUDA kernels.
namespace vgg::elementwise {

/// The channel of element i of an n x channels x plane batch.
VGG_HOST_DEVICE inline int channel_of(long i, long plane, int channels) { return int(i / plane % channels); }
/// Value j (in [0, batch x plane)) of channel c: image j / plane, pixel j % plane.
VGG_HOST_DEVICE inline long channel_index(int c, long j, long plane, int channels) {
  return (j / plane * channels + c) * plane + j % plane;
}

/// A channel's batch statistics from sum(z) and sum((z - mean)^2) over its M values: stores the
/// batch mean and 1 / sqrt(biased variance + eps) for the backward, and moves the running
/// statistics towards the batch's by `momentum`, with the unbiased variance (M / (M - 1)), as
/// PyTorch does. requires: count >= 2.
VGG_HOST_DEVICE inline void batchnorm_statistics(float mean, double squared_deviations, long count, float momentum,
                                                 float eps, float& saved_mean, float& saved_invstd,
                                                 float& running_mean, float& running_var) {
  const double var = squared_deviations / double(count);
  saved_mean = mean;
  saved_invstd = float(1.0 / std::sqrt(var + double(eps)));
  const double m = double(momentum);
  running_mean = float(m * double(mean) + (1.0 - m) * double(running_mean));
  running_var = float(m * (squared_deviations / double(count - 1)) + (1.0 - m) * double(running_var));
}

/// The batch mean of a channel from its sum, in float as the normalisation uses it.
VGG_HOST_DEVICE inline float batchnorm_mean(double sum, long count) { return float(sum / double(count)); }

/// (z - mean)^2 in float, as ATen accumulates it.
VGG_HOST_DEVICE inline float squared_deviation(float z, float mean) { return (z - mean) * (z - mean); }

/// The affine map of a channel: y = z * scale + shift with scale = gamma * invstd, shift = beta -
/// mean * scale.
VGG_HOST_DEVICE inline float batchnorm_scale(float gamma, float invstd) { return gamma * invstd; }
VGG_HOST_DEVICE inline float batchnorm_shift(float beta, float mean, float scale) { return beta - mean * scale; }

/// relu(z * scale + shift): the normalised, affine and rectified value (NaN passes, as torch's ReLU).
VGG_HOST_DEVICE inline float batchnorm_relu(float z, float scale, float shift) {
  const float v = z * scale + shift;
  return v < 0.0f ? 0.0f : v;
}

/// The gradient behind the ReLU whose output is y (NaN outputs pass it, as the conv's ReLU does).
VGG_HOST_DEVICE inline float relu_gradient(float dy, float y) { return y <= 0.0f ? 0.0f : dy; }

/// The input gradient of batch norm with batch statistics, given the channel's gradient sums
/// (beta_grad = sum(dyhat), gamma_grad = sum(dyhat * (z - mean)) * invstd) over its M values:
/// (dyhat - beta_grad / M - (z - mean) * k) * invstd * gamma with k = gamma_grad * invstd / M.
VGG_HOST_DEVICE inline float batchnorm_input_gradient(float dyhat, float z, float mean, float invstd, float gamma,
                                                      float gamma_grad, float beta_grad, long count) {
  const float inv_count = 1.0f / float(count);
  const float k = gamma_grad * invstd * inv_count;
  return (dyhat - beta_grad * inv_count - (z - mean) * k) * invstd * gamma;
}

/// Eval mode: the batch norm after a conv folded into it: scale = gamma / sqrt(running_var + eps);
/// weights times scale, bias (b - running_mean) * scale + beta.
VGG_HOST_DEVICE inline float batchnorm_fold_scale(float gamma, float running_var, float eps) {
  return float(double(gamma) / std::sqrt(double(running_var) + double(eps)));
}
VGG_HOST_DEVICE inline float batchnorm_folded_bias(float bias, float beta, float running_mean, float scale) {
  return (bias - running_mean) * scale + beta;
}

}  // namespace vgg::elementwise

// ---- adaptive average pool (torch.nn.AdaptiveAvgPool2d's bins) ----
// Output cell i of `out` along an axis of `in` averages the input indices [start, end) with start =
// floor(i*in/out) and end = ceil((i+1)*in/out); bins overlap when the sizes do not divide. The
// backward is a gather (each input pixel sums the bins that contain it), so the CUDA kernel needs no
// atomics and no zeroing, and the CPU loop gives the same sums in the same order.
namespace vgg::elementwise {

VGG_HOST_DEVICE constexpr int adaptive_start(int i, int in, int out) { return (i * in) / out; }
VGG_HOST_DEVICE constexpr int adaptive_end(int i, int in, int out) { return ((i + 1) * in + out - 1) / out; }
/// The first and one past the last output cell whose bin contains input index r: the cells with
/// start <= r < end, solved for i (start(i) <= r <=> i*in < (r+1)*out; end(i) > r <=> (i+1)*in > r*out).
VGG_HOST_DEVICE constexpr int adaptive_first_bin(int r, int in, int out) { return (r * out) / in; }
VGG_HOST_DEVICE constexpr int adaptive_last_bin(int r, int in, int out) { return ((r + 1) * out + in - 1) / in; }

/// Output cell (i, j) of one h x w plane pooled to oh x ow.
VGG_HOST_DEVICE inline float adaptive_avgpool(const float* plane, int h, int w, int oh, int ow, int i, int j) {
  const int h0 = adaptive_start(i, h, oh), h1 = adaptive_end(i, h, oh);
  const int w0 = adaptive_start(j, w, ow), w1 = adaptive_end(j, w, ow);
  float sum = 0.0f;
  for (int r = h0; r < h1; ++r)
    for (int c = w0; c < w1; ++c) sum += plane[r * w + c];
  return sum / float((h1 - h0) * (w1 - w0));
}

/// The gradient reaching input pixel (r, c) of one h x w plane from the oh x ow plane dy: the sum,
/// over the bins containing it in row-major order, of the bin's gradient over its area.
VGG_HOST_DEVICE inline float adaptive_avgpool_input_grad(const float* dy, int h, int w, int oh, int ow, int r,
                                                         int c) {
  const int i0 = adaptive_first_bin(r, h, oh), i1 = adaptive_last_bin(r, h, oh);
  const int j0 = adaptive_first_bin(c, w, ow), j1 = adaptive_last_bin(c, w, ow);
  float sum = 0.0f;
  for (int i = i0; i < i1; ++i) {
    const int rows = adaptive_end(i, h, oh) - adaptive_start(i, h, oh);
    for (int j = j0; j < j1; ++j) {
      const int cols = adaptive_end(j, w, ow) - adaptive_start(j, w, ow);
      sum += dy[i * ow + j] / float(rows * cols);
    }
  }
  return sum;
}

}  // namespace vgg::elementwise
