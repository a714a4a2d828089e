#pragma once
// The contract every layer of the flat pack fulfils. A layer is a small type: static input and
// output shapes, its parameters, and forward and backward side by side.

#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "vgg/backend.hpp"
#include "vgg/context.hpp"
#include "vgg/random.hpp"
#include "vgg/shape.hpp"

namespace vgg {

/// The shape of a parameter tensor, without heap storage (optimizers visit parameters every step).
struct TensorShape {
  std::array<std::int64_t, 4> dims{};
  int rank = 0;
  std::vector<std::int64_t> to_vector() const { return {dims.begin(), dims.begin() + rank}; }
};

/// A named parameter tensor as the network exposes it (names follow PyTorch's state_dict).
struct ParameterView {
  std::string name;                 ///< e.g. "vgg_block_1.0.weight"
  std::vector<std::int64_t> shape;  ///< e.g. {8, 1, 3, 3}
  std::span<float> value;
  std::span<float> grad;  ///< empty until the first backward pass
};

/// A named tensor of a layer's state that is not a parameter (batch norm's running statistics):
/// saved in checkpoints, never touched by an optimizer. Value in the backend's memory.
struct StateView {
  std::string name;                 ///< e.g. "vgg_block_1.1.running_mean"
  std::vector<std::int64_t> shape;  ///< e.g. {8}
  std::span<float> value;
};

/// A named integer counter of a layer's state (batch norm's num_batches_tracked), on the host; a
/// scalar (shape []) as PyTorch stores it.
struct CounterView {
  std::string name;  ///< e.g. "vgg_block_1.1.num_batches_tracked"
  std::int64_t* value;
};

/// A layer runs on one backend (L::backend, backend.hpp): its parameters and buffers live in that
/// backend's memory, and every pass takes the backend's execution context first.
template <class L>
concept Layer = requires(L layer, const float* x, float* y, int n, typename L::backend::Context& exec,
                         const RunContext& ctx, Rng& rng) {
  requires Backend<typename L::backend>;
  { L::input_shape } -> std::convertible_to<Shape>;
  { L::output_shape } -> std::convertible_to<Shape>;
  { L::num_params } -> std::convertible_to<long long>;
  { L::torch_modules } -> std::convertible_to<int>;  // how many PyTorch modules the layer stands for
  { L::ends_block } -> std::convertible_to<bool>;    // true for the pool that closes a VGG block
  { L::flops_per_sample } -> std::convertible_to<double>;
  layer.reset_parameters(rng, exec);
  layer.reserve(exec, n);
  layer.forward(exec, x, y, n, ctx);
  layer.reserve_backward(exec, n);
  // Backward overwrites dy (with the gradient before the fused ReLU), writes dx unless it is null,
  // and sets (not accumulates) the parameter gradients.
  layer.backward(exec, x, x, y, y, n, ctx);
  // An identity layer in this mode is skipped: its output is its input, its dx is its dy.
  { L::is_identity(ctx.mode) } -> std::convertible_to<bool>;
};

/// Layers with state beyond their parameters (batch norm) say so, and visit it with
/// for_each_state(f(module, suffix, shape, value)) and for_each_counter(f(module, suffix, int64&)).
template <class L>
inline constexpr bool has_state = requires { requires L::has_state; };

/// True when Here is a 2x2 max-pool that the layer before it (Below) can compute inside its own
/// passes (Below::forward_pooled / backward_pooled, with reserve(exec, n, /*pooled=*/true)), so
/// that Here's own passes are skipped.
template <class Below, class Here>
inline constexpr bool pool_runs_inside = requires { requires Below::can_pool_output; } &&
                                         requires { requires Here::is_2x2_max_pool; };

}  // namespace vgg
