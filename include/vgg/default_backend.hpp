#pragma once
// The backend a network and an optimizer run on when none is named: the CPU, on the fastest kernel
// path compiled in. The one place outside cpu/ that names it.

#include "vgg/cpu/backend.hpp"

namespace vgg {

using DefaultBackend = cpu::Backend;

}  // namespace vgg
