// expect: the output channel count Out must be positive, not zero
#include <vgg/vgg.hpp>
using Net = vgg::Vgg<vgg::Input<1, 32, 32>, vgg::VggBlock<1, 1, 0>, vgg::Classifier<8, 10>>;
static_assert(sizeof(Net) > 0);
