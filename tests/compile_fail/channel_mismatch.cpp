// expect: a VggBlock.s In must equal the channel count of the stage before it
// expect: check_block_channels<vgg::detail::block_number\{2\}, vgg::detail::previous_channels\{8\}, vgg::detail::declared_in\{16\}>
#include <vgg/vgg.hpp>
using Net = vgg::Vgg<vgg::Input<1, 32, 32>, vgg::VggBlock<1, 1, 8>, vgg::VggBlock<1, 16, 16>, vgg::Classifier<8, 10>>;
Net* instantiate = nullptr;
static_assert(sizeof(Net) > 0);
