// expect: the last element of the pack must be vgg::Classifier<Hidden, Classes>
#include <vgg/vgg.hpp>
using Net = vgg::Vgg<vgg::Input<1, 32, 32>, vgg::VggBlock<1, 1, 8>, vgg::Classifier<8, 10>, vgg::VggBlock<1, 8, 8>>;
static_assert(sizeof(Net) > 0);
