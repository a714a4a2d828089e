// Optimizers against hand-computed updates, schedules, and a short training run.
#include <doctest/doctest.h>

#include <vgg/vgg.hpp>

#include <cmath>
#include <vector>

#include "../core/reference.hpp"

namespace {
/// A stand-in "network" with two parameter tensors, for checking update rules by hand.
/// The least an optimizer steps over: parameters with gradients, on a backend, with its context.
struct TwoParams {
  using backend = vgg::cpu::Backend;
  static constexpr long long num_params = 3;
  backend::Context exec;
  backend::Context& context() { return exec; }
  std::vector<float> a{1.0f, -2.0f}, b{0.5f}, ga{0.1f, -0.2f}, gb{0.0f};
  template <class F>
  void for_each_parameter_data(F&& f) {
    f(std::span<float>(a), std::span<float>(ga));
    f(std::span<float>(b), std::span<float>(gb));
  }
};
}  // namespace

TEST_CASE("Adam: the first steps follow torch.optim.Adam's formulas") {
  TwoParams p;
  vgg::Adam adam({.lr = 0.1f, .weight_decay = 0.01f});
  adam.step(p);
  // Step 1: m = 0.1 g', v = 0.001 g'^2; m_hat / sqrt(v_hat) = sign(g'), so p -= lr * sign(g') (eps aside).
  const float g0 = 0.1f + 0.01f * 1.0f, g1 = -0.2f + 0.01f * -2.0f, g2 = 0.0f + 0.01f * 0.5f;
  CHECK(p.a[0] == doctest::Approx(1.0 - 0.1 * g0 / (std::abs(g0) + 1e-8)).epsilon(1e-6));
  CHECK(p.a[1] == doctest::Approx(-2.0 - 0.1 * g1 / (std::abs(g1) + 1e-8)).epsilon(1e-6));
  CHECK(p.b[0] == doctest::Approx(0.5 - 0.1 * g2 / (std::abs(g2) + 1e-8)).epsilon(1e-5));
  // Step 2 by the formula, in double.
  const double a0 = p.a[0], grad = 0.1 + 0.01 * a0;
  const double m = 0.9 * (0.1 * g0) + 0.1 * grad, v = 0.999 * (0.001 * g0 * g0) + 0.001 * grad * grad;
  const double expected = a0 - (0.1 / (1 - 0.81)) * m / (std::sqrt(v) / std::sqrt(1 - 0.999 * 0.999) + 1e-8);
  adam.step(p);
  CHECK(p.a[0] == doctest::Approx(expected).epsilon(1e-5));
  CHECK(adam.steps() == 2);
  CHECK_THROWS_AS(vgg::Adam({.lr = 0.0f}), std::invalid_argument);
}

TEST_CASE("SGD: plain, momentum, Nesterov and weight decay as torch.optim.SGD") {
  {
    TwoParams p;
    vgg::Sgd sgd({.lr = 0.5f});
    sgd.step(p);
    CHECK(p.a[0] == doctest::Approx(1.0 - 0.05));
  }
  {
    TwoParams p;
    vgg::Sgd sgd({.lr = 0.5f, .momentum = 0.9f});
    sgd.step(p);  // buf = g
    CHECK(p.a[0] == doctest::Approx(1.0 - 0.5 * 0.1));
    sgd.step(p);  // buf = 0.9 g + g
    CHECK(p.a[0] == doctest::Approx(1.0 - 0.5 * 0.1 - 0.5 * 0.19));
  }
  {
    TwoParams p;
    vgg::Sgd sgd({.lr = 0.5f, .momentum = 0.9f, .weight_decay = 0.1f, .nesterov = true});
    sgd.step(p);  // d = g + wd p = 0.2; buf = 0.2; d = 0.2 + 0.9 * 0.2
    CHECK(p.a[0] == doctest::Approx(1.0 - 0.5 * 0.38));
  }
  CHECK_THROWS_AS(vgg::Sgd({.lr = 0.1f, .nesterov = true}), std::invalid_argument);
}

TEST_CASE("learning-rate schedules") {
  const vgg::StepSchedule step{1.0f, 2, 0.5f};
  CHECK(step(0) == 1.0f);
  CHECK(step(1) == 1.0f);
  CHECK(step(2) == 0.5f);
  CHECK(step(5) == 0.25f);
  const vgg::CosineSchedule cosine{1.0f, 10, 0.0f};
  CHECK(cosine(0) == doctest::Approx(1.0));
  CHECK(cosine(5) == doctest::Approx(0.5));
  CHECK(cosine(10) == doctest::Approx(0.0));
}

TEST_CASE("train_step learns a small separable problem; evaluate_batch uses eval mode") {
  using Net = vgg::Vgg<vgg::Input<1, 8, 8>, vgg::VggBlock<1, 1, 4>, vgg::VggBlock<1, 4, 8>, vgg::Classifier<32, 2, 0.1>>;
  Net net(3);
  vgg::Adam adam({.lr = 3e-3f});
  // Class 0: bright top half; class 1: bright bottom half, plus noise.
  const int n = 32;
  std::vector<float> x(std::size_t(n) * 64);
  std::vector<std::int32_t> labels(n);
  const auto noise = ref::random_vector(x.size(), 9, 0.0f, 0.3f);
  for (int i = 0; i < n; ++i) {
    labels[std::size_t(i)] = i % 2;
    for (int p = 0; p < 64; ++p)
      x[std::size_t(i * 64 + p)] = noise[std::size_t(i * 64 + p)] + (((p < 32) == (i % 2 == 0)) ? 0.7f : 0.0f);
  }
  const double first = vgg::evaluate_batch(net, x, labels).loss;
  vgg::LossResult last{};
  for (int s = 0; s < 60; ++s) last = vgg::train_step(net, adam, x, labels);
  const auto eval = vgg::evaluate_batch(net, x, labels);
  CHECK(net.mode() == vgg::Mode::eval);
  CHECK(eval.loss < 0.5 * first);
  CHECK(eval.correct == n);
  CHECK(last.loss < first);
}
