#pragma once
// The weight and bias of a parametric layer, with their gradients (allocated on first backward
// use), in the backend's memory. Conv3x3Relu and Linear derive from it, so the accessors live in
// one place.

#include <cstddef>
#include <span>
#include <vector>

#include "vgg/backend.hpp"
#include "vgg/init.hpp"
#include "vgg/layer.hpp"
#include "vgg/random.hpp"

namespace vgg {

template <class B>
class WeightAndBias {
 public:
  WeightAndBias(std::size_t weight_size, std::size_t bias_size)
      : weight_size_(weight_size), bias_size_(bias_size) {
    weight_.reserve(weight_size);
    bias_.reserve(bias_size);
  }

  /// ensures: weight_grad() and bias_grad() are non-empty from now on.
  void reserve_gradients() {
    weight_grad_.reserve(weight_size_);
    bias_grad_.reserve(bias_size_);
    has_grad_ = true;
  }

  /// Spans over the backend's memory (host memory for the CPU backends).
  std::span<float> weight() { return {weight_.data(), weight_size_}; }
  std::span<float> bias() { return {bias_.data(), bias_size_}; }
  /// Empty until reserve_gradients().
  std::span<float> weight_grad() {
    return has_grad_ ? std::span<float>(weight_grad_.data(), weight_size_) : std::span<float>{};
  }
  std::span<float> bias_grad() {
    return has_grad_ ? std::span<float>(bias_grad_.data(), bias_size_) : std::span<float>{};
  }

  /// f(module, suffix, shape, value, grad) for the weight, then the bias, as the Layer concept
  /// expects; `module` is the PyTorch module they belong to, counted from the layer's first.
  template <class F>
  void visit(F&& f, const TensorShape& weight_shape, int module = 0) {
    f(module, "weight", weight_shape, weight(), weight_grad());
    f(module, "bias", TensorShape{{std::int64_t(bias_size_)}, 1}, bias(), bias_grad());
  }

 protected:
  /// Sets the weight to `weight_value` and the bias to `bias_value` everywhere (batch norm's
  /// initialisation: gamma 1, beta 0).
  void fill(float weight_value, float bias_value, typename B::Context& ctx) {
    const std::vector<float> w(weight_size_, weight_value), b(bias_size_, bias_value);
    B::copy_from_host(w.data(), weight_.data(), weight_size_, ctx);
    B::copy_from_host(b.data(), bias_.data(), bias_size_, ctx);
  }

  /// PyTorch's default initialisation, drawn on the host (the same numbers on every backend).
  void reset(Rng& rng, long fan_in, typename B::Context& ctx) {
    if constexpr (B::host_memory) {
      init_pytorch_default(weight(), bias(), fan_in, rng);
    } else {
      std::vector<float> w(weight_size_), b(bias_size_);
      init_pytorch_default(w, b, fan_in, rng);
      B::copy_from_host(w.data(), weight_.data(), weight_size_, ctx);
      B::copy_from_host(b.data(), bias_.data(), bias_size_, ctx);
    }
  }

 private:
  std::size_t weight_size_, bias_size_;
  typename B::template Buffer<float> weight_, bias_, weight_grad_, bias_grad_;
  bool has_grad_ = false;
};

}  // namespace vgg
