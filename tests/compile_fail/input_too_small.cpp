// expect: the input is too small for the pools
// expect: check_block_pool<vgg::detail::block_number\{4\}, vgg::detail::input_height\{1\}, vgg::detail::input_width\{1\}, true>
#include <vgg/vgg.hpp>
using Net = vgg::vgg11<vgg::Input<1, 8, 8>, 10, 8>;
static_assert(sizeof(Net) > 0);
