#pragma once
// Dropout(p): inverted dropout in train mode, the identity in eval mode.

#include <sstream>
#include <string>

#include "vgg/context.hpp"
#include "vgg/backend.hpp"
#include "vgg/layer.hpp"
#include "vgg/shape.hpp"

namespace vgg {

template <int Features, double P, class B>
class Dropout {
 public:
  using backend = B;
  using Context = typename B::Context;
  static constexpr Shape input_shape{Features, 1, 1};
  static constexpr Shape output_shape = input_shape;
  static constexpr long long num_params = 0;
  static constexpr int torch_modules = 1;
  static constexpr bool ends_block = false;
  static constexpr double flops_per_sample = 0.0;
  static constexpr double probability = P;
  static constexpr bool is_identity(Mode mode) { return mode == Mode::eval || P == 0.0; }

  void reset_parameters(Rng&, Context&) {}
  void reserve(Context&, int) {}
  void reserve_backward(Context&, int) {}
  void backward(Context& exec, const float*, const float*, float* dy, float* dx, int n, const RunContext& ctx) {
    if (dx) B::dropout_backward(exec, dy, dx, long(n) * Features, float(P), ctx.seed, stream(ctx));
  }
  void forward(Context& exec, const float* x, float* y, int n, const RunContext& ctx) {
    B::dropout_forward(exec, x, y, long(n) * Features, float(P), ctx.seed, stream(ctx));
  }
  /// The mask stream of one training step of one layer; backward recomputes the same mask.
  static std::uint64_t stream(const RunContext& ctx) { return ctx.step * 1024 + ctx.layer_index; }
  template <class F>
  void for_each_parameter(F&&) {}
  template <class F>
  static void describe(F&& emit) {
    std::ostringstream s;
    s << "Dropout(p=" << P << ", inplace=False)";
    emit(s.str());
  }
};

}  // namespace vgg
