#pragma once
// Linear(In, Out, bias=True), optionally followed by a fused ReLU.

#include <string>

#include "vgg/buffer.hpp"
#include "vgg/context.hpp"
#include "vgg/init.hpp"
#include "vgg/kernels.hpp"
#include "vgg/layer.hpp"
#include "vgg/shape.hpp"

namespace vgg {

template <int In, int Out, bool Relu>
class Linear {
 public:
  static constexpr Shape input_shape{In, 1, 1};
  static constexpr Shape output_shape{Out, 1, 1};
  static constexpr long long weight_size = 1LL * In * Out;
  static constexpr long long num_params = weight_size + Out;
  static constexpr int torch_modules = Relu ? 2 : 1;
  static constexpr bool ends_block = false;
  static constexpr double flops_per_sample = 2.0 * weight_size;
  static constexpr bool is_identity(Mode) { return false; }

  Linear() : weight_(std::size_t(weight_size)), bias_(std::size_t(Out)) {}

  void reset_parameters(Rng& rng) { init_pytorch_default(weight(), bias(), In, rng); }
  void reserve(int batch, int threads) { workspace_.reserve(batch, In, Out, threads); }
  void reserve_backward(int batch, int threads) {
    workspace_.reserve_backward(batch, In, Out, threads);
    weight_grad_.reserve(std::size_t(weight_size));
    bias_grad_.reserve(std::size_t(Out));
    has_grad_ = true;
  }
  void forward(const float* x, float* y, int n, const RunContext& ctx) {
    kernels::linear_forward(x, weight_.data(), bias_.data(), y, n, In, Out, Relu, workspace_, ctx.threads);
  }
  void backward(const float* x, const float* y, float* dy, float* dx, int n, const RunContext& ctx) {
    kernels::linear_backward(x, weight_.data(), y, dy, dx, weight_grad_.data(), bias_grad_.data(), n, In, Out, Relu,
                             workspace_, ctx.threads);
  }

  std::span<float> weight() { return weight_.span(std::size_t(weight_size)); }
  std::span<float> bias() { return bias_.span(std::size_t(Out)); }
  std::span<float> weight_grad() { return has_grad_ ? weight_grad_.span(std::size_t(weight_size)) : std::span<float>{}; }
  std::span<float> bias_grad() { return has_grad_ ? bias_grad_.span(std::size_t(Out)) : std::span<float>{}; }

  template <class F>
  void for_each_parameter(F&& f) {
    f("weight", TensorShape{{Out, In}, 2}, weight(), weight_grad());
    f("bias", TensorShape{{Out}, 1}, bias(), bias_grad());
  }
  template <class F>
  static void describe(F&& emit) {
    emit("Linear(in_features=" + std::to_string(In) + ", out_features=" + std::to_string(Out) + ", bias=True)");
    if (Relu) emit("ReLU()");
  }

 private:
  Buffer<float> weight_, bias_, weight_grad_, bias_grad_;
  bool has_grad_ = false;
  cpu::LinearWorkspace workspace_;
};

}  // namespace vgg
