#pragma once
// Linear(In, Out, bias=True), optionally followed by a fused ReLU.

#include <string>

#include "vgg/context.hpp"
#include "vgg/init.hpp"
#include "vgg/kernels.hpp"
#include "vgg/layer.hpp"
#include "vgg/parameters.hpp"
#include "vgg/shape.hpp"

namespace vgg {

template <int In, int Out, bool Relu>
class Linear : public WeightAndBias {
 public:
  static constexpr Shape input_shape{In, 1, 1};
  static constexpr Shape output_shape{Out, 1, 1};
  static constexpr long long weight_size = 1LL * In * Out;
  static constexpr long long num_params = weight_size + Out;
  static constexpr int torch_modules = Relu ? 2 : 1;
  static constexpr bool ends_block = false;
  static constexpr double flops_per_sample = 2.0 * weight_size;
  static constexpr bool is_identity(Mode) { return false; }

  Linear() : WeightAndBias(std::size_t(weight_size), std::size_t(Out)) {}

  void reset_parameters(Rng& rng) { init_pytorch_default(weight(), bias(), In, rng); }
  void reserve(int batch, int threads) { workspace_.reserve(batch, In, Out, threads); }
  void reserve_backward(int batch, int threads) {
    workspace_.reserve_backward(batch, In, Out, threads);
    reserve_gradients();
  }
  void forward(const float* x, float* y, int n, const RunContext& ctx) {
    kernels::linear_forward(x, weight().data(), bias().data(), y, n, In, Out, Relu, workspace_, ctx.threads);
  }
  void backward(const float* x, const float* y, float* dy, float* dx, int n, const RunContext& ctx) {
    kernels::linear_backward(x, weight().data(), y, dy, dx, weight_grad().data(), bias_grad().data(), n, In, Out, Relu,
                             workspace_, ctx.threads);
  }

  template <class F>
  void for_each_parameter(F&& f) {
    visit(f, TensorShape{{Out, In}, 2});
  }
  template <class F>
  static void describe(F&& emit) {
    emit("Linear(in_features=" + std::to_string(In) + ", out_features=" + std::to_string(Out) + ", bias=True)");
    if (Relu) emit("ReLU()");
  }

 private:
  cpu::LinearWorkspace workspace_;
};

}  // namespace vgg
