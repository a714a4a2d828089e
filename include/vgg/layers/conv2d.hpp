#pragma once
// Conv2d(In, Out, 3x3, stride 1, padding 1) followed by ReLU, fused: PyTorch modules (k) and (k+1)
// of a VGG block.

#include <string>

#include "vgg/backend.hpp"
#include "vgg/context.hpp"
#include "vgg/layer.hpp"
#include "vgg/layers/winograd_offer.hpp"
#include "vgg/parameters.hpp"
#include "vgg/shape.hpp"

namespace vgg {

template <int In, int Out, int H, int W, class B>
class Conv3x3Relu : public WeightAndBias<B> {
 public:
  using backend = B;
  using Context = typename B::Context;
  static constexpr Shape input_shape{In, H, W};
  static constexpr Shape output_shape{Out, H, W};
  static constexpr long long weight_size = 9LL * In * Out;
  static constexpr long long num_params = weight_size + Out;
  static constexpr int torch_modules = 2;
  static constexpr bool ends_block = false;
  // A following 2x2 max-pool can run inside this layer: forward_pooled and backward_pooled.
  static constexpr bool can_pool_output = true;
  static constexpr double flops_per_sample = 2.0 * weight_size * H * W;
  static constexpr ConvShape shape{In, Out, H, W};
  static constexpr bool is_identity(Mode) { return false; }

  Conv3x3Relu() : WeightAndBias<B>(std::size_t(weight_size), std::size_t(Out)) {}

  void reset_parameters(Rng& rng, Context& exec) { this->reset(rng, 9L * In, exec); }
  /// With pooled, also the state that forward_pooled keeps for backward_pooled.
  void reserve(Context& exec, int batch, bool pooled = false) {
    workspace_.reserve(exec, shape, batch);
    if (pooled) pool_state_.reserve(shape, batch);
  }
  void reserve_backward(Context& exec, int batch, bool pooled = false) {
    workspace_.reserve_backward(exec, shape, batch, pooled);
    winograd_.reserve_backward(shape, batch, pooled);
    this->reserve_gradients();
  }
  void forward(Context& exec, const float* x, float* y, int n, const RunContext& run) {
    if (winograd_.forward(exec, workspace_, shape, x, this->weight().data(), this->bias().data(), y, n, run.mode))
      return;
    B::conv3x3_relu_forward(exec, workspace_, shape, x, this->weight().data(), this->bias().data(), y, n);
  }
  /// pooled = maxpool2x2(forward(x)), the pool taken while the conv's output is in cache; the
  /// layer keeps what backward_pooled needs (the backend's PoolState).
  /// requires: reserve(exec, batch, /*pooled=*/true) with batch >= n.
  void forward_pooled(Context& exec, const float* x, float* pooled, int n, const RunContext& run) {
    // Winograd writes the winner masks in training only (an eval backward rebuilds them, see below).
    if (winograd_.forward_pooled(run.mode == Mode::eval ? nullptr : &pool_state_, exec, workspace_, shape, x,
                                 this->weight().data(), this->bias().data(), pooled, n))
      return;
    B::conv3x3_relu_pool_forward(exec, workspace_, pool_state_, shape, x, this->weight().data(), this->bias().data(),
                                 pooled, n);
  }
  void backward(Context& exec, const float* x, const float* y, float* dy, float* dx, int n, const RunContext&) {
    B::conv3x3_relu_backward(exec, workspace_, shape, x, this->weight().data(), y, dy, dx,
                             this->weight_grad().data(), this->bias_grad().data(), n);
  }
  /// backward of maxpool2x2(this layer) for the last forward_pooled, given the gradient of the
  /// pooled output (left as it is).
  /// requires: reserve_backward(exec, batch, /*pooled=*/true); x is the input of that forward_pooled.
  void backward_pooled(Context& exec, const float* x, const float* dy_pooled, float* dx, int n, const RunContext&) {
    winograd_.restore_pool_state(exec, workspace_, pool_state_, shape, x, this->weight().data(), this->bias().data(), n);
    B::conv3x3_relu_pool_backward(exec, workspace_, pool_state_, shape, x, this->weight().data(), dy_pooled, dx,
                                  this->weight_grad().data(), this->bias_grad().data(), n);
  }

  /// f(module, suffix, shape, value, grad) for the weight, then the bias.
  template <class F>
  void for_each_parameter(F&& f) {
    this->visit(f, TensorShape{{Out, In, 3, 3}, 4});
  }
  template <class F>
  static void describe(F&& emit) {
    emit("Conv2d(" + std::to_string(In) + ", " + std::to_string(Out) +
         ", kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))");
    emit("ReLU()");
  }

 private:
  typename B::ConvWorkspace workspace_;
  typename B::PoolState pool_state_;
  WinogradOffer<B> winograd_;
};

}  // namespace vgg
