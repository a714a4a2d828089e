#pragma once
// The weight and bias of a parametric layer, with their gradients (allocated on first backward
// use). Conv3x3Relu and Linear derive from it, so the accessors live in one place.

#include <cstddef>
#include <span>

#include "vgg/buffer.hpp"
#include "vgg/layer.hpp"

namespace vgg {

class WeightAndBias {
 public:
  WeightAndBias(std::size_t weight_size, std::size_t bias_size)
      : weight_size_(weight_size), bias_size_(bias_size), weight_(weight_size), bias_(bias_size) {}

  /// ensures: weight_grad() and bias_grad() are non-empty from now on.
  void reserve_gradients() {
    weight_grad_.reserve(weight_size_);
    bias_grad_.reserve(bias_size_);
    has_grad_ = true;
  }

  std::span<float> weight() { return weight_.span(weight_size_); }
  std::span<float> bias() { return bias_.span(bias_size_); }
  /// Empty until reserve_gradients().
  std::span<float> weight_grad() { return has_grad_ ? weight_grad_.span(weight_size_) : std::span<float>{}; }
  std::span<float> bias_grad() { return has_grad_ ? bias_grad_.span(bias_size_) : std::span<float>{}; }

  /// f(suffix, shape, value, grad) for the weight, then the bias, as the Layer concept expects.
  template <class F>
  void visit(F&& f, const TensorShape& weight_shape) {
    f("weight", weight_shape, weight(), weight_grad());
    f("bias", TensorShape{{std::int64_t(bias_size_)}, 1}, bias(), bias_grad());
  }

 private:
  std::size_t weight_size_, bias_size_;
  Buffer<float> weight_, bias_, weight_grad_, bias_grad_;
  bool has_grad_ = false;
};

}  // namespace vgg
