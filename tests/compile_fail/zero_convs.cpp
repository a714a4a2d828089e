// expect: NumConvs must be at least 1; a VGG block needs a convolution
#include <vgg/vgg.hpp>
using Net = vgg::Vgg<vgg::Input<1, 32, 32>, vgg::VggBlock<0, 1, 8>, vgg::Classifier<8, 10>>;
static_assert(sizeof(Net) > 0);
