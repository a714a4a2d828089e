#pragma once
// Flatten(start_dim=1): C x H x W -> C*H*W. NCHW is already contiguous in that order, so it
// is a view: the layer's output is its input.

#include "vgg/backend.hpp"
#include "vgg/context.hpp"
#include "vgg/layer.hpp"
#include "vgg/shape.hpp"

namespace vgg {

/// TorchModules is 0 in torchvision's layout, where flattening is torch.flatten in forward(), not a module.
template <Shape In, class B, int TorchModules = 1>
class Flatten {
 public:
  using backend = B;
  using Context = typename B::Context;
  static constexpr Shape input_shape = In;
  static constexpr Shape output_shape{int(In.size()), 1, 1};
  static constexpr long long num_params = 0;
  static constexpr int torch_modules = TorchModules;
  static constexpr bool ends_block = false;
  static constexpr double flops_per_sample = 0.0;
  static constexpr bool is_identity(Mode) { return true; }

  void reset_parameters(Rng&, Context&) {}
  void reserve(Context&, int) {}
  void reserve_backward(Context&, int) {}
  void backward(Context&, const float*, const float*, float*, float*, int, const RunContext&) {}
  void forward(Context&, const float*, float*, int, const RunContext&) {}
  template <class F>
  void for_each_parameter(F&&) {}
  template <class F>
  static void describe(F&& emit) {
    if (TorchModules > 0) emit("Flatten(start_dim=1, end_dim=-1)");
  }
};

}  // namespace vgg
