#pragma once
// AdaptiveAvgPool2d((OH, OW)): torchvision's `avgpool` between `features` and `classifier`. Output
// cell (i, j) averages input rows floor(i*H/OH) .. ceil((i+1)*H/OH)-1 and the same for columns,
// exactly as PyTorch bins them (bins overlap when the sizes do not divide). When the input is
// already OH x OW, every bin is one pixel: the layer is the identity and the network skips it.
//
// The kernels are the backend's (cpu/adaptive_avgpool.hpp and the CUDA twin in cuda/ops.hpp), over
// one shared per-cell body in elementwise.hpp.

#include <string>

#include "vgg/backend.hpp"
#include "vgg/context.hpp"
#include "vgg/layer.hpp"
#include "vgg/shape.hpp"

namespace vgg {

template <Shape In, int OH, int OW, class B>
class AdaptiveAvgPool2d {
 public:
  using backend = B;
  using Context = typename B::Context;
  static constexpr Shape input_shape = In;
  static constexpr Shape output_shape{In.c, OH, OW};
  static constexpr bool identity = In.h == OH && In.w == OW;
  static constexpr long long num_params = 0;
  static constexpr int torch_modules = 1;
  static constexpr bool ends_block = false;
  static constexpr bool is_adaptive_avg_pool = true;  // torchvision's top-level `avgpool` module
  static constexpr double flops_per_sample = identity ? 0.0 : double(In.size());
  static constexpr bool is_identity(Mode) { return identity; }

  void reset_parameters(Rng&, Context&) {}
  void reserve(Context&, int) {}
  void reserve_backward(Context&, int) {}
  void forward(Context& exec, const float* x, float* y, int n, const RunContext&) {
    if constexpr (!identity) B::adaptive_avgpool_forward(exec, x, y, long(n) * In.c, In.h, In.w, OH, OW);
  }
  void backward(Context& exec, const float*, const float*, float* dy, float* dx, int n, const RunContext&) {
    if constexpr (!identity)
      if (dx) B::adaptive_avgpool_backward(exec, dy, dx, long(n) * In.c, In.h, In.w, OH, OW);
  }
  template <class F>
  void for_each_parameter(F&&) {}
  template <class F>
  static void describe(F&& emit) {
    emit("AdaptiveAvgPool2d(output_size=(" + std::to_string(OH) + ", " + std::to_string(OW) + "))");
  }
};

}  // namespace vgg
