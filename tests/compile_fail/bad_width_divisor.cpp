// expect: WidthDivisor must divide 64
#include <vgg/vgg.hpp>
using Net = vgg::vgg11<vgg::Input<1, 224, 224>, 10, 3>;
static_assert(sizeof(Net) > 0);
