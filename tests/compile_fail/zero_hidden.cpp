// expect: the number of hidden units must be positive, not zero
#include <vgg/vgg.hpp>
using Net = vgg::Vgg<vgg::Input<1, 32, 32>, vgg::VggBlock<1, 1, 8>, vgg::Classifier<0, 10>>;
static_assert(sizeof(Net) > 0);
