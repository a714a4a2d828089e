#pragma once
// vgg::VggBlock: the description of one VGG block. It carries numbers only; network.hpp turns
// a pack of blocks into a flat list of layers.

#include "vgg/shape.hpp"

namespace vgg {

/// NumConvs x (3x3 conv, stride 1, padding 1, bias, ReLU), then a 2x2 max-pool with stride 2.
template <int NumConvs, int In, int Out>
struct VggBlock {
  static_assert(NumConvs >= 1,
                "vgg::VggBlock<NumConvs, In, Out>: NumConvs must be at least 1; a VGG block needs a convolution.");
  static_assert(In >= 1, "vgg::VggBlock<NumConvs, In, Out>: the input channel count In must be positive, not zero.");
  static_assert(Out >= 1, "vgg::VggBlock<NumConvs, In, Out>: the output channel count Out must be positive, not zero.");

  static constexpr int num_convs = NumConvs;
  static constexpr int in_channels = In;
  static constexpr int out_channels = Out;

  /// Output of the block for an input of shape `s` (whose channel count must be In).
  static constexpr Shape output_shape(Shape s) { return {Out, pooled(s.h), pooled(s.w)}; }
  static constexpr long long num_params() {
    return 9LL * In * Out + Out + (NumConvs - 1) * (9LL * Out * Out + Out);
  }
};

template <class T>
inline constexpr bool is_vgg_block = false;
template <int N, int I, int O>
inline constexpr bool is_vgg_block<VggBlock<N, I, O>> = true;

}  // namespace vgg
