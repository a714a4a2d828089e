#pragma once
// What a layer needs to know about the current pass besides its data. How the pass runs (threads,
// a stream) is the backend's execution context (backend.hpp), handed to layers beside this one.

#include <cstdint>

namespace vgg {

/// Eval: dropout is the identity. Train: dropout is active (and, with training, gradients flow).
enum class Mode { eval, train };

struct RunContext {
  Mode mode = Mode::eval;
  std::uint64_t seed = 0;         ///< network seed; dropout masks derive from it
  std::uint64_t step = 0;         ///< training forward passes so far; new masks each step
  std::uint64_t layer_index = 0;  ///< position of the layer in the flat pack
};

}  // namespace vgg
