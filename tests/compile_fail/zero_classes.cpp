// expect: the number of classes must be positive, not zero
#include <vgg/vgg.hpp>
using Net = vgg::Vgg<vgg::Input<1, 32, 32>, vgg::VggBlock<1, 1, 8>, vgg::Classifier<8, 0>>;
static_assert(sizeof(Net) > 0);
