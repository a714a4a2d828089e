// The chapter's two printouts: the shape trace of VGG-11 for one 1x224x224 image, and the module
// tree of the narrow (width / 8) VGG-11 that the chapter trains.
#include <vgg/vgg.hpp>

#include <iostream>

using Vgg11 = vgg::Vgg<vgg::Input<1, 224, 224>,
                       vgg::VggBlock<1, 1, 64>,
                       vgg::VggBlock<1, 64, 128>,
                       vgg::VggBlock<2, 128, 256>,
                       vgg::VggBlock<2, 256, 512>,
                       vgg::VggBlock<2, 512, 512>,
                       vgg::Classifier<4096, 10>>;
static_assert(Vgg11::feature_shape == vgg::Shape{512, 7, 7});

using Small = vgg::vgg11<vgg::Input<1, 224, 224>, 10, /*width divisor*/ 8>;
static_assert(Small::feature_shape == vgg::Shape{64, 7, 7});

int main() {
  auto net = std::make_unique<Vgg11>(/*seed=*/0);
  vgg::Tensor4 x(1, 1, 224, 224);
  x.setRandom();
  std::cout << "VGG-11, one 1x224x224 image:\n";
  vgg::trace_shapes(*net, x, std::cout);

  std::cout << "\nThe width / 8 VGG-11 that the chapter trains:\n";
  Small small(/*seed=*/0);
  vgg::print_modules<Small>(std::cout);
  vgg::print_parameter_counts(small, std::cout);
}
