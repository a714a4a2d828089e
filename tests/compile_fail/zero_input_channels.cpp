// expect: vgg::Input<C, H, W>: the channel count C must be positive
#include <vgg/vgg.hpp>
using Net = vgg::Vgg<vgg::Input<0, 32, 32>, vgg::VggBlock<1, 0, 8>, vgg::Classifier<8, 10>>;
static_assert(sizeof(Net) > 0);
