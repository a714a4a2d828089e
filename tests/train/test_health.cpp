// Numerical health (vgg/health.hpp): NaN and infinity injected into a weight, a gradient or the
// input, and a run diverging from a huge learning rate, each stop training with a message naming
// the step and the tensor; a lower learning rate is advised only for the diverging run.
#include <doctest/doctest.h>

#include <vgg/health.hpp>
#include <vgg/vgg.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "../core/reference.hpp"

namespace {
using Net = vgg::vgg11<vgg::Input<1, 32, 32>, 10, 16>;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

struct Run {
  std::unique_ptr<Net> net = std::make_unique<Net>(3);
  vgg::Adam<> adam{{.lr = 1e-3f}};
  std::vector<float> x = ref::random_vector(4 * 1024, 7, 0.0f, 1.0f);
  std::vector<std::int32_t> labels{0, 1, 2, 3};
  vgg::HealthMonitor health{4};

  void step() {
    const auto r = vgg::train_step(*net, adam, x, labels);
    health.after_step(*net, r.loss, x, 1);
  }
  /// Writes `value` into element `index` of the parameter (or its gradient) named `name`.
  void inject(const std::string& name, std::size_t index, float value, bool gradient = false) {
    bool done = false;
    net->for_each_parameter([&](const vgg::ParameterView& p) {
      if (p.name != name) return;
      (gradient ? p.grad : p.value)[index] = value;
      done = true;
    });
    REQUIRE(done);
  }
};

std::string stop_message(auto&& f, bool* lower_lr = nullptr) {
  try {
    f();
  } catch (const vgg::NumericalError& e) {
    if (lower_lr) *lower_lr = e.lower_lr_advised();
    return e.what();
  }
  return "(training did not stop)";
}
}  // namespace

TEST_CASE("first_non_finite finds NaN and infinities anywhere, and nothing in finite data") {
  for (std::size_t n : {std::size_t(1), std::size_t(1023), std::size_t(1024), std::size_t(1025), std::size_t(5000)}) {
    std::vector<float> v(n, 1.0f);
    v[0] = std::numeric_limits<float>::max();
    v[n - 1] = -std::numeric_limits<float>::max();
    if (n > 2) v[1] = std::numeric_limits<float>::denorm_min();
    CHECK_FALSE(vgg::first_non_finite(v).has_value());
    for (float bad : {kNaN, kInf, -kInf, -kNaN}) {
      for (std::size_t at : {std::size_t(0), n / 2, n - 1}) {
        auto w = v;
        w[at] = bad;
        if (at + 1 < n) w[n - 1] = bad;  // the first one is reported
        REQUIRE(vgg::first_non_finite(w).has_value());
        CHECK(*vgg::first_non_finite(w) == at);
      }
    }
  }
  CHECK_FALSE(vgg::first_non_finite({}).has_value());
  CHECK(vgg::describe_value(kNaN) == "nan");
  CHECK(vgg::describe_value(-kInf) == "-inf");
  CHECK(vgg::describe_value(2.5e-7f) == "2.5e-07");
}

TEST_CASE("a NaN injected into a weight stops training within a scan period, naming it, without lr advice") {
  Run run;
  for (int i = 0; i < 3; ++i) run.step();
  run.inject("vgg_block_3.2.weight", 5, kNaN);
  bool lower_lr = true;
  // The NaN reaches the loss (the ReLUs and pools keep it, as PyTorch's do), so train_step skips the
  // update and the monitor names the weight, the only non-finite tensor: nothing else was touched.
  const auto message = stop_message([&] { run.step(); }, &lower_lr);
  INFO(message);
  CHECK(message.find("training stopped at step 4 (epoch 1)") != std::string::npos);
  CHECK(message.find("(epoch 1): the weight 'vgg_block_3.2.weight' holds nan at element 5") != std::string::npos);
  CHECK(message.find("non-finite values in") == std::string::npos);
  CHECK(message.find("lower it (--lr)") == std::string::npos);
  CHECK(message.find("a lower learning rate is unlikely to help") != std::string::npos);
  CHECK_FALSE(lower_lr);
}

TEST_CASE("an infinite weight is named even while the loss stays finite") {
  Run run;
  run.health = vgg::HealthMonitor(1);  // scan every step
  run.step();
  // -inf in the bias of class 9 (no sample's label) gives that logit -inf, whose softmax term is
  // exp(-inf) = 0: the loss stays finite, and only the scan of the weights catches it.
  run.inject("fc.7.bias", 9, -kInf);
  const auto message = stop_message([&] { run.step(); });
  INFO(message);
  CHECK(message.find("training stopped at step 2 (epoch 1)") != std::string::npos);
  CHECK(message.find("the weight 'fc.7.bias' holds") != std::string::npos);  // -inf, or nan after the update
  CHECK(message.find("at element 9") != std::string::npos);
}

TEST_CASE("an infinite gradient is named by before_save, so no checkpoint holds it") {
  Run run;
  run.step();
  run.inject("vgg_block_2.0.bias", 3, kInf, /*gradient=*/true);
  const auto message = stop_message([&] { run.health.before_save(*run.net, 1); });
  INFO(message);
  CHECK(message.find("training stopped at step 1 (epoch 1)") != std::string::npos);
  CHECK(message.find("the gradient of 'vgg_block_2.0.bias' holds inf at element 3") != std::string::npos);
}

TEST_CASE("a NaN in the input batch is blamed on the data") {
  Run run;
  run.step();
  run.x[100] = kNaN;
  bool lower_lr = true;
  const auto message = stop_message([&] {
    for (int i = 0; i < 4; ++i) run.step();
  }, &lower_lr);
  INFO(message);
  CHECK(message.find("the input batch holds nan at element 100") != std::string::npos);
  CHECK(message.find("lower it (--lr)") == std::string::npos);
  CHECK_FALSE(lower_lr);
}

TEST_CASE("a run diverging from a huge learning rate stops with advice to lower it") {
  Run run;
  run.adam = vgg::Adam({.lr = 1e25f});
  bool lower_lr = false;
  const auto message = stop_message([&] {
    for (int i = 0; i < 50; ++i) run.step();
  }, &lower_lr);
  INFO(message);
  CHECK(message.find("training stopped at step") != std::string::npos);
  CHECK(message.find("the learning rate is likely too high, lower it (--lr)") != std::string::npos);
  CHECK(lower_lr);
}

TEST_CASE("scanning every weight and gradient costs little next to a training step") {
  // Reported, not asserted as a ratio (timing on a shared CI machine is noisy); the check is that
  // the scan finds nothing in a healthy net, and the numbers go to docs/RELIABILITY.md.
  Run run;
  run.step();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 5; ++i) run.step();
  const auto t1 = std::chrono::steady_clock::now();
  bool found = false;
  for (int i = 0; i < 50; ++i) found |= vgg::find_non_finite(*run.net).has_value();
  const auto t2 = std::chrono::steady_clock::now();
  CHECK_FALSE(found);
  const double step_us = std::chrono::duration<double, std::micro>(t1 - t0).count() / 5;
  const double scan_us = std::chrono::duration<double, std::micro>(t2 - t1).count() / 50;
  MESSAGE("vgg11 w16 32x32 batch 4 (" << Net::num_params << " parameters): training step " << step_us
                                      << " us, full weight+gradient scan " << scan_us << " us");
}
