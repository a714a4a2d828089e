// The README's usage snippet, compiled so that it stays true.
#include <vgg/vgg.hpp>

#include <cstdint>
#include <iostream>
#include <memory>
#include <vector>

using Vgg11 = vgg::Vgg<vgg::Input<1, 224, 224>,
                       vgg::VggBlock<1, 1, 64>,
                       vgg::VggBlock<1, 64, 128>,
                       vgg::VggBlock<2, 128, 256>,
                       vgg::VggBlock<2, 256, 512>,
                       vgg::VggBlock<2, 512, 512>,
                       vgg::Classifier<4096, 10>>;
static_assert(Vgg11::feature_shape == vgg::Shape{512, 7, 7});  // derived, never hand-computed

using Small = vgg::vgg11<vgg::Input<1, 224, 224>, 10, /*width divisor*/ 8>;  // the trained net

int main() {
  auto net = std::make_unique<Small>(/*seed=*/1);  // PyTorch's default initialisation
  vgg::Tensor4 x(64, 1, 224, 224);                  // N x C x H x W, PyTorch's memory layout
  x.setRandom();
  auto logits = net->forward(x);  // 64 x 10, no allocation after the first call
  std::cout << "logits: " << logits.dimension(0) << " x " << logits.dimension(1) << '\n';

  std::vector<std::int32_t> labels(64, 3);
  vgg::Adam adam({.lr = 1e-3f});
  auto r = vgg::train_step(*net, adam, {x.data(), std::size_t(x.size())}, labels);  // r.loss, r.correct
  std::cout << "loss " << r.loss << ", correct " << r.correct << '\n';
  vgg::print_modules<Small>(std::cout);  // like PyTorch's print(net)
}
