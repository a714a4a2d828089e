#pragma once
// Adam with torch.optim.Adam's semantics (amsgrad off): L2 weight decay added to the gradient,
// bias-corrected moments, denominator sqrt(v) / sqrt(1 - beta2^t) + eps.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>

#include <vector>

#include "vgg/backend.hpp"
#include "vgg/default_backend.hpp"
#include "vgg/optim/parameter_walk.hpp"

namespace vgg {

struct AdamOptions {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
};

/// Adam over the parameters of a network on backend B (the CPU by default: vgg::Adam adam(...)
/// deduces vgg::Adam<vgg::cpu::Backend>); the moments live in B's memory and the update runs there.
template <class B = DefaultBackend>
class Adam {
 public:
  using backend = B;
  explicit Adam(AdamOptions options = {}) : options_(options) {
    if (!(options.lr > 0.0f)) throw std::invalid_argument("vgg::Adam: the learning rate must be positive");
    if (!(options.beta1 >= 0.0f && options.beta1 < 1.0f && options.beta2 >= 0.0f && options.beta2 < 1.0f))
      throw std::invalid_argument("vgg::Adam: beta1 and beta2 must lie in [0, 1)");
  }

  /// One update of every parameter of `net` from its current gradients.
  /// requires: net.backward() ran. ensures: allocates only on the first call (moment buffers).
  template <class Net>
  void step(Net& net) {
    static_assert(Net::backend::device == B::device,
                  "vgg::Adam<B>::step: the network's parameters live on another device than this optimizer's state; "
                  "use vgg::Adam<typename Net::backend>.");
    reserve(Net::num_params, net.context());
    ++steps_;
    const double t = double(steps_);
    const float bias1 = float(1.0 - std::pow(double(options_.beta1), t));
    const AdamStep step{options_.lr / bias1, options_.beta1, options_.beta2,
                        float(std::sqrt(1.0 - std::pow(double(options_.beta2), t))), options_.eps,
                        options_.weight_decay};
    detail::for_each_parameter_with_offset(net, "vgg::Adam::step", [&](std::span<float> p, std::span<float> g,
                                                                       std::size_t offset) {
      B::adam_update(net.context(), p.data(), g.data(), first_moment_.data() + offset,
                     second_moment_.data() + offset, p.size(), step);
    });
  }

  void set_lr(float lr) { options_.lr = lr; }
  const AdamOptions& options() const { return options_; }
  std::int64_t steps() const { return steps_; }

  /// Optimizer state, for checkpoints: moments in network parameter order (in B's memory), and the
  /// step count.
  std::span<float> first_moment() { return {first_moment_.data(), size_}; }
  std::span<float> second_moment() { return {second_moment_.data(), size_}; }
  void set_steps(std::int64_t steps) { steps_ = steps; }
  /// ensures: state buffers exist (zeroed the first time) for `num_params` parameters.
  void reserve(long long num_params) requires B::host_memory {
    typename B::Context host;
    reserve(num_params, host);
  }
  void reserve(long long num_params, typename B::Context& ctx) {
    if (size_ == std::size_t(num_params)) return;
    size_ = std::size_t(num_params);
    first_moment_.reserve(size_);
    second_moment_.reserve(size_);
    const std::vector<float> zeros(size_, 0.0f);
    B::copy_from_host(zeros.data(), first_moment_.data(), size_, ctx);
    B::copy_from_host(zeros.data(), second_moment_.data(), size_, ctx);
  }

 private:
  AdamOptions options_;
  typename B::template Buffer<float> first_moment_, second_moment_;
  std::size_t size_ = 0;
  std::int64_t steps_ = 0;
};

}  // namespace vgg
