#pragma once
// The paper's configurations A, B, D, E (torchvision's vgg11, vgg13, vgg16, vgg19), with the
// D2L chapter's width divisor: every conv width and the head width are divided by it.
// vgg11_bn ... vgg19_bn add batch norm after every conv.
// vgg11<Input<1, 224, 224>, 10, 8> is the chapter's small net: 8, 16, 32, 64, 64 channels, head
// 3136-512-512-10.

#include <type_traits>

#include "vgg/block.hpp"
#include "vgg/classifier.hpp"
#include "vgg/network.hpp"
#include "vgg/shape.hpp"

namespace vgg {
namespace detail {

template <class InputT, int Classes, int Divisor, class Norm, int N1, int N2, int N3, int N4, int N5,
          bool Torchvision = false>
struct preset {
  static_assert(Divisor >= 1 && 64 % Divisor == 0,
                "vgg::vgg11/13/16/19[_bn]<Input, Classes, WidthDivisor>: WidthDivisor must divide 64 (1, 2, 4, 8, "
                "16, 32 or 64), since every VGG width is a multiple of 64.");
  static constexpr int d = (Divisor >= 1 && 64 % Divisor == 0) ? Divisor : 1;
  using type = Vgg<InputT, VggBlock<N1, InputT::shape.c, 64 / d, Norm>, VggBlock<N2, 64 / d, 128 / d, Norm>,
                   VggBlock<N3, 128 / d, 256 / d, Norm>, VggBlock<N4, 256 / d, 512 / d, Norm>,
                   VggBlock<N5, 512 / d, 512 / d, Norm>,
                   std::conditional_t<Torchvision, TorchvisionClassifier<4096 / d, Classes>, Classifier<4096 / d, Classes>>>;
};

}  // namespace detail

/// Configuration A: 1, 1, 2, 2, 2 convolutions per block (VGG-11).
template <class InputT, int Classes = 1000, int WidthDivisor = 1>
using vgg11 = typename detail::preset<InputT, Classes, WidthDivisor, NoNorm, 1, 1, 2, 2, 2>::type;
/// Configuration B: 2, 2, 2, 2, 2 (VGG-13).
template <class InputT, int Classes = 1000, int WidthDivisor = 1>
using vgg13 = typename detail::preset<InputT, Classes, WidthDivisor, NoNorm, 2, 2, 2, 2, 2>::type;
/// Configuration D: 2, 2, 3, 3, 3 (VGG-16).
template <class InputT, int Classes = 1000, int WidthDivisor = 1>
using vgg16 = typename detail::preset<InputT, Classes, WidthDivisor, NoNorm, 2, 2, 3, 3, 3>::type;
/// Configuration E: 2, 2, 4, 4, 4 (VGG-19).
template <class InputT, int Classes = 1000, int WidthDivisor = 1>
using vgg19 = typename detail::preset<InputT, Classes, WidthDivisor, NoNorm, 2, 2, 4, 4, 4>::type;


// The same configurations with batch norm after every conv (torchvision's vgg11_bn ... vgg19_bn):
// every block is VggBlock<N, In, Out, vgg::BatchNorm>.

/// Configuration A with batch norm (VGG-11-BN).
template <class InputT, int Classes = 1000, int WidthDivisor = 1>
using vgg11_bn = typename detail::preset<InputT, Classes, WidthDivisor, BatchNorm, 1, 1, 2, 2, 2>::type;
/// Configuration B with batch norm (VGG-13-BN).
template <class InputT, int Classes = 1000, int WidthDivisor = 1>
using vgg13_bn = typename detail::preset<InputT, Classes, WidthDivisor, BatchNorm, 2, 2, 2, 2, 2>::type;
/// Configuration D with batch norm (VGG-16-BN).
template <class InputT, int Classes = 1000, int WidthDivisor = 1>
using vgg16_bn = typename detail::preset<InputT, Classes, WidthDivisor, BatchNorm, 2, 2, 3, 3, 3>::type;
/// Configuration E with batch norm (VGG-19-BN).
template <class InputT, int Classes = 1000, int WidthDivisor = 1>
using vgg19_bn = typename detail::preset<InputT, Classes, WidthDivisor, BatchNorm, 2, 2, 4, 4, 4>::type;


/// torchvision.models.vgg11 ... vgg19_bn exactly: 3x224x224 input, modules `features`, `avgpool`
/// (AdaptiveAvgPool2d((7, 7))) and `classifier` (25088-4096-4096-Classes, ReLU and Dropout(0.5) as
/// torchvision orders them), state_dict keys features.0.weight ... classifier.6.bias. The
/// checkpoint of vgg::torchvision::vgg16<> is torchvision's vgg16 state dict (tools/torch_to_safetensors.py).
/// WidthDivisor and InputT exist for small tests; another input size keeps the 7x7 pool, as
/// torchvision does (the pool then averages or repeats pixels).
namespace torchvision {
template <int Classes = 1000, int WidthDivisor = 1, class InputT = Input<3, 224, 224>>
using vgg11 = typename detail::preset<InputT, Classes, WidthDivisor, NoNorm, 1, 1, 2, 2, 2, true>::type;
template <int Classes = 1000, int WidthDivisor = 1, class InputT = Input<3, 224, 224>>
using vgg13 = typename detail::preset<InputT, Classes, WidthDivisor, NoNorm, 2, 2, 2, 2, 2, true>::type;
template <int Classes = 1000, int WidthDivisor = 1, class InputT = Input<3, 224, 224>>
using vgg16 = typename detail::preset<InputT, Classes, WidthDivisor, NoNorm, 2, 2, 3, 3, 3, true>::type;
template <int Classes = 1000, int WidthDivisor = 1, class InputT = Input<3, 224, 224>>
using vgg19 = typename detail::preset<InputT, Classes, WidthDivisor, NoNorm, 2, 2, 4, 4, 4, true>::type;
template <int Classes = 1000, int WidthDivisor = 1, class InputT = Input<3, 224, 224>>
using vgg11_bn = typename detail::preset<InputT, Classes, WidthDivisor, BatchNorm, 1, 1, 2, 2, 2, true>::type;
template <int Classes = 1000, int WidthDivisor = 1, class InputT = Input<3, 224, 224>>
using vgg13_bn = typename detail::preset<InputT, Classes, WidthDivisor, BatchNorm, 2, 2, 2, 2, 2, true>::type;
template <int Classes = 1000, int WidthDivisor = 1, class InputT = Input<3, 224, 224>>
using vgg16_bn = typename detail::preset<InputT, Classes, WidthDivisor, BatchNorm, 2, 2, 3, 3, 3, true>::type;
template <int Classes = 1000, int WidthDivisor = 1, class InputT = Input<3, 224, 224>>
using vgg19_bn = typename detail::preset<InputT, Classes, WidthDivisor, BatchNorm, 2, 2, 4, 4, 4, true>::type;
}  // namespace torchvision

}  // namespace vgg
