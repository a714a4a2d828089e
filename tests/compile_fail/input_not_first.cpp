// expect: the first element of the pack must be vgg::Input<C, H, W>
#include <vgg/vgg.hpp>
using Net = vgg::Vgg<vgg::VggBlock<1, 1, 8>, vgg::Input<1, 32, 32>, vgg::Classifier<8, 10>>;
static_assert(sizeof(Net) > 0);
