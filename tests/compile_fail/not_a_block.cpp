// expect: every element between vgg::Input and vgg::Classifier must be a vgg::VggBlock<NumConvs, In, Out>
// expect: check_stage_is_block<vgg::detail::pack_position\{3\}, false>
#include <vgg/vgg.hpp>
using Net = vgg::Vgg<vgg::Input<1, 32, 32>, vgg::VggBlock<1, 1, 8>, int, vgg::Classifier<8, 10>>;
static_assert(sizeof(Net) > 0);
