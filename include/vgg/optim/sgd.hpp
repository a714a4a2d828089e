#pragma once
// SGD with torch.optim.SGD's semantics: weight decay added to the gradient; momentum buffer
// initialised to the first gradient, then buf = momentum * buf + (1 - dampening) * g; Nesterov
// uses g + momentum * buf.

#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>

#include <vector>

#include "vgg/backend.hpp"
#include "vgg/default_backend.hpp"
#include "vgg/optim/parameter_walk.hpp"

namespace vgg {

struct SgdOptions {
  float lr = 1e-2f;
  float momentum = 0.0f;
  float dampening = 0.0f;
  float weight_decay = 0.0f;
  bool nesterov = false;
};

/// SGD over the parameters of a network on backend B (the CPU by default: vgg::Sgd sgd(...)
/// deduces vgg::Sgd<vgg::cpu::Backend>); the momentum buffer lives in B's memory.
template <class B = DefaultBackend>
class Sgd {
 public:
  using backend = B;
  explicit Sgd(SgdOptions options = {}) : options_(options) {
    if (!(options.lr > 0.0f)) throw std::invalid_argument("vgg::Sgd: the learning rate must be positive");
    if (options.nesterov && (options.momentum <= 0.0f || options.dampening != 0.0f))
      throw std::invalid_argument("vgg::Sgd: Nesterov momentum requires a positive momentum and zero dampening");
  }

  /// requires: net.backward() ran. ensures: allocates only on the first call (momentum buffer).
  template <class Net>
  void step(Net& net) {
    static_assert(Net::backend::device == B::device,
                  "vgg::Sgd<B>::step: the network's parameters live on another device than this optimizer's state; "
                  "use vgg::Sgd<typename Net::backend>.");
    reserve(Net::num_params, net.context());
    const SgdStep step{options_.lr, options_.momentum, options_.dampening, options_.weight_decay, options_.nesterov,
                       steps_ == 0};
    ++steps_;
    detail::for_each_parameter_with_offset(net, "vgg::Sgd::step", [&](std::span<float> p, std::span<float> g,
                                                                      std::size_t offset) {
      B::sgd_update(net.context(), p.data(), g.data(), momentum_.data() + offset, p.size(), step);
    });
  }

  void set_lr(float lr) { options_.lr = lr; }
  const SgdOptions& options() const { return options_; }
  std::int64_t steps() const { return steps_; }
  std::span<float> momentum_buffer() { return {momentum_.data(), size_}; }
  void set_steps(std::int64_t steps) { steps_ = steps; }
  void reserve(long long num_params) requires B::host_memory {
    typename B::Context host;
    reserve(num_params, host);
  }
  void reserve(long long num_params, typename B::Context& ctx) {
    if (size_ == std::size_t(num_params)) return;
    size_ = std::size_t(num_params);
    momentum_.reserve(size_);
    const std::vector<float> zeros(size_, 0.0f);
    B::copy_from_host(zeros.data(), momentum_.data(), size_, ctx);
  }

 private:
  SgdOptions options_;
  typename B::template Buffer<float> momentum_;
  std::size_t size_ = 0;
  std::int64_t steps_ = 0;
};

}  // namespace vgg
