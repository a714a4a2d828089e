#pragma once
// The one place where the numeric backend is chosen. Layers call vgg::kernels::*, whose CPU and
// (future) CUDA implementations are twins with the same signatures under cpu/ and cuda/.

#include "vgg/cpu/conv3x3.hpp"
#include "vgg/cpu/dropout.hpp"
#include "vgg/cpu/linear.hpp"
#include "vgg/cpu/maxpool.hpp"

namespace vgg {
namespace kernels = cpu;
}  // namespace vgg
