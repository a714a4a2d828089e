#pragma once
// Conv2d(In, Out, 3x3, stride 1, padding 1) followed by ReLU, fused: PyTorch modules (k) and (k+1)
// of a VGG block.

#include <string>

#include "vgg/context.hpp"
#include "vgg/init.hpp"
#include "vgg/kernels.hpp"
#include "vgg/layer.hpp"
#include "vgg/parameters.hpp"
#include "vgg/shape.hpp"

namespace vgg {

template <int In, int Out, int H, int W>
class Conv3x3Relu : public WeightAndBias {
 public:
  static constexpr Shape input_shape{In, H, W};
  static constexpr Shape output_shape{Out, H, W};
  static constexpr long long weight_size = 9LL * In * Out;
  static constexpr long long num_params = weight_size + Out;
  static constexpr int torch_modules = 2;
  static constexpr bool ends_block = false;
  // A following 2x2 max-pool can run inside this layer: forward_pooled and backward_pooled.
  static constexpr bool can_pool_output = true;
  static constexpr double flops_per_sample = 2.0 * weight_size * H * W;
  static constexpr bool is_identity(Mode) { return false; }

  Conv3x3Relu() : WeightAndBias(std::size_t(weight_size), std::size_t(Out)) {}

  void reset_parameters(Rng& rng) { init_pytorch_default(weight(), bias(), 9L * In, rng); }
  void reserve(int /*batch*/, int threads) { workspace_.reserve(geometry(), threads); }
  void reserve_backward(int /*batch*/, int threads, bool pooled = false) {
    workspace_.reserve_backward(geometry(), threads, pooled);
    reserve_gradients();
  }
  void forward(const float* x, float* y, int n, const RunContext& ctx) {
    kernels::conv3x3_relu_forward(x, weight().data(), bias().data(), y, n, geometry(), workspace_, ctx.threads);
  }
  /// pooled = maxpool2x2(forward(x)), the pool taken while the conv's output is in cache. `state`
  /// (output_shape.size() floats per sample) carries what backward_pooled needs; its contents are
  /// this layer's business (the full-size output, or only the pool's winner masks).
  void forward_pooled(const float* x, float* state, float* pooled, int n, const RunContext& ctx) {
    kernels::conv3x3_relu_pool_forward(x, weight().data(), bias().data(), pooled, state, n, geometry(), workspace_,
                                       ctx.threads);
  }
  void backward(const float* x, const float* y, float* dy, float* dx, int n, const RunContext& ctx) {
    kernels::conv3x3_relu_backward(x, weight().data(), y, dy, dx, weight_grad().data(), bias_grad().data(), n,
                                   geometry(), workspace_, ctx.threads);
  }
  /// backward of maxpool2x2(this layer), given the gradient of the pooled output (left as it is)
  /// and the state that forward_pooled left.
  /// requires: reserve_backward(batch, threads, /*pooled=*/true).
  void backward_pooled(const float* x, const float* state, const float* dy_pooled, float* dx, int n,
                       const RunContext& ctx) {
    kernels::conv3x3_relu_pool_backward(x, weight().data(), state, dy_pooled, dx, weight_grad().data(),
                                        bias_grad().data(), n, geometry(), workspace_, ctx.threads);
  }

  /// f(suffix, shape, value, grad) for the weight, then the bias.
  template <class F>
  void for_each_parameter(F&& f) {
    visit(f, TensorShape{{Out, In, 3, 3}, 4});
  }
  template <class F>
  static void describe(F&& emit) {
    emit("Conv2d(" + std::to_string(In) + ", " + std::to_string(Out) +
         ", kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))");
    emit("ReLU()");
  }

 private:
  static constexpr cpu::Conv3x3Geometry geometry() { return {In, Out, H, W}; }
  cpu::Conv3x3Workspace workspace_;
};

}  // namespace vgg
