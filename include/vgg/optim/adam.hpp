#pragma once
// Adam with torch.optim.Adam's semantics (amsgrad off): L2 weight decay added to the gradient,
// bias-corrected moments, denominator sqrt(v) / sqrt(1 - beta2^t) + eps.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>

#include "vgg/buffer.hpp"
#include "vgg/optim/parameter_walk.hpp"

namespace vgg {

struct AdamOptions {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
};

class Adam {
 public:
  explicit Adam(AdamOptions options = {}) : options_(options) {
    if (!(options.lr > 0.0f)) throw std::invalid_argument("vgg::Adam: the learning rate must be positive");
    if (!(options.beta1 >= 0.0f && options.beta1 < 1.0f && options.beta2 >= 0.0f && options.beta2 < 1.0f))
      throw std::invalid_argument("vgg::Adam: beta1 and beta2 must lie in [0, 1)");
  }

  /// One update of every parameter of `net` from its current gradients.
  /// requires: net.backward() ran. ensures: allocates only on the first call (moment buffers).
  template <class Net>
  void step(Net& net) {
    reserve(Net::num_params);
    ++steps_;
    const double t = double(steps_);
    const float bias1 = float(1.0 - std::pow(double(options_.beta1), t));
    const float bias2_sqrt = float(std::sqrt(1.0 - std::pow(double(options_.beta2), t)));
    const float step_size = options_.lr / bias1;
    detail::for_each_parameter_with_offset(net, "vgg::Adam::step", [&](std::span<float> p, std::span<float> g,
                                                                       std::size_t offset) {
      float* m = first_moment_.data() + offset;
      float* v = second_moment_.data() + offset;
      const long n = long(p.size());
#pragma omp parallel for simd schedule(static) if (n > 65536)
      for (long i = 0; i < n; ++i) {
        const float grad = g[std::size_t(i)] + options_.weight_decay * p[std::size_t(i)];
        m[i] = options_.beta1 * m[i] + (1.0f - options_.beta1) * grad;
        v[i] = options_.beta2 * v[i] + (1.0f - options_.beta2) * grad * grad;
        const float denom = std::sqrt(v[i]) / bias2_sqrt + options_.eps;
        p[std::size_t(i)] -= step_size * m[i] / denom;
      }
    });
  }

  void set_lr(float lr) { options_.lr = lr; }
  const AdamOptions& options() const { return options_; }
  std::int64_t steps() const { return steps_; }

  /// Optimizer state, for checkpoints: moments in network parameter order, and the step count.
  std::span<float> first_moment() { return first_moment_.span(size_); }
  std::span<float> second_moment() { return second_moment_.span(size_); }
  void set_steps(std::int64_t steps) { steps_ = steps; }
  /// ensures: state buffers exist (zeroed the first time) for `num_params` parameters.
  void reserve(long long num_params) {
    if (size_ == std::size_t(num_params)) return;
    size_ = std::size_t(num_params);
    first_moment_.reserve(size_);
    second_moment_.reserve(size_);
    std::fill(first_moment_.data(), first_moment_.data() + size_, 0.0f);
    std::fill(second_moment_.data(), second_moment_.data() + size_, 0.0f);
  }

 private:
  AdamOptions options_;
  Buffer<float> first_moment_, second_moment_;
  std::size_t size_ = 0;
  std::int64_t steps_ = 0;
};

}  // namespace vgg
