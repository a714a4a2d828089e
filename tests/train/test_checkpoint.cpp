// Network checkpoints: weights round trip under state_dict names, architecture and shape checks,
// and training checkpoints whose resume gives bit-identical results to an uninterrupted run.
#include <doctest/doctest.h>

#include <vgg/io/checkpoint.hpp>
#include <vgg/vgg.hpp>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "../core/reference.hpp"

namespace fs = std::filesystem;

namespace {
using Net = vgg::vgg11<vgg::Input<1, 32, 32>, 10, 16>;
using Other = vgg::vgg11<vgg::Input<1, 32, 32>, 10, 8>;

struct TempDir {
  fs::path path;
  TempDir() : path(fs::temp_directory_path() / ("vgg_ckpt_" + std::to_string(::getpid()))) {
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

std::vector<float> all_params(auto& net) {
  std::vector<float> v;
  net.for_each_parameter_data([&](std::span<float> p, std::span<float>) { v.insert(v.end(), p.begin(), p.end()); });
  return v;
}
}  // namespace

TEST_CASE("weights round trip with state_dict names and the architecture in the metadata") {
  TempDir dir;
  Net a(1), b(2);
  CHECK(all_params(a) != all_params(b));
  vgg::io::save_weights(dir.path / "w.safetensors", a, {{"note", "test"}});
  const auto meta = vgg::io::load_weights(dir.path / "w.safetensors", b);
  CHECK(all_params(a) == all_params(b));
  CHECK(meta.at("vgg.architecture") == Net::architecture());
  CHECK(meta.at("note") == "test");
  CHECK(Net::architecture() ==
        "Input<1,32,32> VggBlock<1,1,4> VggBlock<1,4,8> VggBlock<2,8,16> VggBlock<2,16,32> VggBlock<2,32,32> "
        "Classifier<256,10,0.5>");
  const auto file = vgg::io::load_safetensors(dir.path / "w.safetensors");
  CHECK(file.contains("vgg_block_3.2.weight"));
  CHECK(file.contains("fc.7.bias"));
}

TEST_CASE("the golden PyTorch weights load directly (PyTorch -> vgg)") {
  // The golden file holds state_dict tensors prefixed with "param."; a plain PyTorch export has the
  // bare names: emulate it by loading through the generic binding with that prefix.
  Net net(0);
  const auto file = vgg::io::load_safetensors(std::string(VGG_TEST_DATA_DIR) + "/../golden/vgg11_w16_32.safetensors");
  const auto refs = vgg::io::detail::parameter_refs(net, "param.");
  CHECK_NOTHROW(vgg::io::load_parameters(file, refs, vgg::io::LoadPolicy{.allow_extra = true}));
  CHECK(net.layer<0>().weight()[0] == file.read_all<float>("param.vgg_block_1.0.weight")[0]);
}

TEST_CASE("loading a checkpoint of another architecture, shape or tensor set fails clearly and changes nothing") {
  TempDir dir;
  Other other(3);
  vgg::io::save_weights(dir.path / "other.safetensors", other);
  Net net(4);
  const auto before = all_params(net);
  CHECK_THROWS_WITH_AS(vgg::io::load_weights(dir.path / "other.safetensors", net),
                       doctest::Contains("holds a network of architecture 'Input<1,32,32> VggBlock<1,1,8>"),
                       vgg::io::CheckpointError);

  // Without architecture metadata (e.g. a hand-made PyTorch export), shapes are checked per tensor.
  std::vector<vgg::io::ParamRef> refs;
  other.for_each_parameter([&](const vgg::ParameterView& p) { refs.push_back({p.name, p.shape, p.value}); });
  vgg::io::save_parameters(dir.path / "bare.safetensors", refs);
  CHECK_THROWS_WITH_AS(vgg::io::load_weights(dir.path / "bare.safetensors", net),
                       doctest::Contains("vgg_block_1.0.weight"), vgg::io::CheckpointError);
  CHECK(all_params(net) == before);

  // A missing tensor and an extra tensor.
  std::vector<vgg::io::ParamRef> own;
  net.for_each_parameter([&](const vgg::ParameterView& p) { own.push_back({p.name, p.shape, p.value}); });
  auto missing = own;
  missing.pop_back();
  vgg::io::save_parameters(dir.path / "missing.safetensors", missing);
  CHECK_THROWS_WITH_AS(vgg::io::load_weights(dir.path / "missing.safetensors", net), doctest::Contains("fc.7.bias"),
                       vgg::io::CheckpointError);
  auto extra = own;
  extra.push_back({"fc.9.weight", {1}, own.back().data.first(1)});
  vgg::io::save_parameters(dir.path / "extra.safetensors", extra);
  CHECK_THROWS_WITH_AS(vgg::io::load_weights(dir.path / "extra.safetensors", net), doctest::Contains("fc.9.weight"),
                       vgg::io::CheckpointError);
  CHECK(all_params(net) == before);
}

TEST_CASE("resuming from a training checkpoint reproduces an uninterrupted run exactly") {
  TempDir dir;
  const int n = 4;
  const auto x = ref::random_vector(std::size_t(n) * 1024, 5, 0.0f, 1.0f);
  const std::vector<std::int32_t> labels{1, 3, 5, 7};

  auto run = [&](auto make_optimizer) {
    // Uninterrupted: 5 steps in train mode (dropout on, so the mask counter matters too).
    auto a = std::make_unique<Net>(9);
    auto opt_a = make_optimizer();
    for (int s = 0; s < 5; ++s) vgg::train_step(*a, opt_a, x, labels);

    // Interrupted after 3 steps, saved, restored into fresh objects, 2 more steps.
    auto b = std::make_unique<Net>(9);
    auto opt_b = make_optimizer();
    for (int s = 0; s < 3; ++s) vgg::train_step(*b, opt_b, x, labels);
    vgg::io::save_training_checkpoint(dir.path / "t.safetensors", *b, opt_b,
                                      {.epoch = 1, .network_step = std::int64_t(b->step()), .metadata = {{"seed", "9"}}});
    auto c = std::make_unique<Net>(123);  // different init: everything must come from the file
    auto opt_c = make_optimizer();
    const auto state = vgg::io::load_training_checkpoint(dir.path / "t.safetensors", *c, opt_c);
    CHECK(state.epoch == 1);
    CHECK(state.metadata.at("seed") == "9");
    CHECK(opt_c.steps() == 3);
    for (int s = 0; s < 2; ++s) vgg::train_step(*c, opt_c, x, labels);
    CHECK(all_params(*a) == all_params(*c));
  };
  run([] { return vgg::Adam({.lr = 1e-3f}); });
  run([] { return vgg::Sgd({.lr = 0.01f, .momentum = 0.9f}); });

  // A weights-only file is not a training checkpoint; the optimizer kind must match.
  Net net(1);
  vgg::Adam adam;
  vgg::io::save_weights(dir.path / "w.safetensors", net);
  CHECK_THROWS_WITH_AS(vgg::io::load_training_checkpoint(dir.path / "w.safetensors", net, adam),
                       doctest::Contains("is not a training checkpoint"), vgg::io::CheckpointError);
  vgg::Sgd sgd({.lr = 0.1f});
  CHECK_THROWS_WITH_AS(vgg::io::load_training_checkpoint(dir.path / "t.safetensors", net, adam),
                       doctest::Contains("optimizer 'sgd', but training uses 'adam'"), vgg::io::CheckpointError);
  // A training checkpoint still loads as plain weights.
  CHECK_NOTHROW(vgg::io::load_weights(dir.path / "t.safetensors", net));
}
