#pragma once
// What a layer needs to know about the current pass besides its data.

#include <cstdint>

namespace vgg {

/// Eval: dropout is the identity. Train: dropout is active (and, with training, gradients flow).
enum class Mode { eval, train };

struct RunContext {
  Mode mode = Mode::eval;
  int threads = 1;
  std::uint64_t seed = 0;         ///< network seed; dropout masks derive from it
  std::uint64_t step = 0;         ///< training forward passes so far; new masks each step
  std::uint64_t layer_index = 0;  ///< position of the layer in the flat pack
  // Backward only: a ReLU mask moved from one layer to the next, set by the network for adjacent
  // layers that both support it (a max-pool after a conv + ReLU), to save two passes over the
  // largest activations of a training step.
  bool mask_dx_with_relu = false;  ///< write dx already multiplied by (x > 0): x is a ReLU output
  bool dy_relu_masked = false;     ///< dy already carries this layer's ReLU mask: do not apply it again
};

}  // namespace vgg
