// The type-level network: derived shapes, presets, parameters, modes, bad input, introspection,
// and a full forward pass against the naive references.
#include <doctest/doctest.h>
#include <omp.h>

#include <vgg/vgg.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>

#include "reference.hpp"

using vgg::Classifier;
using vgg::Input;
using vgg::Shape;
using vgg::VggBlock;

using Vgg11 = vgg::Vgg<Input<1, 224, 224>, VggBlock<1, 1, 64>, VggBlock<1, 64, 128>, VggBlock<2, 128, 256>,
                       VggBlock<2, 256, 512>, VggBlock<2, 512, 512>, Classifier<4096, 10>>;
static_assert(Vgg11::input_shape == Shape{1, 224, 224});
static_assert(Vgg11::block_output_shape(0) == Shape{64, 112, 112});
static_assert(Vgg11::block_output_shape(1) == Shape{128, 56, 56});
static_assert(Vgg11::block_output_shape(2) == Shape{256, 28, 28});
static_assert(Vgg11::block_output_shape(3) == Shape{512, 14, 14});
static_assert(Vgg11::block_output_shape(4) == Shape{512, 7, 7});
static_assert(Vgg11::feature_shape == Shape{512, 7, 7});
static_assert(Vgg11::output_shape == Shape{10, 1, 1});

using Small = vgg::vgg11<Input<1, 224, 224>, 10, 8>;
// The chapter's small net, layer by layer: 1->8, 8->16, 16->32->32, 32->64->64, 64->64->64, 3136-512-512-10.
using C = vgg::cpu::Backend;  // the layers of a CPU network run on the CPU backend
static_assert(std::is_same_v<Small::layer_types,
                             std::tuple<vgg::Conv3x3Relu<1, 8, 224, 224, C>, vgg::MaxPool2x2<8, 224, 224, C>,
                                        vgg::Conv3x3Relu<8, 16, 112, 112, C>, vgg::MaxPool2x2<16, 112, 112, C>,
                                        vgg::Conv3x3Relu<16, 32, 56, 56, C>, vgg::Conv3x3Relu<32, 32, 56, 56, C>,
                                        vgg::MaxPool2x2<32, 56, 56, C>, vgg::Conv3x3Relu<32, 64, 28, 28, C>,
                                        vgg::Conv3x3Relu<64, 64, 28, 28, C>, vgg::MaxPool2x2<64, 28, 28, C>,
                                        vgg::Conv3x3Relu<64, 64, 14, 14, C>, vgg::Conv3x3Relu<64, 64, 14, 14, C>,
                                        vgg::MaxPool2x2<64, 14, 14, C>, vgg::Flatten<Shape{64, 7, 7}, C>,
                                        vgg::Linear<3136, 512, true, C>, vgg::Dropout<512, 0.5, C>,
                                        vgg::Linear<512, 512, true, C>, vgg::Dropout<512, 0.5, C>,
                                        vgg::Linear<512, 10, false, C>>>);

// Parameter counts published for torchvision's models (3x224x224, 1000 classes).
static_assert(vgg::vgg11<Input<3, 224, 224>>::num_params == 132863336LL);
static_assert(vgg::vgg13<Input<3, 224, 224>>::num_params == 133047848LL);
static_assert(vgg::vgg16<Input<3, 224, 224>>::num_params == 138357544LL);
static_assert(vgg::vgg19<Input<3, 224, 224>>::num_params == 143667240LL);

// Odd sizes follow PyTorch's floor rule: 7 -> 3.
using Odd = vgg::Vgg<Input<2, 15, 13>, VggBlock<2, 2, 3>, VggBlock<1, 3, 4>, VggBlock<3, 4, 5>, Classifier<6, 3, 0.25>>;
static_assert(Odd::block_output_shape(0) == Shape{3, 7, 6});
static_assert(Odd::block_output_shape(1) == Shape{4, 3, 3});
static_assert(Odd::block_output_shape(2) == Shape{5, 1, 1});
static_assert(Odd::feature_shape == Shape{5, 1, 1});

TEST_CASE("every preset gives the expected output shape through an actual forward pass") {
  auto check = []<class Net>(std::type_identity<Net>, int classes) {
    auto net = std::make_unique<Net>(3);
    vgg::Tensor4 x(2, Net::input_shape.c, Net::input_shape.h, Net::input_shape.w);
    x.setConstant(0.25f);
    const auto logits = net->forward(x);
    CHECK(logits.dimension(0) == 2);
    CHECK(logits.dimension(1) == classes);
    for (long i = 0; i < logits.size(); ++i) CHECK(std::isfinite(logits.data()[i]));
  };
  check(std::type_identity<vgg::vgg11<Input<1, 32, 32>, 10, 8>>{}, 10);
  check(std::type_identity<vgg::vgg13<Input<3, 32, 32>, 7, 8>>{}, 7);
  check(std::type_identity<vgg::vgg16<Input<1, 40, 40>, 10, 16>>{}, 10);
  check(std::type_identity<vgg::vgg19<Input<2, 33, 35>, 4, 16>>{}, 4);
  check(std::type_identity<Odd>{}, 3);
}

TEST_CASE("parameter names follow the chapter's state_dict and sizes add up to num_params") {
  Small net(1);
  std::vector<std::string> names;
  long long total = 0;
  net.for_each_parameter([&](const vgg::ParameterView& p) {
    names.push_back(p.name);
    long long count = 1;
    for (auto d : p.shape) count *= d;
    CHECK(count == (long long)p.value.size());
    total += count;
  });
  CHECK(total == Small::num_params);
  const std::vector<std::string> expected{
      "vgg_block_1.0.weight", "vgg_block_1.0.bias", "vgg_block_2.0.weight", "vgg_block_2.0.bias",
      "vgg_block_3.0.weight", "vgg_block_3.0.bias", "vgg_block_3.2.weight", "vgg_block_3.2.bias",
      "vgg_block_4.0.weight", "vgg_block_4.0.bias", "vgg_block_4.2.weight", "vgg_block_4.2.bias",
      "vgg_block_5.0.weight", "vgg_block_5.0.bias", "vgg_block_5.2.weight", "vgg_block_5.2.bias",
      "fc.1.weight",          "fc.1.bias",          "fc.4.weight",          "fc.4.bias",
      "fc.7.weight",          "fc.7.bias"};
  CHECK(names == expected);
}

TEST_CASE("initialisation follows PyTorch's bounds and is reproducible from the seed") {
  using Net = vgg::vgg11<Input<1, 32, 32>, 10, 8>;
  Net a(7), b(7), c(8);
  std::vector<float> va, vb, vc;
  a.for_each_parameter([&](const vgg::ParameterView& p) {
    // fan_in = product of all dims but the first; the bound is 1/sqrt(fan_in) for weights and biases.
    const bool is_weight = p.shape.size() > 1;
    long long fan_in = 1;
    if (is_weight)
      for (std::size_t i = 1; i < p.shape.size(); ++i) fan_in *= p.shape[i];
    float max_abs = 0;
    double sum_sq = 0;
    for (float v : p.value) {
      max_abs = std::max(max_abs, std::abs(v));
      sum_sq += double(v) * v;
    }
    if (is_weight) {
      const double bound = 1.0 / std::sqrt(double(fan_in));
      CAPTURE(p.name);
      CHECK(max_abs <= bound);
      CHECK(max_abs > 0.9 * bound);  // the whole range is used
      // U(-b, b) has variance b^2 / 3
      CHECK(sum_sq / double(p.value.size()) == doctest::Approx(bound * bound / 3).epsilon(0.1));
    }
    va.insert(va.end(), p.value.begin(), p.value.end());
  });
  // bias bounds use the layer's fan_in: check the first conv (fan_in 9) explicitly
  CHECK(std::abs(a.layer<0>().bias()[0]) <= 1.0f / 3.0f);
  b.for_each_parameter([&](const vgg::ParameterView& p) { vb.insert(vb.end(), p.value.begin(), p.value.end()); });
  c.for_each_parameter([&](const vgg::ParameterView& p) { vc.insert(vc.end(), p.value.begin(), p.value.end()); });
  CHECK(va == vb);
  CHECK(va != vc);
}

namespace {
// A whole tiny network computed with the naive references, layer by layer.
using Tiny = vgg::Vgg<Input<1, 11, 9>, VggBlock<2, 1, 3>, VggBlock<1, 3, 4>, Classifier<5, 3>>;

std::vector<float> tiny_reference(Tiny& net, const std::vector<float>& x, int n) {
  std::vector<std::vector<float>> p;
  net.for_each_parameter([&](const vgg::ParameterView& v) { p.emplace_back(v.value.begin(), v.value.end()); });
  auto h = ref::conv3x3_relu(x, p[0], p[1], n, 1, 3, 11, 9);
  h = ref::conv3x3_relu(h, p[2], p[3], n, 3, 3, 11, 9);
  h = ref::maxpool2x2(h, n * 3, 11, 9);  // 3 x 5 x 4
  h = ref::conv3x3_relu(h, p[4], p[5], n, 3, 4, 5, 4);
  h = ref::maxpool2x2(h, n * 4, 5, 4);  // 4 x 2 x 2
  h = ref::linear(h, p[6], p[7], n, 16, 5, true);
  h = ref::linear(h, p[8], p[9], n, 5, 5, true);
  return ref::linear(h, p[10], p[11], n, 5, 3, false);
}
}  // namespace

namespace {
/// Records every backward-hook call, and whether the reported gradients were already set then
/// (the test fills every gradient with NaN before backward) and what they held.
struct HookRecorder {
  Tiny* net = nullptr;
  std::vector<vgg::FinishedGradients> calls;
  std::vector<std::vector<float>> seen;  // the reported tensors' gradients, at the call
  bool all_set = true;
  static void record(void* self, const vgg::FinishedGradients& f) {
    auto& r = *static_cast<HookRecorder*>(self);
    r.calls.push_back(f);
    std::size_t t = 0;
    r.net->for_each_parameter_data([&](std::span<float>, std::span<float> grad) {
      if (t >= f.first_tensor && t < f.end_tensor) {
        for (float g : grad) r.all_set = r.all_set && !std::isnan(g);
        r.seen.emplace_back(grad.begin(), grad.end());
      }
      ++t;
    });
  }
};
}  // namespace

TEST_CASE("the backward hook runs once per parameterised layer, in backward order, once its gradients are final") {
  auto net = std::make_unique<Tiny>(4);
  const int n = 3;
  std::vector<float> x(std::size_t(n) * Tiny::input_shape.size());
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(i % 7) * 0.25f - 0.5f;
  const std::vector<std::int32_t> labels{0, 2, 1};
  std::vector<std::size_t> sizes;  // floats of each tensor, network order
  net->for_each_parameter_data([&](std::span<float> value, std::span<float>) { sizes.push_back(value.size()); });
  REQUIRE(sizes.size() == 12);  // 3 convs and 3 linears, weight and bias each

  auto run = [&](HookRecorder& r, bool input_gradient) {
    net->set_mode(vgg::Mode::train);
    (void)net->forward(x, n);
    (void)net->loss(labels, true);
    net->for_each_parameter_data([](std::span<float>, std::span<float> grad) {
      std::fill(grad.begin(), grad.end(), std::numeric_limits<float>::quiet_NaN());
    });
    r = HookRecorder{net.get(), {}, {}, true};
    net->set_backward_hook({&HookRecorder::record, &r});
    net->backward(input_gradient);
    net->set_backward_hook({});
  };

  for (bool input_gradient : {false, true}) {
    CAPTURE(input_gradient);
    HookRecorder r;
    run(r, input_gradient);
    REQUIRE(r.calls.size() == 6);
    CHECK(r.all_set);
    // Contiguous ranges from the last tensor down to the first, two tensors (weight, bias) a layer.
    std::size_t end = sizes.size();
    std::size_t end_float = std::size_t(Tiny::num_params);
    for (std::size_t i = 0; i < r.calls.size(); ++i) {
      const vgg::FinishedGradients& f = r.calls[i];
      CAPTURE(i);
      CHECK(f.end_tensor == end);
      CHECK(f.first_tensor + 2 == f.end_tensor);
      CHECK(f.end_float == end_float);
      CHECK(f.end_float - f.first_float == sizes[f.first_tensor] + sizes[f.first_tensor + 1]);
      if (i > 0) CHECK(f.layer < r.calls[i - 1].layer);
      end = f.first_tensor;
      end_float = f.first_float;
    }
    CHECK(end == 0);
    CHECK(end_float == 0);
    CHECK(r.calls.front().layer == Tiny::num_layers - 1);
    // What the hook saw is what backward left: nothing later rewrote those gradients.
    std::vector<std::vector<float>> final_grads(sizes.size());
    std::size_t t = 0;
    net->for_each_parameter_data([&](std::span<float>, std::span<float> g) { final_grads[t++].assign(g.begin(), g.end()); });
    std::size_t k = 0;
    for (const auto& f : r.calls)
      for (std::size_t tensor = f.first_tensor; tensor < f.end_tensor; ++tensor) CHECK(r.seen[k++] == final_grads[tensor]);
  }

  // Frozen features: only the classifier's three linears are differentiated, and reported.
  net->freeze_features();
  HookRecorder frozen;
  run(frozen, false);
  REQUIRE(frozen.calls.size() == 3);
  CHECK(frozen.calls.back().first_tensor == 6);
  CHECK(frozen.calls.front().end_tensor == 12);
  CHECK(frozen.all_set);
  net->freeze_features(false);

  // Removed: backward calls nothing.
  HookRecorder none;
  run(none, false);
  none.calls.clear();
  (void)net->forward(x, n);
  (void)net->loss(labels, true);
  net->backward();
  CHECK(none.calls.empty());
  CHECK_FALSE(net->backward_hook());

  // A hook that throws stops backward, which rethrows.
  net->set_backward_hook({[](void*, const vgg::FinishedGradients&) { throw std::runtime_error("hook says no"); }, nullptr});
  CHECK_THROWS_WITH(net->backward(), "hook says no");
  net->set_backward_hook({});
}

TEST_CASE("a full forward pass matches the naive layer-by-layer reference for several thread counts") {
  Tiny net(11);
  for (int n : {1, 5}) {
    const auto x = ref::random_vector(std::size_t(n) * 99, unsigned(n));
    const auto expected = tiny_reference(net, x, n);
    for (int threads : {1, 2, 3}) {
      net.set_threads(threads);
      const auto y = net.forward(x, n);
      CAPTURE(n);
      CAPTURE(threads);
      CHECK(ref::max_abs_diff(expected, y.data()) < 1e-5f);
    }
  }
}

TEST_CASE("eval mode is deterministic; train mode applies dropout with fresh masks each step") {
  using Net = vgg::Vgg<Input<1, 8, 8>, VggBlock<1, 1, 4>, Classifier<256, 10>>;
  Net net(5);
  const auto x = ref::random_vector(4 * 64, 3, 0.0f, 1.0f);
  CHECK(net.mode() == vgg::Mode::eval);
  const auto e1 = net.forward(x, 4);
  const std::vector<float> eval1(e1.data(), e1.data() + e1.size());
  const auto e2 = net.forward(x, 4);
  CHECK(ref::max_abs_diff(eval1, e2.data()) == 0.0f);

  net.train();
  const auto t1 = net.forward(x, 4);
  const std::vector<float> train1(t1.data(), t1.data() + t1.size());
  CHECK(ref::max_abs_diff(eval1, train1.data()) > 1e-4f);
  const auto t2 = net.forward(x, 4);
  CHECK(ref::max_abs_diff(train1, t2.data()) > 1e-4f);  // a new step draws a new mask

  // Same seed, same steps -> same masks: training is reproducible.
  Net again(5);
  again.train();
  const auto r1 = again.forward(x, 4);
  CHECK(ref::max_abs_diff(train1, r1.data()) == 0.0f);

  net.eval();
  const auto e3 = net.forward(x, 4);
  CHECK(ref::max_abs_diff(eval1, e3.data()) == 0.0f);
}

TEST_CASE("the dropout layer scales kept activations by 1/(1-p) in train mode and is the identity in eval") {
  vgg::Dropout<1000, 0.25, C> drop;
  std::vector<float> x(2000, 3.0f), y(2000, -1.0f);
  vgg::RunContext ctx{vgg::Mode::train, 9, 0, 0};
  C::Context exec;
  exec.set_threads(2);
  drop.forward(exec, x.data(), y.data(), 2, ctx);
  int kept = 0;
  for (float v : y) {
    CHECK((v == 0.0f || v == doctest::Approx(4.0f)));
    kept += v != 0.0f;
  }
  CHECK(std::abs(kept / 2000.0 - 0.75) < 0.04);
  CHECK(vgg::Dropout<1000, 0.25, C>::is_identity(vgg::Mode::eval));
  CHECK_FALSE(vgg::Dropout<1000, 0.25, C>::is_identity(vgg::Mode::train));
}

TEST_CASE("bad input is rejected with a message naming expected and found shapes") {
  using Net = vgg::vgg11<Input<1, 32, 32>, 10, 8>;
  Net net(1);
  vgg::Tensor4 wrong(2, 3, 32, 32);
  wrong.setZero();
  CHECK_THROWS_WITH_AS(net.forward(wrong),
                       "vgg::Vgg::forward: the input batch has shape [2, 3, 32, 32] but the network expects "
                       "[N, 1, 32, 32] with N >= 1",
                       std::invalid_argument);
  vgg::Tensor4 empty(0, 1, 32, 32);
  CHECK_THROWS_AS(net.forward(empty), std::invalid_argument);
  std::vector<float> data(1024 * 2);
  CHECK_THROWS_WITH_AS(net.forward(data, 0), "vgg::Vgg::forward: the batch size must be at least 1, found 0",
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(net.forward(data, 3),
                       "vgg::Vgg::forward: a batch of 3 samples of shape [1, 32, 32] needs 3072 floats, found 2048",
                       std::invalid_argument);
  CHECK_NOTHROW(net.forward(data, 2));
  CHECK_THROWS_AS((void)Net::block_output_shape(5), std::out_of_range);
}

TEST_CASE("printout and shape trace use the chapter's names") {
  std::ostringstream modules;
  vgg::print_modules<Small>(modules);
  const std::string text = modules.str();
  CHECK(text.find("(vgg_block_1): Sequential(\n    (0): Conv2d(1, 8, kernel_size=(3, 3), stride=(1, 1), "
                  "padding=(1, 1))\n    (1): ReLU()\n    (2): MaxPool2d(kernel_size=2, stride=2, padding=0, "
                  "dilation=1, ceil_mode=False)\n  )") != std::string::npos);
  CHECK(text.find("(vgg_block_5): Sequential(\n    (0): Conv2d(64, 64,") != std::string::npos);
  CHECK(text.find("(fc): Sequential(\n    (0): Flatten(start_dim=1, end_dim=-1)\n    (1): Linear(in_features=3136, "
                  "out_features=512, bias=True)\n    (2): ReLU()\n    (3): Dropout(p=0.5, inplace=False)") !=
        std::string::npos);
  CHECK(text.find("(7): Linear(in_features=512, out_features=10, bias=True)") != std::string::npos);

  using Net = vgg::vgg11<Input<1, 64, 64>, 10, 8>;
  Net net(2);
  vgg::Tensor4 x(3, 1, 64, 64);
  x.setConstant(0.5f);
  std::ostringstream trace;
  vgg::trace_shapes(net, x, trace);
  CHECK(trace.str() ==
        "vgg_block_1 output shape: [3, 8, 32, 32]\n"
        "vgg_block_2 output shape: [3, 16, 16, 16]\n"
        "vgg_block_3 output shape: [3, 32, 8, 8]\n"
        "vgg_block_4 output shape: [3, 64, 4, 4]\n"
        "vgg_block_5 output shape: [3, 64, 2, 2]\n"
        "fc output shape: [3, 10]\n");

  std::ostringstream counts;
  vgg::print_parameter_counts(net, counts);
  CHECK(counts.str().find("vgg_block_1: 80\n") != std::string::npos);  // 8*1*9 + 8
  CHECK(counts.str().find("total: " + std::to_string(Net::num_params)) != std::string::npos);
}
