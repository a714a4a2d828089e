// PyTorch parity from dumped state (tools/make_golden.py, committed under tests/golden/): the same
// weights and batch must give the same logits, loss, gradients, and parameters after three Adam
// and three SGD-momentum steps. Tolerances are per tensor, relative to the tensor's largest
// entry (see tests/golden/README.md for why element-wise relative error is meaningless near 0).
#include <doctest/doctest.h>

#include <vgg/io/safetensors.hpp>
#include <vgg/vgg.hpp>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

namespace {

using Vgg11W16 = vgg::vgg11<vgg::Input<1, 32, 32>, 10, 16>;
using MixedOdd = vgg::Vgg<vgg::Input<2, 15, 13>, vgg::VggBlock<2, 2, 3>, vgg::VggBlock<1, 3, 4>,
                          vgg::VggBlock<3, 4, 5>, vgg::Classifier<6, 3, 0.25>>;

std::string golden(const char* name) { return std::string(VGG_TEST_DATA_DIR) + "/../golden/" + name; }

/// max |a - b| / max |b| (0 when b is all zeros and a equals it).
double relative_error(std::span<const float> a, std::span<const float> b) {
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    diff = std::max(diff, double(std::abs(a[i] - b[i])));
    scale = std::max(scale, double(std::abs(b[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

template <class Net>
void load_params(Net& net, const vgg::io::SafetensorsFile& file, const std::string& prefix) {
  net.for_each_parameter([&](const vgg::ParameterView& p) { file.read_f32(prefix + p.name, p.value, p.shape); });
}

template <class Net>
void check_against(const vgg::io::SafetensorsFile& file, Net& net, const std::string& prefix, double tol) {
  net.for_each_parameter([&](const vgg::ParameterView& p) {
    const auto expected = file.read_all<float>(prefix + p.name);
    const double err = relative_error(p.value, expected);
    CAPTURE(prefix + p.name);
    CHECK(err <= tol);
  });
}

struct Batch {
  std::vector<float> x;
  std::vector<std::int32_t> labels;
};

Batch read_batch(const vgg::io::SafetensorsFile& file) {
  Batch b{file.read_all<float>("input"), {}};
  for (auto l : file.read_all<std::int64_t>("labels")) b.labels.push_back(std::int32_t(l));
  return b;
}

/// Forward in eval mode (the golden data has dropout off), loss, backward.
template <class Net>
vgg::LossResult loss_and_gradients(Net& net, const Batch& b, bool input_gradient = false) {
  net.eval();
  const auto logits = net.forward(b.x, int(b.labels.size()));
  const auto r = vgg::softmax_cross_entropy(std::span<const float>(logits.data(), std::size_t(logits.size())),
                                            b.labels, Net::num_classes, net.output_gradient());
  net.backward(input_gradient);
  return r;
}

template <class Net>
void check_parity(const char* file_name, float adam_weight_decay, float sgd_weight_decay, bool nesterov,
                  double adam_tol) {
  const auto file = vgg::io::load_safetensors(golden(file_name));
  const Batch batch = read_batch(file);
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    auto net = std::make_unique<Net>(0);
    net->set_threads(threads);
    load_params(*net, file, "param.");

    // Forward and loss.
    net->eval();
    const auto logits = net->forward(batch.x, int(batch.labels.size()));
    const auto expected_logits = file.read_all<float>("logits");
    CHECK(relative_error({logits.data(), std::size_t(logits.size())}, expected_logits) <= 1e-5);
    const double expected_loss = file.read_all<float>("loss")[0];
    const auto result = loss_and_gradients(*net, batch, /*input_gradient=*/true);
    CHECK(std::abs(result.loss - expected_loss) <= 1e-5 * std::abs(expected_loss));

    // Every gradient, and the gradient with respect to the input batch.
    net->for_each_parameter([&](const vgg::ParameterView& p) {
      CAPTURE(p.name);
      CHECK(relative_error(p.grad, file.read_all<float>("grad." + p.name)) <= 1e-4);
    });
    CHECK(relative_error(net->input_gradient(), file.read_all<float>("grad.input")) <= 1e-4);

    // Three Adam steps on the same batch.
    load_params(*net, file, "param.");
    vgg::Adam adam({.lr = 1e-2f, .weight_decay = adam_weight_decay});
    const auto adam_losses = file.read_all<float>("adam.losses");
    for (int s = 0; s < 3; ++s) {
      const double l = loss_and_gradients(*net, batch).loss;
      CHECK(std::abs(l - adam_losses[std::size_t(s)]) <= 1e-5 * std::abs(adam_losses[std::size_t(s)]));
      adam.step(*net);
    }
    check_against(file, *net, "adam.", adam_tol);

    // Three SGD-momentum steps from the initial parameters.
    load_params(*net, file, "param.");
    vgg::Sgd sgd({.lr = 0.05f, .momentum = 0.9f, .weight_decay = sgd_weight_decay, .nesterov = nesterov});
    const auto sgd_losses = file.read_all<float>("sgd.losses");
    for (int s = 0; s < 3; ++s) {
      const double l = loss_and_gradients(*net, batch).loss;
      CHECK(std::abs(l - sgd_losses[std::size_t(s)]) <= 1e-5 * std::abs(sgd_losses[std::size_t(s)]));
      sgd.step(*net);
    }
    check_against(file, *net, "sgd.", 1e-5);
  }
}

}  // namespace

TEST_CASE("PyTorch parity: width/16 VGG-11 on 1x32x32, batch 4") {
  // Adam to 1e-3: weights whose gradients are ~1e-8 (the size of eps) turn float rounding into
  // visible step differences; a float64 PyTorch run differs from float32 PyTorch by 2.2e-4 there.
  check_parity<Vgg11W16>("vgg11_w16_32.safetensors", 0.0f, 0.0f, false, 1e-3);
}

TEST_CASE("PyTorch parity: 3 blocks of mixed NumConvs on odd 2x15x13 inputs, weight decay, Nesterov") {
  check_parity<MixedOdd>("mixed_odd.safetensors", 1e-3f, 1e-3f, true, 1e-5);
}
