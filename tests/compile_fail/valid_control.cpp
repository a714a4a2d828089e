// expect-success: the harness itself compiles a correct network (guards against false passes)
#include <vgg/vgg.hpp>
using Net = vgg::vgg11<vgg::Input<1, 32, 32>, 10, 8>;
static_assert(Net::feature_shape == vgg::Shape{64, 1, 1});
