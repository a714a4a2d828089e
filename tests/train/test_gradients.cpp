// Finite-difference checks of every layer's backward pass and of a whole tiny network. Each layer
// is checked through the scalar L = sum(r * y) with a fixed random r, so dL/dy = r; the layers are
// piecewise linear in each parameter, so central differences are exact up to rounding unless a
// ReLU or a max-pool switches inside the step (rare with random data, and tolerated by a small
// fraction of outliers where noted).
#include <doctest/doctest.h>

#include <vgg/vgg.hpp>

#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "../core/reference.hpp"

namespace {

double dot(const std::vector<float>& r, const float* y) {
  double s = 0;
  for (std::size_t i = 0; i < r.size(); ++i) s += double(r[i]) * y[i];
  return s;
}

/// Central difference of f with respect to v[i]; restores v[i].
double numeric(float& v, const std::function<double()>& f, float eps) {
  const float saved = v;
  v = saved + eps;
  const double up = f();
  v = saved - eps;
  const double down = f();
  v = saved;
  return (up - down) / (2.0 * double(eps));
}

/// Checks analytic vs numeric for every element of `values` (or every `stride`-th). Returns the
/// number of mismatches; a mismatch is |a - n| > tol * (1 + |n|).
int compare(std::span<float> values, std::span<const float> analytic, const std::function<double()>& f, float eps,
            double tol, std::size_t stride = 1) {
  int bad = 0;
  for (std::size_t i = 0; i < values.size(); i += stride) {
    const double n = numeric(values[i], f, eps);
    if (std::abs(double(analytic[i]) - n) > tol * (1.0 + std::abs(n))) {
      if (bad < 5) MESSAGE("element ", i, ": analytic ", analytic[i], " numeric ", n);
      ++bad;
    }
  }
  return bad;
}

/// A CPU backend's execution context with `threads` threads.
template <class B>
typename B::Context context(int threads) {
  typename B::Context exec;
  exec.set_threads(threads);
  return exec;
}

template <class L>
void check_parametric_layer(int n, int threads) {
  CAPTURE(threads);
  L layer;
  auto exec = context<typename L::backend>(threads);
  vgg::Rng rng(3);
  layer.reset_parameters(rng, exec);
  layer.reserve(exec, n);
  layer.reserve_backward(exec, n);
  const vgg::RunContext ctx{vgg::Mode::train, 1, 0, 0};
  auto x = ref::random_vector(std::size_t(n) * L::input_shape.size(), 10);
  const auto r = ref::random_vector(std::size_t(n) * L::output_shape.size(), 11);
  std::vector<float> y(r.size()), dx(x.size());
  auto loss = [&] {
    layer.forward(exec, x.data(), y.data(), n, ctx);
    return dot(r, y.data());
  };
  loss();
  std::vector<float> dy = r;
  layer.backward(exec, x.data(), y.data(), dy.data(), dx.data(), n, ctx);
  const std::vector<float> wg(layer.weight_grad().begin(), layer.weight_grad().end());
  const std::vector<float> bg(layer.bias_grad().begin(), layer.bias_grad().end());
  CHECK(compare(layer.weight(), wg, loss, 1e-3f, 2e-3) == 0);
  CHECK(compare(layer.bias(), bg, loss, 1e-3f, 2e-3) == 0);
  CHECK(compare(x, dx, loss, 1e-3f, 2e-3) == 0);
}

}  // namespace

// Every layer on both CPU kernel paths (on a target without AVX-512 both are the plain path).
#define CPU_BACKENDS vgg::cpu::Backend, vgg::cpu::PlainBackend

TEST_CASE_TEMPLATE("conv3x3 + ReLU backward: weight, bias and input gradients match finite differences", B,
                   CPU_BACKENDS) {
  for (int threads : {1, 2, 3}) {
    check_parametric_layer<vgg::Conv3x3Relu<3, 4, 7, 5, B>>(2, threads);
    check_parametric_layer<vgg::Conv3x3Relu<1, 2, 9, 9, B>>(3, threads);  // C_in = 1, odd sizes
  }
}

TEST_CASE_TEMPLATE("conv backward across several bands per image matches finite differences", B, CPU_BACKENDS) {
  // 2 input channels at 200 x 60 gives bands of fewer rows than the image.
  REQUIRE(vgg::cpu::Conv3x3Geometry{2, 2, 200, 60}.max_band_rows() < 200);
  vgg::Conv3x3Relu<2, 2, 200, 60, B> layer;
  auto exec = context<B>(2);
  vgg::Rng rng(5);
  layer.reset_parameters(rng, exec);
  layer.reserve(exec, 1);
  layer.reserve_backward(exec, 1);
  const vgg::RunContext ctx{vgg::Mode::train, 1, 0, 0};
  auto x = ref::random_vector(2 * 200 * 60, 1);
  const auto r = ref::random_vector(2 * 200 * 60, 2);
  std::vector<float> y(r.size()), dx(x.size());
  auto loss = [&] {
    layer.forward(exec, x.data(), y.data(), 1, ctx);
    return dot(r, y.data());
  };
  loss();
  std::vector<float> dy = r;
  layer.backward(exec, x.data(), y.data(), dy.data(), dx.data(), 1, ctx);
  // Each weight touches 24,000 outputs, too many for clean finite differences across ReLU kinks:
  // compare the weight gradient with the exact double-precision sum instead.
  const auto expected = ref::conv3x3_relu_weight_grad(x, y, r, 1, 2, 2, 200, 60);
  for (std::size_t i = 0; i < expected.size(); ++i)
    CHECK(layer.weight_grad()[i] == doctest::Approx(expected[i]).epsilon(1e-4));
  CHECK(compare(x, dx, loss, 1e-3f, 2e-3, 397) == 0);  // a spread sample, crossing band borders
}

TEST_CASE_TEMPLATE("linear backward, with and without ReLU, matches finite differences", B, CPU_BACKENDS) {
  for (int threads : {1, 2, 3}) {
    check_parametric_layer<vgg::Linear<7, 5, true, B>>(4, threads);
    check_parametric_layer<vgg::Linear<7, 5, false, B>>(4, threads);
    check_parametric_layer<vgg::Linear<33, 2, false, B>>(1, threads);
  }
}

TEST_CASE_TEMPLATE("max-pool backward routes each gradient to the arg-max and ignores rows dropped by the floor rule",
                   B, CPU_BACKENDS) {
  vgg::MaxPool2x2<2, 5, 7, B> pool;
  auto exec = context<B>(2);
  const vgg::RunContext ctx{vgg::Mode::train, 1, 0, 0};
  auto x = ref::random_vector(3 * 2 * 5 * 7, 4);
  const auto r = ref::random_vector(3 * 2 * 2 * 3, 5);
  std::vector<float> y(r.size()), dx(x.size());
  auto loss = [&] {
    pool.forward(exec, x.data(), y.data(), 3, ctx);
    return dot(r, y.data());
  };
  loss();
  std::vector<float> dy = r;
  pool.backward(exec, x.data(), y.data(), dy.data(), dx.data(), 3, ctx);
  CHECK(compare(x, dx, loss, 1e-4f, 1e-3) == 0);
  // Last row (index 4) and last column (index 6) of each plane get nothing.
  for (int p = 0; p < 6; ++p) {
    for (int c = 0; c < 7; ++c) CHECK(dx[std::size_t(p * 35 + 4 * 7 + c)] == 0.0f);
    for (int rr = 0; rr < 5; ++rr) CHECK(dx[std::size_t(p * 35 + rr * 7 + 6)] == 0.0f);
  }
}

TEST_CASE_TEMPLATE("max-pool ties: the gradient goes to the first maximum in row-major order, as in PyTorch", B,
                   CPU_BACKENDS) {
  const std::vector<float> x{1, 3,   //
                             3, 3};
  const float dy = 2.0f;
  std::vector<float> dx(4, -1.0f);
  auto exec = context<B>(1);
  B::maxpool2x2_backward(exec, x.data(), &dy, dx.data(), 1, 2, 2);
  CHECK(dx == std::vector<float>{0, 2, 0, 0});
}

TEST_CASE("dropout backward replays the forward mask and scale") {
  vgg::Dropout<1000, 0.3, vgg::cpu::Backend> drop;
  auto exec = context<vgg::cpu::Backend>(2);
  const vgg::RunContext ctx{vgg::Mode::train, 77, 5, 3};
  std::vector<float> ones(2000, 1.0f), y(2000), dy(2000, 1.0f), dx(2000);
  drop.forward(exec, ones.data(), y.data(), 2, ctx);
  drop.backward(exec, ones.data(), y.data(), dy.data(), dx.data(), 2, ctx);
  CHECK(dx == y);  // dL/dx = mask * scale = y / x for x = 1
  int dropped = 0;
  for (float v : y) dropped += v == 0.0f;
  CHECK(std::abs(dropped / 2000.0 - 0.3) < 0.04);
}

TEST_CASE("softmax cross-entropy: known values and gradient by finite differences") {
  // Two equal logits: loss log 2; a confident correct sample: loss ~0.
  const std::vector<float> z{0, 0, 10, -10};
  const std::vector<std::int32_t> labels{0, 0};
  std::vector<float> g(4);
  const auto r = vgg::softmax_cross_entropy(z, labels, 2, g);
  CHECK(r.loss == doctest::Approx((std::log(2.0) + std::log1p(std::exp(-20.0))) / 2));
  CHECK(r.correct == 2);  // ties resolve to the first class
  CHECK(g[0] == doctest::Approx(-0.25));
  CHECK(g[1] == doctest::Approx(0.25));
  // Large logits stay finite (log-sum-exp).
  const std::vector<float> big{1000, -1000, 0};
  const std::vector<std::int32_t> one{1};
  CHECK(std::isfinite(vgg::softmax_cross_entropy(big, one, 3).loss));
  CHECK(vgg::softmax_cross_entropy(big, one, 3).loss == doctest::Approx(2000.0));

  auto logits = ref::random_vector(3 * 5, 8, -3, 3);
  const std::vector<std::int32_t> l3{4, 0, 2};
  std::vector<float> grad(15);
  vgg::softmax_cross_entropy(logits, l3, 5, grad);
  CHECK(compare(logits, grad, [&] { return vgg::softmax_cross_entropy(logits, l3, 5).loss; }, 1e-3f, 1e-3) == 0);

  const std::vector<std::int32_t> bad{5, 0, 2};
  CHECK_THROWS_WITH_AS(vgg::softmax_cross_entropy(logits, bad, 5),
                       "vgg::softmax_cross_entropy: sample 0 has label 5, expected 0..4", std::invalid_argument);
}

TEST_CASE("a whole tiny network: parameter and input gradients of the loss match finite differences") {
  using Tiny = vgg::Vgg<vgg::Input<2, 9, 7>, vgg::VggBlock<2, 2, 3>, vgg::VggBlock<1, 3, 4>, vgg::Classifier<6, 3>>;
  Tiny net(21);
  const int n = 3;
  auto x = ref::random_vector(std::size_t(n) * Tiny::input_shape.size(), 30, 0, 1);
  const std::vector<std::int32_t> labels{2, 0, 1};
  auto loss = [&] {
    const auto logits = net.forward(x, n);
    return vgg::softmax_cross_entropy(std::span<const float>(logits.data(), std::size_t(logits.size())), labels, 3)
        .loss;
  };
  for (int threads : {1, 2}) {
    net.set_threads(threads);
    net.eval();  // dropout off: the loss is a deterministic function of the parameters
    const auto logits = net.forward(x, n);
    vgg::softmax_cross_entropy(std::span<const float>(logits.data(), std::size_t(logits.size())), labels, 3,
                               net.output_gradient());
    net.backward(/*input_gradient=*/true);
    const std::vector<float> dx(net.input_gradient().begin(), net.input_gradient().end());
    std::vector<std::vector<float>> grads;
    std::vector<std::span<float>> values;
    net.for_each_parameter_data([&](std::span<float> v, std::span<float> g) {
      grads.emplace_back(g.begin(), g.end());
      values.push_back(v);
    });
    REQUIRE(values.size() == 12);
    int bad = 0;
    for (std::size_t i = 0; i < values.size(); ++i) bad += compare(values[i], grads[i], loss, 2e-3f, 5e-3);
    CHECK(bad == 0);
    CHECK(compare(x, dx, loss, 2e-3f, 5e-3) == 0);
  }
}

TEST_CASE("train-mode backward replays the dropout masks of its forward pass") {
  using Net = vgg::Vgg<vgg::Input<1, 4, 4>, vgg::VggBlock<1, 1, 2>, vgg::Classifier<16, 3, 0.5>>;
  Net net(4);
  net.train();
  auto x = ref::random_vector(2 * 16, 31, 0, 1);
  const std::vector<std::int32_t> labels{1, 2};
  const std::uint64_t step = net.step();
  const auto logits = net.forward(x, 2);
  vgg::softmax_cross_entropy(std::span<const float>(logits.data(), std::size_t(logits.size())), labels, 3,
                             net.output_gradient());
  net.backward();
  std::vector<std::vector<float>> grads;
  net.for_each_parameter_data([&](std::span<float>, std::span<float> g) { grads.emplace_back(g.begin(), g.end()); });
  // The loss with the same masks: rewind the step counter so the forward pass redraws them.
  auto loss = [&] {
    net.set_step(step);
    const auto z = net.forward(x, 2);
    return vgg::softmax_cross_entropy(std::span<const float>(z.data(), std::size_t(z.size())), labels, 3).loss;
  };
  int bad = 0, i = 0;
  net.for_each_parameter_data([&](std::span<float> v, std::span<float>) { bad += compare(v, grads[std::size_t(i++)], loss, 2e-3f, 5e-3, 3); });
  CHECK(bad == 0);
}

TEST_CASE("backward before any forward pass is a clear error") {
  using Net = vgg::Vgg<vgg::Input<1, 4, 4>, vgg::VggBlock<1, 1, 2>, vgg::Classifier<4, 3>>;
  Net net(1);
  CHECK_THROWS_WITH_AS(net.backward(), "vgg::Vgg::backward: no forward pass to differentiate; call forward first",
                       std::logic_error);
  CHECK_THROWS_AS((void)net.input_gradient(), std::logic_error);
}
