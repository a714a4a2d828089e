#pragma once
// SGD with torch.optim.SGD's semantics: weight decay added to the gradient; momentum buffer
// initialised to the first gradient, then buf = momentum * buf + (1 - dampening) * g; Nesterov
// uses g + momentum * buf.

#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>

#include "vgg/buffer.hpp"
#include "vgg/optim/parameter_walk.hpp"

namespace vgg {

struct SgdOptions {
  float lr = 1e-2f;
  float momentum = 0.0f;
  float dampening = 0.0f;
  float weight_decay = 0.0f;
  bool nesterov = false;
};

class Sgd {
 public:
  explicit Sgd(SgdOptions options = {}) : options_(options) {
    if (!(options.lr > 0.0f)) throw std::invalid_argument("vgg::Sgd: the learning rate must be positive");
    if (options.nesterov && (options.momentum <= 0.0f || options.dampening != 0.0f))
      throw std::invalid_argument("vgg::Sgd: Nesterov momentum requires a positive momentum and zero dampening");
  }

  /// requires: net.backward() ran. ensures: allocates only on the first call (momentum buffer).
  template <class Net>
  void step(Net& net) {
    reserve(Net::num_params);
    const bool first = steps_ == 0;
    ++steps_;
    const SgdOptions o = options_;
    detail::for_each_parameter_with_offset(net, "vgg::Sgd::step", [&](std::span<float> p, std::span<float> g,
                                                                      std::size_t offset) {
      float* buf = momentum_.data() + offset;
      const long n = long(p.size());
#pragma omp parallel for simd schedule(static) if (n > 65536)
      for (long i = 0; i < n; ++i) {
        float d = g[std::size_t(i)] + o.weight_decay * p[std::size_t(i)];
        if (o.momentum != 0.0f) {
          buf[i] = first ? d : o.momentum * buf[i] + (1.0f - o.dampening) * d;
          d = o.nesterov ? d + o.momentum * buf[i] : buf[i];
        }
        p[std::size_t(i)] -= o.lr * d;
      }
    });
  }

  void set_lr(float lr) { options_.lr = lr; }
  const SgdOptions& options() const { return options_; }
  std::int64_t steps() const { return steps_; }
  std::span<float> momentum_buffer() { return momentum_.span(size_); }
  void set_steps(std::int64_t steps) { steps_ = steps; }
  void reserve(long long num_params) {
    if (size_ == std::size_t(num_params)) return;
    size_ = std::size_t(num_params);
    momentum_.reserve(size_);
    std::fill(momentum_.data(), momentum_.data() + size_, 0.0f);
  }

 private:
  SgdOptions options_;
  Buffer<float> momentum_;
  std::size_t size_ = 0;
  std::int64_t steps_ = 0;
};

}  // namespace vgg
