// expect: the pack must be vgg::Input<C, H, W>, then one or more vgg::VggBlock<NumConvs, In, Out>, then vgg::Classifier<Hidden, Classes>
#include <vgg/vgg.hpp>
using Net = vgg::Vgg<vgg::Input<1, 32, 32>, vgg::Classifier<8, 10>>;
static_assert(sizeof(Net) > 0);
