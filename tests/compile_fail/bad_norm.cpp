// expect: Norm must be vgg::BatchNorm \(batch norm after each conv\) or vgg::NoNorm
#include <vgg/vgg.hpp>
struct LayerNorm {};
using Net = vgg::Vgg<vgg::Input<1, 32, 32>, vgg::VggBlock<2, 1, 8, LayerNorm>, vgg::Classifier<8, 10>>;
static_assert(sizeof(Net) > 0);
