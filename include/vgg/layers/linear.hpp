#pragma once
// Linear(In, Out, bias=True), optionally followed by a fused ReLU.

#include <string>

#include "vgg/backend.hpp"
#include "vgg/context.hpp"
#include "vgg/layer.hpp"
#include "vgg/parameters.hpp"
#include "vgg/shape.hpp"

namespace vgg {

template <int In, int Out, bool Relu, class B>
class Linear : public WeightAndBias<B> {
 public:
  using backend = B;
  using Context = typename B::Context;
  static constexpr Shape input_shape{In, 1, 1};
  static constexpr Shape output_shape{Out, 1, 1};
  static constexpr long long weight_size = 1LL * In * Out;
  static constexpr long long num_params = weight_size + Out;
  static constexpr int torch_modules = Relu ? 2 : 1;
  static constexpr bool ends_block = false;
  static constexpr double flops_per_sample = 2.0 * weight_size;
  static constexpr bool is_identity(Mode) { return false; }

  Linear() : WeightAndBias<B>(std::size_t(weight_size), std::size_t(Out)) {}

  void reset_parameters(Rng& rng, Context& exec) { this->reset(rng, In, exec); }
  void reserve(Context& exec, int batch) { workspace_.reserve(exec, batch, In, Out); }
  void reserve_backward(Context& exec, int batch) {
    workspace_.reserve_backward(exec, batch, In, Out);
    this->reserve_gradients();
  }
  void forward(Context& exec, const float* x, float* y, int n, const RunContext&) {
    B::linear_forward(exec, workspace_, x, this->weight().data(), this->bias().data(), y, n, In, Out, Relu);
  }
  void backward(Context& exec, const float* x, const float* y, float* dy, float* dx, int n, const RunContext&) {
    B::linear_backward(exec, workspace_, x, this->weight().data(), y, dy, dx, this->weight_grad().data(),
                       this->bias_grad().data(), n, In, Out, Relu);
  }

  template <class F>
  void for_each_parameter(F&& f) {
    this->visit(f, TensorShape{{Out, In}, 2});
  }
  template <class F>
  static void describe(F&& emit) {
    emit("Linear(in_features=" + std::to_string(In) + ", out_features=" + std::to_string(Out) + ", bias=True)");
    if (Relu) emit("ReLU()");
  }

 private:
  typename B::LinearWorkspace workspace_;
};

}  // namespace vgg
