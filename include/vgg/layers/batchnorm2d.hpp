#pragma once
// BatchNorm2d with PyTorch's semantics (torch.nn.BatchNorm2d(C), eps 1e-5, momentum 0.1, affine,
// tracking running statistics), and the layer a batch-norm VGG block is made of:
// Conv2d(3x3) + BatchNorm2d + ReLU, PyTorch modules (k), (k+1) and (k+2) of the block.
//
// Training: the conv's output z (no ReLU) is normalised with the batch's statistics (biased
// variance), the running statistics move towards them by the momentum (unbiased variance), and
// the affine map and the ReLU are applied in the same pass. Eval: the running statistics are
// constants, so the norm is folded into the conv's weights and bias and the layer runs exactly as a
// plain conv + ReLU (the 2x2 max-pool after it fused as well): the eval forward costs a fold of the
// weights (O(weights), not O(activations)) and nothing else.

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "vgg/backend.hpp"
#include "vgg/context.hpp"
#include "vgg/layer.hpp"
#include "vgg/layers/winograd_offer.hpp"
#include "vgg/parameters.hpp"
#include "vgg/shape.hpp"

namespace vgg {

/// torch.nn.BatchNorm2d(C) on an n x C x H x W batch: its parameters (weight = gamma, bias =
/// beta), its state (running_mean, running_var, num_batches_tracked), what a training pass keeps
/// for its backward (the batch's mean and inverse standard deviation), and its passes.
template <int C, int H, int W, class B>
class BatchNorm2d : public WeightAndBias<B> {
 public:
  using Context = typename B::Context;
  static constexpr float eps = 1e-5f;
  static constexpr float momentum = 0.1f;
  static constexpr BatchNormShape shape{C, long(H) * W, eps, momentum};

  BatchNorm2d() : WeightAndBias<B>(std::size_t(C), std::size_t(C)) {
    for (auto* b : {&running_mean_, &running_var_, &saved_mean_, &saved_invstd_}) b->reserve(std::size_t(C));
  }

  /// PyTorch's reset_parameters and reset_running_stats: gamma 1, beta 0, mean 0, variance 1, no
  /// batches tracked.
  void reset(Context& exec) {
    this->fill(1.0f, 0.0f, exec);
    constexpr std::size_t channels = C;
    const std::vector<float> zeros(channels, 0.0f), ones(channels, 1.0f);
    B::copy_from_host(zeros.data(), running_mean_.data(), channels, exec);
    B::copy_from_host(ones.data(), running_var_.data(), channels, exec);
    num_batches_tracked_ = 0;
  }

  /// Training: y = relu(batchnorm(z)) with the batch's statistics; updates the running ones.
  /// requires: n * H * W >= 2 (else std::invalid_argument: a variance needs two values, as in PyTorch).
  void forward_relu(Context& exec, const float* z, float* y, int n) {
    if (long(n) * H * W < 2)
      throw std::invalid_argument("vgg::BatchNorm2d: training needs more than one value per channel, found a batch of " +
                                  std::to_string(n) + " of " + std::to_string(H) + " x " + std::to_string(W) +
                                  " (PyTorch refuses it too); use a larger batch or eval mode");
    B::batchnorm_relu_forward(exec, shape, z, tensors(), y, n);
    ++num_batches_tracked_;
  }
  /// Backward of the last forward_relu: dz (may be dy) and the gradients of gamma and beta.
  void backward_relu(Context& exec, const float* z, const float* y, const float* dy, float* dz, int n) {
    B::batchnorm_relu_backward(exec, shape, z, y, dy, tensors(), dz, this->weight_grad().data(),
                               this->bias_grad().data(), n);
  }

  /// Eval: the conv (weight: C x fan_in, bias: C) with this norm folded in.
  void fold(Context& exec, const float* weight, const float* bias, long fan_in, float* folded_weight,
            float* folded_bias) {
    B::batchnorm_fold(exec, shape, weight, bias, fan_in, tensors(), folded_weight, folded_bias);
  }
  /// Eval backward: from the folded conv's gradients to the conv's (in place allowed) and gamma's
  /// and beta's.
  void fold_backward(Context& exec, const float* weight, const float* bias, long fan_in,
                     const float* folded_weight_grad, const float* folded_bias_grad, float* weight_grad,
                     float* bias_grad) {
    B::batchnorm_fold_backward(exec, shape, weight, bias, fan_in, tensors(), folded_weight_grad, folded_bias_grad,
                               weight_grad, bias_grad, this->weight_grad().data(), this->bias_grad().data());
  }

  std::span<float> running_mean() { return {running_mean_.data(), std::size_t(C)}; }
  std::span<float> running_var() { return {running_var_.data(), std::size_t(C)}; }
  std::int64_t& num_batches_tracked() { return num_batches_tracked_; }

  /// f(module, suffix, shape, value, grad) for gamma, then beta.
  template <class F>
  void for_each_parameter(F&& f, int module) {
    this->visit(f, TensorShape{{C}, 1}, module);
  }
  /// f(module, suffix, shape, value) for the running mean, then the running variance.
  template <class F>
  void for_each_state(F&& f, int module) {
    f(module, "running_mean", TensorShape{{C}, 1}, running_mean());
    f(module, "running_var", TensorShape{{C}, 1}, running_var());
  }
  template <class F>
  void for_each_counter(F&& f, int module) {
    f(module, "num_batches_tracked", num_batches_tracked_);
  }
  static std::string description() {
    return "BatchNorm2d(" + std::to_string(C) + ", eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)";
  }

 private:
  BatchNormTensors tensors() {
    return {this->weight().data(), this->bias().data(), running_mean_.data(), running_var_.data(),
            saved_mean_.data(), saved_invstd_.data()};
  }

  typename B::template Buffer<float> running_mean_, running_var_, saved_mean_, saved_invstd_;
  std::int64_t num_batches_tracked_ = 0;
};

/// Conv2d(In, Out, 3x3, padding 1) + BatchNorm2d(Out) + ReLU: the layer of a batch-norm VGG block.
/// Its parameters are the conv's weight and bias (module k) and the norm's weight and bias (module
/// k + 1); its state the norm's running statistics.
template <int In, int Out, int H, int W, class B>
class Conv3x3BatchNormRelu : public WeightAndBias<B> {
 public:
  using backend = B;
  using Context = typename B::Context;
  static constexpr Shape input_shape{In, H, W};
  static constexpr Shape output_shape{Out, H, W};
  static constexpr long fan_in = 9L * In;
  static constexpr long long weight_size = 9LL * In * Out;
  static constexpr long long num_params = weight_size + Out + 2LL * Out;
  static constexpr long long num_state = 2LL * Out;  // running mean and variance
  static constexpr bool has_state = true;
  static constexpr int torch_modules = 3;
  static constexpr bool ends_block = false;
  static constexpr bool can_pool_output = true;
  static constexpr double flops_per_sample = 2.0 * weight_size * H * W + 8.0 * Out * H * W;
  static constexpr ConvShape shape{In, Out, H, W};
  static constexpr bool is_identity(Mode) { return false; }

  Conv3x3BatchNormRelu() : WeightAndBias<B>(std::size_t(weight_size), std::size_t(Out)) {
    folded_weight_.reserve(std::size_t(weight_size));
    folded_bias_.reserve(std::size_t(Out));
  }

  /// The conv as PyTorch initialises it, then the norm's defaults (drawing nothing).
  void reset_parameters(Rng& rng, Context& exec) {
    this->reset(rng, fan_in, exec);
    norm_.reset(exec);
  }
  /// Buffers for both modes: the training pass keeps the conv's output z (and, pooled, the norm's
  /// full-size output); the eval pass needs the folded weights (and, pooled, the pool's state).
  void reserve(Context& exec, int batch, bool pooled = false) {
    const std::size_t full = std::size_t(batch) * output_shape.size();
    workspace_.reserve(exec, shape, batch);
    z_.reserve(full);
    if (pooled) {
      pool_state_.reserve(shape, batch);
      y_.reserve(full);
    }
  }
  void reserve_backward(Context& exec, int batch, bool pooled = false) {
    workspace_.reserve_backward(exec, shape, batch, pooled);
    this->reserve_gradients();
    norm_.reserve_gradients();
    if (pooled) dy_.reserve(std::size_t(batch) * output_shape.size());
    winograd_.reserve_backward(shape, batch, pooled);
  }

  void forward(Context& exec, const float* x, float* y, int n, const RunContext& ctx) {
    if (ctx.mode == Mode::train) {
      B::conv3x3_forward(exec, workspace_, shape, x, this->weight().data(), this->bias().data(), z_.data(), n);
      norm_.forward_relu(exec, z_.data(), y, n);
    } else {
      fold(exec);
      if (winograd_.forward(exec, workspace_, shape, x, folded_weight_.data(), folded_bias_.data(), y, n, Mode::eval))
        return;
      B::conv3x3_relu_forward(exec, workspace_, shape, x, folded_weight_.data(), folded_bias_.data(), y, n);
    }
  }
  /// pooled = maxpool2x2(forward(x)). Eval: the folded conv with the pool inside it. Training: the
  /// norm's output is kept whole (the pool's backward needs its winners).
  /// requires: reserve(exec, batch, /*pooled=*/true) with batch >= n.
  void forward_pooled(Context& exec, const float* x, float* pooled, int n, const RunContext& ctx) {
    if (ctx.mode == Mode::train) {
      forward(exec, x, y_.data(), n, ctx);
      B::maxpool2x2_forward(exec, y_.data(), pooled, long(n) * Out, H, W);
    } else {
      fold(exec);
      // Winograd keeps no winner masks: an eval backward after it rebuilds them (backward_pooled).
      if (winograd_.forward_pooled(nullptr, exec, workspace_, shape, x, folded_weight_.data(), folded_bias_.data(),
                                   pooled, n))
        return;
      B::conv3x3_relu_pool_forward(exec, workspace_, pool_state_, shape, x, folded_weight_.data(),
                                   folded_bias_.data(), pooled, n);
    }
  }
  /// Overwrites dy (with the gradient behind the norm in training, behind the ReLU in eval).
  void backward(Context& exec, const float* x, const float* y, float* dy, float* dx, int n, const RunContext& ctx) {
    if (ctx.mode == Mode::train) {
      norm_.backward_relu(exec, z_.data(), y, dy, dy, n);
      B::conv3x3_backward(exec, workspace_, shape, x, this->weight().data(), dy, dx, this->weight_grad().data(),
                          this->bias_grad().data(), n);
    } else {
      B::conv3x3_relu_backward(exec, workspace_, shape, x, folded_weight_.data(), y, dy, dx,
                               this->weight_grad().data(), this->bias_grad().data(), n);
      unfold_gradients(exec);
    }
  }
  /// requires: reserve_backward(exec, batch, /*pooled=*/true); x is the input of the last forward_pooled.
  void backward_pooled(Context& exec, const float* x, const float* dy_pooled, float* dx, int n, const RunContext& ctx) {
    if (ctx.mode == Mode::train) {
      B::maxpool2x2_backward(exec, y_.data(), dy_pooled, dy_.data(), long(n) * Out, H, W);
      backward(exec, x, y_.data(), dy_.data(), dx, n, ctx);
    } else {
      winograd_.restore_pool_state(exec, workspace_, pool_state_, shape, x, folded_weight_.data(),
                                   folded_bias_.data(), n);
      B::conv3x3_relu_pool_backward(exec, workspace_, pool_state_, shape, x, folded_weight_.data(), dy_pooled, dx,
                                    this->weight_grad().data(), this->bias_grad().data(), n);
      unfold_gradients(exec);
    }
  }

  BatchNorm2d<Out, H, W, B>& norm() { return norm_; }

  /// f(module, suffix, shape, value, grad): the conv's weight and bias (module 0), the norm's (module 1).
  template <class F>
  void for_each_parameter(F&& f) {
    this->visit(f, TensorShape{{Out, In, 3, 3}, 4});
    norm_.for_each_parameter(f, 1);
  }
  template <class F>
  void for_each_state(F&& f) {
    norm_.for_each_state(f, 1);
  }
  template <class F>
  void for_each_counter(F&& f) {
    norm_.for_each_counter(f, 1);
  }
  template <class F>
  static void describe(F&& emit) {
    emit("Conv2d(" + std::to_string(In) + ", " + std::to_string(Out) +
         ", kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))");
    emit(BatchNorm2d<Out, H, W, B>::description());
    emit("ReLU()");
  }

 private:
  void fold(Context& exec) {
    norm_.fold(exec, this->weight().data(), this->bias().data(), fan_in, folded_weight_.data(), folded_bias_.data());
  }
  /// The conv's gradients were computed for the folded weights; turn them into the conv's and the norm's.
  void unfold_gradients(Context& exec) {
    norm_.fold_backward(exec, this->weight().data(), this->bias().data(), fan_in, this->weight_grad().data(),
                        this->bias_grad().data(), this->weight_grad().data(), this->bias_grad().data());
  }

  BatchNorm2d<Out, H, W, B> norm_;
  typename B::ConvWorkspace workspace_;
  typename B::PoolState pool_state_;
  typename B::template Buffer<float> folded_weight_, folded_bias_;
  typename B::template Buffer<float> z_;   // training: the conv's output, before the norm
  typename B::template Buffer<float> y_;   // training, pooled: the norm's output, before the pool
  typename B::template Buffer<float> dy_;  // training, pooled: its gradient
  // Eval offers the folded conv to Winograd; the folded weights are recomputed bit-identically each
  // pass, so the cached filter transform stays valid until the conv's or the norm's parameters change.
  WinogradOffer<B> winograd_;
};

}  // namespace vgg
