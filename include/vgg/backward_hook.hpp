#pragma once
// A callback that Network::backward runs after each layer whose parameters' gradients it has just
// finished, in backward order (the last layer first). Data-parallel training starts reducing a
// bucket of gradients from it while the earlier layers' backward still runs (distributed.hpp);
// the network knows nothing of what the callback does. A plain function pointer and an object
// pointer, not std::function: setting one never allocates, and an unset hook costs one branch per
// parameterised layer.

#include <cstddef>

namespace vgg {

/// The parameters whose gradients one layer's backward has just set, and which no later part of
/// this backward pass touches: tensors [first_tensor, end_tensor) in network order (as
/// for_each_parameter and for_each_parameter_data visit them), which are floats
/// [first_float, end_float) of the parameters laid end to end (as copy_parameters_to_host writes
/// them). On a device backend the gradients are final in stream order (their kernels are enqueued).
struct FinishedGradients {
  std::size_t layer = 0;  ///< the layer's index in the flat pack
  std::size_t first_tensor = 0, end_tensor = 0;
  std::size_t first_float = 0, end_float = 0;
};

/// call(self, finished) after each parameterised layer's backward; unset (call == nullptr): nothing.
/// The callback may throw: backward() stops and rethrows, leaving the other gradients unspecified.
struct BackwardHook {
  void (*call)(void* self, const FinishedGradients& finished) = nullptr;
  void* self = nullptr;
  explicit operator bool() const { return call != nullptr; }
};

}  // namespace vgg
