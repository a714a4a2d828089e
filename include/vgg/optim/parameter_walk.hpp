#pragma once
// The walk every optimizer makes: each parameter tensor with its gradient and its offset in the
// flat, network-ordered state buffers the optimizer owns.

#include <cstddef>
#include <span>
#include <stdexcept>
#include <string>

namespace vgg::detail {

/// Calls f(value, grad, offset) for every parameter tensor of `net` that is not frozen
/// (net.parameter_frozen: fine-tuning with frozen features), in network order; frozen tensors are
/// skipped as PyTorch's optimizers skip parameters without a gradient (no update, no weight
/// decay, their state untouched), but still count in the offsets.
/// throws std::logic_error naming `who` when a parameter has no gradient yet.
template <class Net, class F>
void for_each_parameter_with_offset(Net& net, const char* who, F&& f) {
  std::size_t offset = 0, index = 0;
  net.for_each_parameter_data([&](std::span<float> value, std::span<float> grad) {
    bool frozen = false;
    if constexpr (requires { net.parameter_frozen(index); }) frozen = net.parameter_frozen(index);
    ++index;
    if (frozen) {
      offset += value.size();
      return;
    }
    if (grad.size() != value.size())
      throw std::logic_error(std::string(who) + ": a parameter has no gradient; run backward first");
    f(value, grad, offset);
    offset += value.size();
  });
}

}  // namespace vgg::detail
