#pragma once
// Introspection in the spirit of the D2L chapter: a module printout like PyTorch's print(net),
// parameter counts, and a shape trace of an actual forward pass.

#include <ostream>
#include <span>
#include <string>

#include "vgg/network.hpp"
#include "vgg/tensor.hpp"

namespace vgg {

/// Prints the module tree with PyTorch's names, then the parameter count of each group.
/// A torchvision-layout net prints as print(torchvision.models.vgg16()) does: class VGG, ReLU(inplace=True)
/// and the top-level (avgpool) module.
template <class Net>
void print_modules(std::ostream& os) {
  constexpr bool tv = Net::torchvision_layout;
  os << (tv ? "VGG(\n" : "Vgg(\n");
  std::string open_group;
  bool sequential_open = false;
  Net::for_each_module([&](const std::string& group, int position, const std::string& text) {
    if (group != open_group) {
      if (sequential_open) os << "  )\n";
      open_group = group;
      sequential_open = position >= 0;
      if (!sequential_open) {  // a top-level module, not a Sequential
        os << "  (" << group << "): " << text << '\n';
        return;
      }
      os << "  (" << group << "): Sequential(\n";
    }
    os << "    (" << position << "): " << (tv && text == "ReLU()" ? std::string("ReLU(inplace=True)") : text) << '\n';
  });
  os << (sequential_open ? "  )\n)\n" : ")\n");
}

/// Prints "name: count" per parameter tensor group and the total.
template <class Net>
void print_parameter_counts(Net& net, std::ostream& os) {
  std::string group;
  long long group_total = 0, total = 0;
  auto flush = [&] {
    if (!group.empty()) os << "  " << group << ": " << group_total << '\n';
  };
  os << "Parameters:\n";
  net.for_each_parameter([&](const ParameterView& p) {
    const std::string g = p.name.substr(0, p.name.find('.'));
    if (g != group) {
      flush();
      group = g;
      group_total = 0;
    }
    group_total += (long long)p.value.size();
    total += (long long)p.value.size();
  });
  flush();
  os << "  total: " << total << '\n';
}

/// Runs `x` through the network and prints the output shape of every block and of the head,
/// as the chapter does ("vgg_block_1 output shape: [1, 64, 112, 112]").
template <class Net>
void trace_shapes(Net& net, const Tensor4& x, std::ostream& os) {
  const int batch = int(x.dimension(0));
  auto observer = [&]<class = void>(std::size_t layer, int n) {
    const auto place = Net::layer_place(layer);
    const bool last = layer + 1 == Net::num_layers;
    const bool closes_block = place.group < int(Net::num_blocks) &&
                              (layer + 1 == Net::num_layers || Net::layer_place(layer + 1).group != place.group);
    if (!closes_block && !last) return;
    if (last) {
      os << Net::group_name(place.group) << " output shape: [" << n << ", " << Net::num_classes << "]\n";
    } else {
      const Shape s = Net::block_output_shape(std::size_t(place.group));
      os << Net::group_name(place.group) << " output shape: [" << n << ", " << s.c << ", " << s.h << ", " << s.w
         << "]\n";
    }
  };
  if (x.dimension(1) != Net::input_shape.c || x.dimension(2) != Net::input_shape.h ||
      x.dimension(3) != Net::input_shape.w)
    (void)net.forward(x);  // throws the shape error with the full message
  net.forward(std::span<const float>(x.data(), std::size_t(x.size())), batch, observer);
}

}  // namespace vgg
