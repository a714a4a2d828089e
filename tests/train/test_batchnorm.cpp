// Batch norm (vgg::BatchNorm blocks): finite-difference checks of the conv + norm + ReLU layer in
// both modes and on both CPU kernel paths, a whole batch-norm network, PyTorch parity from
// tests/golden/bn_odd.safetensors (tools/make_golden_bn.py), state in checkpoints and out of the
// optimizers' reach, and the module printout.
#include <doctest/doctest.h>

#include <vgg/io/checkpoint.hpp>
#include <vgg/io/safetensors.hpp>
#include <vgg/vgg.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "../core/reference.hpp"

namespace {

#define CPU_BACKENDS vgg::cpu::Backend, vgg::cpu::PlainBackend

using vgg::BatchNorm;
using vgg::Input;
using vgg::VggBlock;

/// The golden case's network: 13 x 11 pools to 6 x 5, then 3 x 2; dropout 0, so train mode
/// differs from eval mode by the batch norm only.
template <class B = vgg::cpu::Backend>
using BnOdd = typename vgg::Vgg<Input<3, 13, 11>, VggBlock<2, 3, 5, BatchNorm>, VggBlock<1, 5, 6, BatchNorm>,
                                vgg::Classifier<7, 4, 0.0>>::template on<B>;

double dot(const std::vector<float>& r, const float* y) {
  double s = 0;
  for (std::size_t i = 0; i < r.size(); ++i) s += double(r[i]) * y[i];
  return s;
}

double central_difference(float& v, const std::function<double()>& f, float eps) {
  const float saved = v;
  v = saved + eps;
  const double up = f();
  v = saved - eps;
  const double down = f();
  v = saved;
  return (up - down) / (2.0 * double(eps));
}

/// Mismatches of analytic against central differences of f over every `stride`-th element of
/// `values`: |a - n| > tol * (1 + |n|) for step eps, and again for eps / 4 and eps / 16. With batch
/// statistics a step of any weight moves every output of its channel (and, in a network, of every
/// later layer), so a ReLU or a pool window switches inside a 1e-3 step for several % of the weights
/// (measured: the numeric value converges on the analytic one as the step shrinks, to 1e-3 at
/// eps / 16); a smaller step rarely meets one too.
int compare(std::span<float> values, std::span<const float> analytic, const std::function<double()>& f, float eps,
            double tol, std::size_t stride = 1) {
  int bad = 0;
  auto mismatch = [&](double n, std::size_t i) { return std::abs(double(analytic[i]) - n) > tol * (1.0 + std::abs(n)); };
  for (std::size_t i = 0; i < values.size(); i += stride) {
    double n = central_difference(values[i], f, eps);
    for (float smaller = eps / 4; mismatch(n, i) && smaller >= eps / 16; smaller /= 4)
      n = central_difference(values[i], f, smaller);
    if (mismatch(n, i)) {
      if (bad < 5) MESSAGE("element ", i, ": analytic ", analytic[i], " numeric ", n);
      ++bad;
    }
  }
  return bad;
}

std::vector<float> copy(std::span<const float> s) { return {s.begin(), s.end()}; }

/// max |a - b| / max |b| (the tolerance is relative to the tensor's largest entry).
double relative_error(std::span<const float> a, std::span<const float> b) {
  REQUIRE(a.size() == b.size());
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    diff = std::max(diff, double(std::abs(a[i] - b[i])));
    scale = std::max(scale, double(std::abs(b[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

/// The layer through L = sum(r * out), out = the layer's output or, pooled, maxpool2x2 of it.
template <class L>
void check_layer(vgg::Mode mode, bool pooled, int n, int threads) {
  CAPTURE(threads);
  CAPTURE(pooled);
  CAPTURE(mode == vgg::Mode::train);
  using B = typename L::backend;
  L layer;
  typename B::Context exec;
  exec.set_threads(threads);
  vgg::Rng rng(7);
  layer.reset_parameters(rng, exec);
  // Gamma and beta away from 1 and 0, running statistics away from 0 and 1 (as after training).
  auto& norm = layer.norm();
  for (std::size_t c = 0; c < norm.weight().size(); ++c) {
    norm.weight()[c] = 0.5f + 0.25f * float(c);
    norm.bias()[c] = 0.1f * float(c) - 0.1f;
    norm.running_mean()[c] = 0.05f * float(c);
    norm.running_var()[c] = 0.5f + 0.3f * float(c);
  }
  layer.reserve(exec, n, pooled);
  layer.reserve_backward(exec, n, pooled);
  const vgg::RunContext ctx{mode, 1, 0, 0};
  constexpr vgg::Shape out = L::output_shape;
  const std::size_t out_size = std::size_t(n) * (pooled ? std::size_t(out.c) * (out.h / 2) * (out.w / 2) : out.size());
  auto x = ref::random_vector(std::size_t(n) * L::input_shape.size(), 20);
  const auto r = ref::random_vector(out_size, 21);
  std::vector<float> y(std::size_t(n) * out.size()), pooled_y(out_size), dx(x.size());
  auto loss = [&] {
    if (pooled) {
      layer.forward_pooled(exec, x.data(), pooled_y.data(), n, ctx);
      return dot(r, pooled_y.data());
    }
    layer.forward(exec, x.data(), y.data(), n, ctx);
    return dot(r, y.data());
  };
  loss();
  std::vector<float> dy = r;
  if (pooled)
    layer.backward_pooled(exec, x.data(), dy.data(), dx.data(), n, ctx);
  else
    layer.backward(exec, x.data(), y.data(), dy.data(), dx.data(), n, ctx);
  const auto wg = copy(layer.weight_grad()), bg = copy(layer.bias_grad());
  const auto gg = copy(norm.weight_grad()), betag = copy(norm.bias_grad());
  {  // Without an input gradient (a first layer: other kernels on some paths), the same parameter gradients.
    std::vector<float> dy_again = r;
    if (pooled)
      layer.backward_pooled(exec, x.data(), dy_again.data(), nullptr, n, ctx);
    else
      layer.backward(exec, x.data(), y.data(), dy_again.data(), nullptr, n, ctx);
    CHECK(relative_error(layer.weight_grad(), wg) <= 1e-5);
    CHECK(relative_error(norm.weight_grad(), gg) <= 1e-5);
    CHECK(relative_error(norm.bias_grad(), betag) <= 1e-5);
  }
  // The norm is not piecewise linear: second-order terms make central differences less exact.
  CHECK(compare(layer.weight(), wg, loss, 1e-3f, 5e-3, 3) == 0);
  CHECK(compare(norm.weight(), gg, loss, 1e-3f, 5e-3) == 0);
  CHECK(compare(norm.bias(), betag, loss, 1e-3f, 5e-3) == 0);
  CHECK(compare(x, dx, loss, 1e-3f, 5e-3, 2) == 0);
  if (mode == vgg::Mode::train) {
    // The norm removes any per-channel constant: the conv bias has no effect, and no gradient.
    for (float g : bg) CHECK(std::abs(g) <= 1e-4f);
  } else {
    CHECK(compare(layer.bias(), bg, loss, 1e-3f, 5e-3) == 0);
  }
}

std::string golden(const char* name) { return std::string(VGG_TEST_DATA_DIR) + "/../golden/" + name; }

/// The whole state_dict of the file under `prefix`: parameters, running statistics, counters.
template <class Net>
void load_state_dict(Net& net, const vgg::io::SafetensorsFile& file, const std::string& prefix) {
  net.for_each_parameter([&](const vgg::ParameterView& p) { file.read_f32(prefix + p.name, p.value, p.shape); });
  net.for_each_state([&](const vgg::StateView& s) { file.read_f32(prefix + s.name, s.value, s.shape); });
  net.for_each_counter([&](const vgg::CounterView& c) { *c.value = file.read_all<std::int64_t>(prefix + c.name)[0]; });
}

/// A conv's bias before a batch norm (module 0, 3, ... of a block): its gradient is 0 in exact
/// arithmetic and float noise in both programs; it is compared against the conv weight's scale.
bool is_conv_bias_before_norm(const std::string& name) {
  if (!name.starts_with("vgg_block_") || !name.ends_with(".bias")) return false;
  const std::size_t dot1 = name.find('.'), dot2 = name.find('.', dot1 + 1);
  return std::stoi(name.substr(dot1 + 1, dot2 - dot1 - 1)) % 3 == 0;
}

template <class Net>
void check_gradients(Net& net, const vgg::io::SafetensorsFile& file, const std::string& prefix, bool train) {
  std::vector<float> previous_weight_grad;
  net.for_each_parameter([&](const vgg::ParameterView& p) {
    CAPTURE(prefix + p.name);
    const auto expected = file.read_all<float>(prefix + "grad." + p.name);
    if (train && is_conv_bias_before_norm(p.name)) {
      double worst = 0, scale = 0;
      for (std::size_t i = 0; i < expected.size(); ++i) worst = std::max(worst, double(std::abs(p.grad[i])));
      for (float g : previous_weight_grad) scale = std::max(scale, double(std::abs(g)));
      CHECK(worst <= 1e-5 * scale);
    } else {
      CHECK(relative_error(p.grad, expected) <= 1e-4);
    }
    previous_weight_grad = copy(p.grad);
  });
}

template <class Net>
void check_parity(int threads) {
  CAPTURE(threads);
  const auto file = vgg::io::load_safetensors(golden("bn_odd.safetensors"));
  const auto x = file.read_all<float>("input");
  std::vector<std::int32_t> labels;
  for (auto l : file.read_all<std::int64_t>("labels")) labels.push_back(std::int32_t(l));
  const int n = int(labels.size());
  auto net = std::make_unique<Net>(0);
  net->set_threads(threads);
  load_state_dict(*net, file, "param.");

  // Train mode at the initial state: batch statistics.
  net->train();
  const auto logits = net->forward(x, n);
  CHECK(relative_error({logits.data(), std::size_t(logits.size())}, file.read_all<float>("logits")) <= 1e-5);
  const double loss = net->loss(labels).loss;
  CHECK(std::abs(loss - file.read_all<float>("loss")[0]) <= 1e-5 * loss);
  net->backward(/*input_gradient=*/true);
  check_gradients(*net, file, "", true);
  CHECK(relative_error(net->input_gradient(), file.read_all<float>("grad.input")) <= 1e-4);

  // Three SGD steps in train mode from the initial state (the pass above moved the running statistics).
  load_state_dict(*net, file, "param.");
  vgg::Sgd sgd({.lr = 0.05f, .momentum = 0.9f});
  const auto losses = file.read_all<float>("sgd.losses");
  for (int s = 0; s < 3; ++s) {
    const double l = vgg::train_step(*net, sgd, x, labels).loss;
    CHECK(std::abs(l - losses[std::size_t(s)]) <= 1e-5 * losses[std::size_t(s)]);
  }
  net->for_each_parameter([&](const vgg::ParameterView& p) {
    CAPTURE(p.name);
    CHECK(relative_error(p.value, file.read_all<float>("sgd." + p.name)) <= 1e-5);
  });
  int states = 0;
  net->for_each_state([&](const vgg::StateView& s) {
    CAPTURE(s.name);
    CHECK(relative_error(s.value, file.read_all<float>("sgd." + s.name)) <= 1e-5);
    ++states;
  });
  CHECK(states == 6);
  net->for_each_counter([&](const vgg::CounterView& c) {
    CAPTURE(c.name);
    CHECK(*c.value == 3);
    CHECK(*c.value == file.read_all<std::int64_t>("sgd." + c.name)[0]);
  });

  // Eval mode after the steps: the running statistics, folded into the convs.
  net->eval();
  const auto eval_logits = net->forward(x, n);
  CHECK(relative_error({eval_logits.data(), std::size_t(eval_logits.size())}, file.read_all<float>("eval.logits")) <=
        1e-5);
  const double eval_loss = net->loss(labels).loss;
  CHECK(std::abs(eval_loss - file.read_all<float>("eval.loss")[0]) <= 1e-5 * eval_loss);
  net->backward(/*input_gradient=*/true);
  check_gradients(*net, file, "eval.", false);
  CHECK(relative_error(net->input_gradient(), file.read_all<float>("eval.grad.input")) <= 1e-4);
}

}  // namespace

TEST_CASE_TEMPLATE("conv + batch norm + ReLU: gradients match finite differences in both modes, pooled or not", B,
                   CPU_BACKENDS) {
  for (vgg::Mode mode : {vgg::Mode::train, vgg::Mode::eval})
    for (bool pooled : {false, true}) {
      const int threads = pooled ? 2 : 1;  // (each channel is one thread's: threads only split channels)
      check_layer<vgg::Conv3x3BatchNormRelu<3, 4, 7, 5, B>>(mode, pooled, 3, threads);
      check_layer<vgg::Conv3x3BatchNormRelu<1, 3, 9, 6, B>>(mode, pooled, 2, 3 - threads);  // one input channel
    }
}

TEST_CASE_TEMPLATE("training batch norm: batch statistics, running statistics with momentum 0.1 and the unbiased "
                   "variance",
                   B, CPU_BACKENDS) {
  // A 1x1 conv would be simplest; a 3x3 conv with a centre-only identity kernel gives z = x.
  vgg::Conv3x3BatchNormRelu<1, 1, 2, 3, B> layer;
  typename B::Context exec;
  vgg::Rng rng(1);
  layer.reset_parameters(rng, exec);
  std::fill(layer.weight().begin(), layer.weight().end(), 0.0f);
  layer.weight()[4] = 1.0f;
  layer.bias()[0] = 0.0f;
  layer.reserve(exec, 2);
  const std::vector<float> x{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};  // 2 images of 2 x 3: mean 6.5
  std::vector<float> y(12);
  layer.forward(exec, x.data(), y.data(), 2, {vgg::Mode::train, 0, 0, 0});
  const double var = 143.0 / 12.0;  // biased: sum (k - 6.5)^2 / 12
  for (std::size_t i = 0; i < 12; ++i)
    CHECK(y[i] == doctest::Approx(std::max(0.0, (double(x[i]) - 6.5) / std::sqrt(var + 1e-5))).epsilon(1e-5));
  CHECK(layer.norm().running_mean()[0] == doctest::Approx(0.65));
  CHECK(layer.norm().running_var()[0] == doctest::Approx(0.9 + 0.1 * 143.0 / 11.0));
  CHECK(layer.norm().num_batches_tracked() == 1);
  // Eval mode normalises with the running statistics (and leaves them, and the counter, alone).
  layer.forward(exec, x.data(), y.data(), 2, {vgg::Mode::eval, 0, 0, 0});
  const double rv = 0.9 + 0.1 * 143.0 / 11.0;
  for (std::size_t i = 0; i < 12; ++i)
    CHECK(y[i] == doctest::Approx(std::max(0.0, (double(x[i]) - 0.65) / std::sqrt(rv + 1e-5))).epsilon(1e-5));
  CHECK(layer.norm().num_batches_tracked() == 1);
  CHECK(layer.norm().running_mean()[0] == doctest::Approx(0.65));

  // One value per channel has no variance: refused as PyTorch refuses it.
  vgg::Conv3x3BatchNormRelu<1, 1, 1, 1, B> tiny;
  tiny.reset_parameters(rng, exec);
  tiny.reserve(exec, 1);
  float one = 1.0f, out = 0.0f;
  CHECK_THROWS_AS(tiny.forward(exec, &one, &out, 1, {vgg::Mode::train, 0, 0, 0}), std::invalid_argument);
  tiny.forward(exec, &one, &out, 1, {vgg::Mode::eval, 0, 0, 0});  // eval is fine
}

TEST_CASE("a whole batch-norm network: parameter and input gradients match finite differences in both modes") {
  using Tiny = vgg::Vgg<Input<2, 9, 7>, VggBlock<2, 2, 3, BatchNorm>, VggBlock<1, 3, 4, BatchNorm>,
                        vgg::Classifier<6, 3, 0.0>>;
  Tiny net(21);
  net.set_threads(1);  // threads are covered by the layer checks and the parity test
  const int n = 4;
  auto x = ref::random_vector(std::size_t(n) * Tiny::input_shape.size(), 30, 0, 1);
  const std::vector<std::int32_t> labels{2, 0, 1, 1};
  for (vgg::Mode mode : {vgg::Mode::train, vgg::Mode::eval}) {
    CAPTURE(mode == vgg::Mode::train);
    net.set_mode(mode);
    auto loss = [&] {
      (void)net.forward(x, n);
      return net.loss(labels, false).loss;
    };
    (void)net.forward(x, n);
    (void)net.loss(labels);
    net.backward(/*input_gradient=*/true);
    const auto dx = copy(net.input_gradient());
    std::vector<std::vector<float>> grads;
    std::vector<std::span<float>> values;
    net.for_each_parameter_data([&](std::span<float> v, std::span<float> g) {
      grads.push_back(copy(g));
      values.push_back(v);
    });
    REQUIRE(values.size() == 18);  // 3 convs x (weight, bias, gamma, beta) + 3 linear x 2
    int bad = 0;
    for (std::size_t i = 0; i < values.size(); ++i) {
      // Train mode: conv biases before a norm have no effect (their gradient is checked to be ~0 above).
      if (mode == vgg::Mode::train && i % 4 == 1 && i < 12) continue;
      CAPTURE(i);
      bad += compare(values[i], grads[i], loss, 2e-3f, 1e-2, values[i].size() > 16 ? 3 : 1);
    }
    CHECK(bad == 0);
    CHECK(compare(x, dx, loss, 2e-3f, 1e-2, 5) == 0);
  }
}

TEST_CASE_TEMPLATE("PyTorch parity: logits, loss, every gradient, and the running statistics after 3 SGD steps", B,
                   CPU_BACKENDS) {
  for (int threads : {1, 2}) check_parity<BnOdd<B>>(threads);
}

TEST_CASE("running statistics are state, not parameters: optimizers leave them alone, checkpoints keep them") {
  using Net = BnOdd<>;
  static_assert(Net::num_params == 3 * 5 * 9 + 5 + 5 * 5 * 9 + 5 + 5 * 6 * 9 + 6 + 2 * (5 + 5 + 6) + 36 * 7 + 7 +
                                       7 * 7 + 7 + 7 * 4 + 4);
  static_assert(Net::num_state == 2 * (5 + 5 + 6));
  auto net = std::make_unique<Net>(5);
  std::size_t tensors = 0;
  net->for_each_parameter([&](const vgg::ParameterView&) { ++tensors; });
  CHECK(tensors == 18);
  const auto x = ref::random_vector(4 * Net::input_shape.size(), 3, 0, 1);
  const std::vector<std::int32_t> labels{0, 1, 2, 3};
  vgg::Adam adam({.lr = 0.01f});
  (void)vgg::train_step(*net, adam, x, labels);
  // The forward pass moved the running statistics; the update must not.
  std::vector<float> before, after;
  net->for_each_state([&](const vgg::StateView& s) { before.insert(before.end(), s.value.begin(), s.value.end()); });
  adam.step(*net);
  net->for_each_state([&](const vgg::StateView& s) { after.insert(after.end(), s.value.begin(), s.value.end()); });
  CHECK(before == after);
  CHECK(before != std::vector<float>(before.size(), 0.0f));

  // Saved and loaded with their state_dict names, counters included.
  const auto dir = std::filesystem::temp_directory_path() / ("vgg_test_batchnorm_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto weights = dir / "w.safetensors", training = dir / "t.safetensors";
  vgg::io::save_weights(weights, *net);
  vgg::io::save_training_checkpoint(training, *net, adam, {1, 1, {}});
  const auto file = vgg::io::load_safetensors(weights);
  CHECK(file.info("vgg_block_1.1.running_var").shape == std::vector<std::int64_t>{5});
  CHECK(file.info("vgg_block_2.1.num_batches_tracked").dtype == vgg::io::Dtype::I64);
  CHECK(file.info("vgg_block_2.1.num_batches_tracked").shape.empty());
  CHECK(file.read_all<std::int64_t>("vgg_block_1.4.num_batches_tracked")[0] == 1);
  for (const auto& path : {weights, training}) {
    CAPTURE(path);
    auto other = std::make_unique<Net>(6);
    vgg::Adam other_adam({.lr = 0.01f});
    if (path == weights)
      vgg::io::load_weights(path, *other);
    else
      (void)vgg::io::load_training_checkpoint(path, *other, other_adam);
    std::vector<float> loaded;
    other->for_each_state([&](const vgg::StateView& s) { loaded.insert(loaded.end(), s.value.begin(), s.value.end()); });
    CHECK(loaded == after);
    other->for_each_counter([](const vgg::CounterView& c) { CHECK(*c.value == 1); });
    other->eval();
    net->eval();
    const auto a = copy({net->forward(x, 4).data(), 16});
    const auto b = copy({other->forward(x, 4).data(), 16});
    CHECK(a == b);
  }

  // A file without the state, or with a damaged one, is refused naming the tensor.
  const auto original = vgg::io::load_safetensors(weights);
  auto write_damaged = [&](const std::string& drop, const std::string& negative) {
    std::vector<vgg::io::TensorRecord> records;
    std::vector<std::vector<float>> floats;
    std::vector<std::int64_t> counters;
    floats.reserve(original.names().size());  // records point into these: no reallocation
    counters.reserve(original.names().size());
    for (const std::string& name : original.names()) {
      if (name == drop) continue;
      if (original.info(name).dtype == vgg::io::Dtype::I64) {
        counters.push_back(name == negative ? -1 : 1);
        records.push_back(vgg::io::tensor_record(name, {}, std::span<const std::int64_t>(&counters.back(), 1)));
      } else {
        floats.push_back(original.read_all<float>(name));
        if (name == negative) floats.back()[2] = -1.0f;
        records.push_back(vgg::io::tensor_record(name, original.info(name).shape, floats.back()));
      }
    }
    const auto bad = dir / "bad.safetensors";
    vgg::io::save_safetensors(bad, records, {});
    return bad;
  };
  auto other = std::make_unique<Net>(6);
  CHECK_THROWS_WITH_AS(vgg::io::load_weights(write_damaged("vgg_block_2.1.running_mean", ""), *other),
                       doctest::Contains("missing tensors: 'vgg_block_2.1.running_mean'"), vgg::io::CheckpointError);
  CHECK_THROWS_WITH_AS(vgg::io::load_weights(write_damaged("", "vgg_block_1.4.running_var"), *other),
                       doctest::Contains("'vgg_block_1.4.running_var' holds the negative variance"),
                       vgg::io::CheckpointError);
  CHECK_THROWS_WITH_AS(vgg::io::load_weights(write_damaged("", "vgg_block_1.1.num_batches_tracked"), *other),
                       doctest::Contains("counter 'vgg_block_1.1.num_batches_tracked' is -1"),
                       vgg::io::CheckpointError);
  CHECK_THROWS_WITH_AS(vgg::io::load_weights(write_damaged("vgg_block_1.1.num_batches_tracked", ""), *other),
                       doctest::Contains("vgg_block_1.1.num_batches_tracked"), vgg::io::CheckpointError);
  other->for_each_counter([](const vgg::CounterView& c) { CHECK(*c.value == 0); });  // nothing was loaded
  std::filesystem::remove_all(dir);
}

TEST_CASE("a batch-norm network prints what PyTorch prints, and its architecture names the norm") {
  using Net = vgg::Vgg<Input<3, 13, 11>, VggBlock<2, 3, 5, BatchNorm>, VggBlock<1, 5, 6, BatchNorm>,
                       vgg::Classifier<7, 4>>;
  std::ostringstream modules;
  vgg::print_modules<Net>(modules);
  // print(Vgg()) of the same model in PyTorch 1.13 (tools/make_golden_bn.py's BnVgg with dropout 0.5).
  CHECK(modules.str() ==
        "Vgg(\n"
        "  (vgg_block_1): Sequential(\n"
        "    (0): Conv2d(3, 5, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))\n"
        "    (1): BatchNorm2d(5, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)\n"
        "    (2): ReLU()\n"
        "    (3): Conv2d(5, 5, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))\n"
        "    (4): BatchNorm2d(5, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)\n"
        "    (5): ReLU()\n"
        "    (6): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)\n"
        "  )\n"
        "  (vgg_block_2): Sequential(\n"
        "    (0): Conv2d(5, 6, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))\n"
        "    (1): BatchNorm2d(6, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)\n"
        "    (2): ReLU()\n"
        "    (3): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)\n"
        "  )\n"
        "  (fc): Sequential(\n"
        "    (0): Flatten(start_dim=1, end_dim=-1)\n"
        "    (1): Linear(in_features=36, out_features=7, bias=True)\n"
        "    (2): ReLU()\n"
        "    (3): Dropout(p=0.5, inplace=False)\n"
        "    (4): Linear(in_features=7, out_features=7, bias=True)\n"
        "    (5): ReLU()\n"
        "    (6): Dropout(p=0.5, inplace=False)\n"
        "    (7): Linear(in_features=7, out_features=4, bias=True)\n"
        "  )\n"
        ")\n");
  CHECK(Net::architecture() == "Input<3,13,11> VggBlock<2,3,5,BatchNorm> VggBlock<1,5,6,BatchNorm> Classifier<7,4,0.5>");

  Net net(1);
  vgg::Tensor4 x(2, 3, 13, 11);
  x.setConstant(0.5f);
  std::ostringstream trace;
  vgg::trace_shapes(net, x, trace);
  CHECK(trace.str() ==
        "vgg_block_1 output shape: [2, 5, 6, 5]\n"
        "vgg_block_2 output shape: [2, 6, 3, 2]\n"
        "fc output shape: [2, 4]\n");

  // torchvision's published parameter counts of the batch-norm presets' convolutional parts plus
  // the 25088-4096-4096-1000 head: vgg11_bn 132,868,840 and vgg19_bn 143,678,248.
  static_assert(vgg::vgg11_bn<Input<3, 224, 224>>::num_params == 132'868'840);
  static_assert(vgg::vgg13_bn<Input<3, 224, 224>>::num_params == 133'053'736);
  static_assert(vgg::vgg16_bn<Input<3, 224, 224>>::num_params == 138'365'992);
  static_assert(vgg::vgg19_bn<Input<3, 224, 224>>::num_params == 143'678'248);
  static_assert(vgg::vgg11_bn<Input<1, 224, 224>, 10, 8>::feature_shape == vgg::Shape{64, 7, 7});
}
