// Fine-tuning (vgg/io/fine_tune.hpp and Network::freeze_features): the last layer re-initialised
// for another class count, shape mismatches refused, frozen features left alone by optimizers
// and by the backward pass.
#include <doctest/doctest.h>

#include <vgg/io/checkpoint.hpp>
#include <vgg/io/fine_tune.hpp>
#include <vgg/vgg.hpp>

#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {
using Ten = vgg::Vgg<vgg::Input<1, 8, 8>, vgg::VggBlock<1, 1, 4>, vgg::VggBlock<1, 4, 8>, vgg::Classifier<16, 10>>;
using Five = vgg::Vgg<vgg::Input<1, 8, 8>, vgg::VggBlock<1, 1, 4>, vgg::VggBlock<1, 4, 8>, vgg::Classifier<16, 5>>;
using Wider = vgg::Vgg<vgg::Input<1, 8, 8>, vgg::VggBlock<1, 1, 4>, vgg::VggBlock<1, 4, 16>, vgg::Classifier<16, 10>>;
using TenBn = vgg::Vgg<vgg::Input<1, 8, 8>, vgg::VggBlock<1, 1, 4, vgg::BatchNorm>, vgg::VggBlock<1, 4, 8, vgg::BatchNorm>,
                       vgg::Classifier<16, 10>>;

struct TempDir {
  fs::path path;
  TempDir() : path(fs::temp_directory_path() / ("vgg_fine_tune_" + std::to_string(::getpid()))) {
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

/// name -> host values of every parameter (or gradient).
template <class Net>
std::map<std::string, std::vector<float>> tensors(Net& net, bool gradients = false) {
  std::map<std::string, std::vector<float>> out;
  net.for_each_parameter([&](const vgg::ParameterView& p) {
    const auto v = gradients ? p.grad : p.value;
    out[p.name] = std::vector<float>(v.begin(), v.end());
  });
  return out;
}

bool is_feature(const std::string& name) { return name.starts_with("vgg_block_"); }

std::vector<float> batch_images(int n) {
  std::vector<float> x(std::size_t(n) * 64);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(std::sin(0.37 * double(i)));
  return x;
}
}  // namespace

TEST_CASE("fine-tuning from a checkpoint with another class count re-initialises the last layer only") {
  TempDir dir;
  Five source(3);
  vgg::io::save_weights(dir.path / "five.safetensors", source);
  Ten net(11);
  const auto fresh = tensors(net);  // what a fresh Ten(11) holds
  Ten scrambled(99);                // loading into a network holding other values
  const auto result = vgg::io::load_for_fine_tuning(dir.path / "five.safetensors", scrambled, {.seed = 11});
  CHECK(result.last_layer_reinitialised);
  CHECK(result.last_layer == "fc.7");
  CHECK(result.checkpoint_classes == 5);
  const auto loaded = tensors(scrambled);
  const auto from = tensors(source);
  for (const auto& [name, values] : loaded) {
    CAPTURE(name);
    if (name.starts_with("fc.7.")) {
      CHECK(values == fresh.at(name));  // exactly a fresh network's init from the seed
    } else {
      CHECK(values == from.at(name));
    }
  }
  CHECK(scrambled.seed() == 11);
}

TEST_CASE("fine-tuning from a checkpoint with the same class count loads every tensor") {
  TempDir dir;
  Ten source(3), net(4);
  vgg::io::save_weights(dir.path / "ten.safetensors", source);
  const auto result = vgg::io::load_for_fine_tuning(dir.path / "ten.safetensors", net, {.seed = 4});
  CHECK_FALSE(result.last_layer_reinitialised);
  CHECK(result.checkpoint_classes == 10);
  CHECK(tensors(net) == tensors(source));
}

TEST_CASE("fine-tuning refuses another architecture, naming the tensor and both shapes; the network is unchanged") {
  TempDir dir;
  Wider source(3);
  vgg::io::save_weights(dir.path / "wider.safetensors", source);
  Ten net(4);
  const auto before = tensors(net);
  CHECK_THROWS_WITH_AS(vgg::io::load_for_fine_tuning(dir.path / "wider.safetensors", net),
                       doctest::Contains("tensor 'vgg_block_2.0.weight' expected shape [8,4,3,3], found [16,4,3,3]"),
                       vgg::io::CheckpointError);
  CHECK(tensors(net) == before);

  // Another class count with re-initialisation off: refused as well.
  Five five(3);
  vgg::io::save_weights(dir.path / "five.safetensors", five);
  CHECK_THROWS_WITH_AS(vgg::io::load_for_fine_tuning(dir.path / "five.safetensors", net, {.reinit_last_layer = false}),
                       doctest::Contains("tensor 'fc.7.weight' expected shape [10,16], found [5,16]"),
                       vgg::io::CheckpointError);
  CHECK(tensors(net) == before);

  // Batch-norm tensors the plain network does not have.
  TenBn bn(3);
  vgg::io::save_weights(dir.path / "bn.safetensors", bn);
  CHECK_THROWS_AS(vgg::io::load_for_fine_tuning(dir.path / "bn.safetensors", net), vgg::io::CheckpointError);
  CHECK(tensors(net) == before);
}

TEST_CASE("a missing tensor and a non-finite weight are refused") {
  TempDir dir;
  Ten source(3), net(4);
  const auto before = tensors(net);
  std::vector<vgg::io::ParamRef> refs;
  std::vector<std::vector<float>> keep;
  keep.reserve(64);  // refs point into these
  source.for_each_parameter([&](const vgg::ParameterView& p) {
    if (p.name == "fc.4.bias") return;
    keep.emplace_back(p.value.begin(), p.value.end());
    refs.push_back({p.name, p.shape, keep.back()});
  });
  vgg::io::save_parameters(dir.path / "missing.safetensors", refs);
  CHECK_THROWS_WITH_AS(vgg::io::load_for_fine_tuning(dir.path / "missing.safetensors", net),
                       doctest::Contains("no tensor 'fc.4.bias'"), vgg::io::CheckpointError);

  source.for_each_parameter([&](const vgg::ParameterView& p) {
    if (p.name == "vgg_block_1.0.bias") p.value[1] = std::numeric_limits<float>::quiet_NaN();
  });
  vgg::io::save_weights(dir.path / "nan.safetensors", source);
  CHECK_THROWS_WITH_AS(vgg::io::load_for_fine_tuning(dir.path / "nan.safetensors", net),
                       doctest::Contains("vgg_block_1.0.bias"), vgg::io::CheckpointError);
  CHECK(tensors(net) == before);
}

TEST_CASE("frozen features: Adam and SGD leave the conv blocks bit-identical while the classifier learns") {
  const std::vector<std::int32_t> labels = {0, 3, 7, 9};
  const auto x = batch_images(4);
  auto run = [&](auto optimizer) {
    Ten net(5);
    net.freeze_features();
    CHECK(net.features_frozen());
    net.train();
    const auto before = tensors(net);
    for (int step = 0; step < 3; ++step) vgg::train_step(net, optimizer, x, labels);
    const auto after = tensors(net);
    int features = 0, changed = 0;
    for (const auto& [name, values] : after) {
      CAPTURE(name);
      if (is_feature(name)) {
        ++features;
        CHECK(values == before.at(name));
      } else {
        changed += values != before.at(name);
      }
    }
    CHECK(features == 4);
    CHECK(changed == 6);  // fc.1, fc.4, fc.7: weights and biases
  };
  run(vgg::Adam({.lr = 1e-2f, .weight_decay = 1e-2f}));
  run(vgg::Sgd({.lr = 1e-2f, .momentum = 0.9f, .weight_decay = 1e-2f}));
}

TEST_CASE("frozen backward computes no conv gradient and the classifier's as an unfrozen one does") {
  const std::vector<std::int32_t> labels = {1, 2, 3};
  const auto x = batch_images(3);
  Ten frozen(6), reference(6);
  frozen.freeze_features();
  for (Ten* net : {&frozen, &reference}) {
    net->train();
    net->forward(x, 3);
    net->loss(labels);
    net->backward();
  }
  const auto g = tensors(frozen, true), r = tensors(reference, true);
  for (const auto& [name, values] : g) {
    CAPTURE(name);
    if (is_feature(name)) {
      CHECK(values.empty());  // never reserved: no conv backward ran
    } else {
      CHECK(values == r.at(name));
    }
  }
  CHECK_THROWS_AS(frozen.backward(/*input_gradient=*/true), std::logic_error);

  // After a step with frozen features, unfreezing trains everything again.
  frozen.freeze_features(false);
  CHECK_FALSE(frozen.features_frozen());
  frozen.forward(x, 3);
  frozen.loss(labels);
  frozen.backward();
  for (const auto& [name, values] : tensors(frozen, true)) {
    CAPTURE(name);
    CHECK(values.size() == tensors(frozen).at(name).size());
  }

  // Stale gradients of a net frozen after training are not applied either.
  Ten net(7);
  net.train();
  vgg::Adam adam({.lr = 1e-2f});
  vgg::train_step(net, adam, x, labels);
  net.freeze_features();
  const auto before = tensors(net);
  vgg::train_step(net, adam, x, labels);
  for (const auto& [name, values] : tensors(net)) {
    CAPTURE(name);
    if (is_feature(name)) CHECK(values == before.at(name));
  }
}
