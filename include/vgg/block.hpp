#pragma once
// vgg::VggBlock: the description of one VGG block. It carries numbers only; network.hpp turns
// a pack of blocks into a flat list of layers.

#include <type_traits>

#include "vgg/shape.hpp"

namespace vgg {

/// The normalisation of a VggBlock's convolutions: none (the chapter's VGG, torchvision's vgg11 ...
/// vgg19) or batch norm after each conv (torchvision's vgg11_bn ... vgg19_bn).
struct NoNorm {
  static constexpr const char* name = "";
};
/// torch.nn.BatchNorm2d after each conv (eps 1e-5, momentum 0.1, affine, running statistics).
struct BatchNorm {
  static constexpr const char* name = "BatchNorm";
};

template <class T>
inline constexpr bool is_norm = false;
template <>
inline constexpr bool is_norm<NoNorm> = true;
template <>
inline constexpr bool is_norm<BatchNorm> = true;

/// NumConvs x (3x3 conv, stride 1, padding 1, bias, [BatchNorm2d,] ReLU), then a 2x2 max-pool with
/// stride 2. Norm is vgg::NoNorm (the default) or vgg::BatchNorm: VggBlock<2, 64, 128, vgg::BatchNorm>.
template <int NumConvs, int In, int Out, class Norm = NoNorm>
struct VggBlock {
  static_assert(NumConvs >= 1,
                "vgg::VggBlock<NumConvs, In, Out>: NumConvs must be at least 1; a VGG block needs a convolution.");
  static_assert(In >= 1, "vgg::VggBlock<NumConvs, In, Out>: the input channel count In must be positive, not zero.");
  static_assert(Out >= 1, "vgg::VggBlock<NumConvs, In, Out>: the output channel count Out must be positive, not zero.");
  static_assert(is_norm<Norm>,
                "vgg::VggBlock<NumConvs, In, Out, Norm>: Norm must be vgg::BatchNorm (batch norm after each conv) "
                "or vgg::NoNorm (none, the default).");

  static constexpr int num_convs = NumConvs;
  static constexpr int in_channels = In;
  static constexpr int out_channels = Out;
  static constexpr bool batch_norm = std::is_same_v<Norm, BatchNorm>;
  using norm = Norm;

  /// Output of the block for an input of shape `s` (whose channel count must be In).
  static constexpr Shape output_shape(Shape s) { return {Out, pooled(s.h), pooled(s.w)}; }
  static constexpr long long num_params() {
    const long long norm_params = batch_norm ? 2LL * Out * NumConvs : 0;
    return 9LL * In * Out + Out + (NumConvs - 1) * (9LL * Out * Out + Out) + norm_params;
  }
};

template <class T>
inline constexpr bool is_vgg_block = false;
template <int N, int I, int O, class Norm>
inline constexpr bool is_vgg_block<VggBlock<N, I, O, Norm>> = true;

}  // namespace vgg
