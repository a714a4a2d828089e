#pragma once
// What a 3x3 conv + ReLU layer does to offer its forward to the backend's Winograd path, shared by
// Conv3x3Relu and Conv3x3BatchNormRelu (which offers its folded conv): the call, where the backend
// has one (the CPU's; its winograd_rule picks the layers), and the pool state that Winograd's fused
// pool does not keep in eval, rebuilt by the direct path before a pooled backward.

#include <cstddef>

#include "vgg/backend.hpp"
#include "vgg/context.hpp"

namespace vgg {

template <class B>
class WinogradOffer {
 public:
  using Context = typename B::Context;
  static constexpr bool available =
      requires { &B::conv3x3_relu_forward_winograd; &B::conv3x3_relu_pool_forward_winograd; };

  /// The pooled output a rebuild recomputes: reserved with the backward, Winograd layers only.
  void reserve_backward(const ConvShape& s, int batch, bool pooled) {
    if constexpr (available) {
      if (pooled && B::winograd_rule(s)) repooled_.reserve(std::size_t(batch) * s.cout * (s.h / 2) * (s.w / 2));
    }
  }
  /// y = relu(conv(x)) by Winograd; false (nothing done) where the backend declines. `mode`: the
  /// network's (training decides by the batch alone, eval also reuses a transform of repeated weights).
  bool forward(Context& exec, typename B::ConvWorkspace& ws, const ConvShape& s, const float* x, const float* weight,
               const float* bias, float* y, int n, Mode mode) {
    return run(exec, ws, s, x, weight, bias, y, nullptr, n, mode);
  }
  /// pooled = maxpool2x2(relu(conv(x))) by Winograd where the backend accepts; false (nothing done,
  /// the pool state left to the direct forward) otherwise. With `state` (a training forward) the
  /// backend writes the pool state too; without (eval, faster) it is left stale, to be rebuilt by
  /// restore_pool_state should a backward follow.
  bool forward_pooled(typename B::PoolState* state, Context& exec, typename B::ConvWorkspace& ws, const ConvShape& s,
                      const float* x, const float* weight, const float* bias, float* pooled, int n) {
    if constexpr (available) {
      if (state) {
        pool_state_stale_ = false;
        return B::conv3x3_relu_pool_forward_winograd(exec, ws, *state, s, x, weight, bias, pooled, n);
      }
    }
    pool_state_stale_ = run(exec, ws, s, x, weight, bias, nullptr, pooled, n, Mode::eval);
    return pool_state_stale_;
  }
  /// Before a pooled backward: after a Winograd forward_pooled, the direct fused forward (same x,
  /// weight and bias) rebuilds the pool state the backward reads.
  /// requires: reserve_backward(s, batch, /*pooled=*/true) with batch >= n.
  void restore_pool_state(Context& exec, typename B::ConvWorkspace& ws, typename B::PoolState& state,
                          const ConvShape& s, const float* x, const float* weight, const float* bias, int n) {
    if (!pool_state_stale_) return;
    B::conv3x3_relu_pool_forward(exec, ws, state, s, x, weight, bias, repooled_.data(), n);
    pool_state_stale_ = false;
  }

 private:
  bool run(Context& exec, typename B::ConvWorkspace& ws, const ConvShape& s, const float* x, const float* weight,
           const float* bias, float* y, float* pooled, int n, Mode mode) {
    if constexpr (available) return B::conv3x3_relu_forward_winograd(exec, ws, s, x, weight, bias, y, pooled, n, mode);
    return false;
  }

  bool pool_state_stale_ = false;
  typename B::template Buffer<float> repooled_;
};

}  // namespace vgg
