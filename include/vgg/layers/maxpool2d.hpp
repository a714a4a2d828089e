#pragma once
// MaxPool2d(kernel_size=2, stride=2): the last module of a VGG block.

#include <string>

#include "vgg/context.hpp"
#include "vgg/backend.hpp"
#include "vgg/layer.hpp"
#include "vgg/shape.hpp"

namespace vgg {

template <int C, int H, int W, class B>
class MaxPool2x2 {
 public:
  using backend = B;
  using Context = typename B::Context;
  static constexpr Shape input_shape{C, H, W};
  static constexpr Shape output_shape{C, pooled(H), pooled(W)};
  static_assert(output_shape.h > 0 && output_shape.w > 0, "vgg::MaxPool2x2: the input must be at least 2x2.");
  static constexpr long long num_params = 0;
  static constexpr int torch_modules = 1;
  static constexpr bool ends_block = true;
  static constexpr bool is_2x2_max_pool = true;  // a layer before it with can_pool_output may run it
  static constexpr double flops_per_sample = 3.0 * output_shape.size();
  static constexpr bool is_identity(Mode) { return false; }

  void reset_parameters(Rng&, Context&) {}
  void reserve(Context&, int) {}
  void reserve_backward(Context&, int) {}
  void backward(Context& exec, const float* x, const float*, float* dy, float* dx, int n, const RunContext&) {
    if (dx) B::maxpool2x2_backward(exec, x, dy, dx, long(n) * C, H, W);
  }
  void forward(Context& exec, const float* x, float* y, int n, const RunContext&) {
    B::maxpool2x2_forward(exec, x, y, long(n) * C, H, W);
  }
  template <class F>
  void for_each_parameter(F&&) {}
  template <class F>
  static void describe(F&& emit) {
    emit("MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)");
  }
};

}  // namespace vgg
