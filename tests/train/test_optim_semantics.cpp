// SGD's momentum variants over several steps against torch.optim.SGD, whose values are committed
// below: dampening (torch starts the momentum buffer at the first gradient, undamped), weight
// decay, and Nesterov.
#include <doctest/doctest.h>

#include <vgg/vgg.hpp>

#include <array>
#include <span>
#include <vector>

namespace {

/// One parameter tensor whose gradient is set by hand before each step.
struct ThreeParams {
  using backend = vgg::cpu::Backend;
  static constexpr long long num_params = 3;
  backend::Context exec;
  backend::Context& context() { return exec; }
  std::vector<float> value{1.0f, -2.0f, 0.5f}, grad{0.0f, 0.0f, 0.0f};
  template <class F>
  void for_each_parameter_data(F&& f) {
    f(std::span<float>(value), std::span<float>(grad));
  }
};

using Trajectory = std::array<std::array<float, 3>, 4>;

/// Four steps with the gradient of step t (from 0) g = 0.5 p + (0.1 (t + 1), -0.3, 0.2 - 0.1 t),
/// each constant rounded to float from double, as torch.tensor(..., dtype=torch.float32) does.
void check_trajectory(vgg::SgdOptions options, const Trajectory& expected) {
  ThreeParams p;
  vgg::Sgd sgd(options);
  for (int t = 0; t < 4; ++t) {
    CAPTURE(t);
    const float c[3] = {float(0.1 * (t + 1)), float(-0.3), float(0.2 - 0.1 * t)};
    for (int i = 0; i < 3; ++i) p.grad[std::size_t(i)] = 0.5f * p.value[std::size_t(i)] + c[i];
    sgd.step(p);
    for (int i = 0; i < 3; ++i) {
      CAPTURE(i);
      CHECK(p.value[std::size_t(i)] == doctest::Approx(expected[std::size_t(t)][std::size_t(i)]).epsilon(1e-5));
    }
  }
}

}  // namespace

// The expected values are the parameters after each step, printed by (torch 1.13, Debian's python3-torch):
//
//   import torch
//   def run(**opt):
//       p = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float32, requires_grad=True)
//       o = torch.optim.SGD([p], **opt)
//       for t in range(4):
//           p.grad = 0.5 * p.detach() + torch.tensor([0.1 * (t + 1), -0.3, 0.2 - 0.1 * t], dtype=torch.float32)
//           o.step()
//           print([float(v) for v in p.detach()])
//   run(lr=0.5, momentum=0.9, dampening=0.5)
//   run(lr=0.5, momentum=0.9, dampening=0.3, weight_decay=0.1)
//   run(lr=0.5, momentum=0.9, nesterov=True, weight_decay=0.1)
//
// By hand, the first case's first step: d = 0.5 + 0.1 = 0.6; buf = d (no dampening on the first
// step; with it, 0.3); p = 1 - 0.5 * 0.6 = 0.7.

TEST_CASE("SGD with dampening: the first step takes the gradient undamped, later ones damp it (torch values)") {
  check_trajectory({.lr = 0.5f, .momentum = 0.9f, .dampening = 0.5f},
                   {{{0.699999988f, -1.35000002f, 0.275000006f},
                     {0.292499959f, -0.52125001f, 0.0131250322f},
                     {-0.185812533f, 0.36478126f, -0.224203065f},
                     {-0.693067193f, 1.19161177f, -0.384772956f}}});
}

TEST_CASE("SGD with dampening and weight decay over four steps (torch values)") {
  check_trajectory({.lr = 0.5f, .momentum = 0.9f, .dampening = 0.3f, .weight_decay = 0.1f},
                   {{{0.649999976f, -1.25f, 0.25f},
                     {0.128499985f, -0.207499981f, -0.0625f},
                     {-0.472835004f, 0.879325032f, -0.330624998f},
                     {-1.05474114f, 1.77780926f, -0.46750623f}}});
}

TEST_CASE("SGD with Nesterov momentum and weight decay over four steps (torch values)") {
  check_trajectory({.lr = 0.5f, .momentum = 0.9f, .weight_decay = 0.1f, .nesterov = true},
                   {{{0.334999979f, -0.575000048f, 0.025000006f},
                     {-0.329450011f, 0.645249844f, -0.286749989f},
                     {-0.844218552f, 1.37043238f, -0.352127492f},
                     {-1.1602571f, 1.56616759f, -0.192677066f}}});
}
