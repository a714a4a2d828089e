// Network checkpoints: weights round trip under state_dict names, architecture and shape checks,
// and training checkpoints whose resume gives bit-identical results to an uninterrupted run.
#include <doctest/doctest.h>

#include <vgg/io/checkpoint.hpp>
#include <vgg/vgg.hpp>

#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <limits>
#include <map>
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

namespace {
/// Every tensor of a safetensors file in memory, to forge damaged variants of a valid checkpoint.
struct Contents {
  std::map<std::string, std::string> metadata;
  std::vector<std::string> names;
  std::map<std::string, std::vector<std::int64_t>> shapes;
  std::map<std::string, std::vector<float>> floats;
  std::map<std::string, std::vector<std::int64_t>> ints;

  explicit Contents(const fs::path& path) {
    const auto file = vgg::io::load_safetensors(path);
    metadata = file.metadata();
    names = file.names();
    for (const auto& name : names) {
      shapes[name] = file.info(name).shape;
      if (file.info(name).dtype == vgg::io::Dtype::F32) floats[name] = file.read_all<float>(name);
      else ints[name] = file.read_all<std::int64_t>(name);
    }
  }
  void save(const fs::path& path) const {
    std::vector<vgg::io::TensorRecord> records;
    for (const auto& name : names)
      records.push_back(floats.contains(name) ? vgg::io::tensor_record(name, shapes.at(name), floats.at(name))
                                              : vgg::io::tensor_record(name, shapes.at(name), ints.at(name)));
    vgg::io::save_safetensors(path, records, metadata);
  }
};

/// A valid Adam training checkpoint of Net after two steps, at `path`.
void write_training_checkpoint(const fs::path& path, std::int64_t epoch = 1) {
  auto net = std::make_unique<Net>(5);
  vgg::Adam adam({.lr = 1e-3f});
  const auto x = ref::random_vector(2 * 1024, 3, 0.0f, 1.0f);
  const std::vector<std::int32_t> labels{2, 4};
  for (int s = 0; s < 2; ++s) vgg::train_step(*net, adam, x, labels);
  vgg::io::save_training_checkpoint(path, *net, adam, {.epoch = epoch, .network_step = 2, .metadata = {}});
}
}  // namespace

TEST_CASE("damaged training counters are refused on load: no wrap into a two-billion-epoch loop") {
  TempDir dir;
  const auto good = dir.path / "good.safetensors", bad = dir.path / "bad.safetensors";
  write_training_checkpoint(good);
  struct Case {
    const char* tensor;
    std::int64_t value;
    const char* message;
  };
  const Case cases[] = {
      {"train.epoch", std::int64_t(1) << 31, "counter 'train.epoch' is 2147483648, outside the valid range 0 to 2147483647"},
      {"train.epoch", std::int64_t(1) << 32, "counter 'train.epoch' is 4294967296, outside the valid range"},
      {"train.epoch", -3, "counter 'train.epoch' is -3, outside the valid range"},
      {"train.network_step", -1, "counter 'train.network_step' is -1, outside the valid range 0 to 9223372036854775807"},
      {"optimizer.step", -1, "counter 'optimizer.step' is -1"},
  };
  for (const Case& c : cases) {
    Contents contents(good);
    contents.ints.at(c.tensor)[0] = c.value;
    contents.save(bad);
    auto net = std::make_unique<Net>(1);
    vgg::Adam adam;
    const auto before = all_params(*net);
    CHECK_THROWS_WITH_AS(vgg::io::load_training_checkpoint(bad, *net, adam), doctest::Contains(c.message),
                         vgg::io::CheckpointError);
    CHECK(all_params(*net) == before);  // nothing loaded
    CHECK(adam.steps() == 0);
  }
  // The largest valid epoch loads; saving refuses counters it could not load back.
  Contents contents(good);
  contents.ints.at("train.epoch")[0] = vgg::io::kMaxCheckpointEpoch;
  contents.save(bad);
  auto net = std::make_unique<Net>(1);
  vgg::Adam adam;
  CHECK(vgg::io::load_training_checkpoint(bad, *net, adam).epoch == vgg::io::kMaxCheckpointEpoch);
  const vgg::io::TrainingState negative{.epoch = -1, .network_step = 0, .metadata = {}};
  const vgg::io::TrainingState too_large{.epoch = std::int64_t(1) << 31, .network_step = 0, .metadata = {}};
  CHECK_THROWS_AS(vgg::io::save_training_checkpoint(bad, *net, adam, negative), std::invalid_argument);
  CHECK_THROWS_AS(vgg::io::save_training_checkpoint(bad, *net, adam, too_large), std::invalid_argument);
}

TEST_CASE("NaN and infinite weights or optimizer state are refused on load, naming the tensor") {
  TempDir dir;
  const auto good = dir.path / "good.safetensors", bad = dir.path / "bad.safetensors";
  write_training_checkpoint(good);
  struct Case {
    const char* tensor;
    float value;
    const char* message;
  };
  const Case cases[] = {
      {"vgg_block_2.0.weight", std::numeric_limits<float>::quiet_NaN(),
       "weight tensor 'vgg_block_2.0.weight' holds nan at element 7"},
      {"fc.7.bias", -std::numeric_limits<float>::infinity(), "weight tensor 'fc.7.bias' holds -inf at element 7"},
      {"optimizer.exp_avg.fc.1.weight", std::numeric_limits<float>::infinity(),
       "optimizer state tensor 'optimizer.exp_avg.fc.1.weight' holds inf at element 7"},
      {"optimizer.exp_avg_sq.vgg_block_2.0.bias", -0.5f,
       "'optimizer.exp_avg_sq.vgg_block_2.0.bias' holds the negative second moment -0.5 at element 7"},
  };
  for (const Case& c : cases) {
    Contents contents(good);
    contents.floats.at(c.tensor).at(7) = c.value;
    contents.save(bad);
    auto net = std::make_unique<Net>(1);
    const auto before = all_params(*net);
    vgg::Adam adam;
    CHECK_THROWS_WITH_AS(vgg::io::load_training_checkpoint(bad, *net, adam), doctest::Contains(c.message),
                         vgg::io::CheckpointError);
    CHECK(all_params(*net) == before);
    if (std::string(c.tensor).rfind("optimizer.", 0) == 0) continue;  // weights-only loads ignore the state
    // vgg-train --evaluate loads through load_weights: the same refusal, nothing loaded.
    CHECK_THROWS_WITH_AS(vgg::io::load_weights(bad, *net), doctest::Contains(c.message), vgg::io::CheckpointError);
    CHECK(all_params(*net) == before);
  }
}

TEST_CASE("a checkpoint without metadata of another width reports the architecture, not 32 stray tensors") {
  TempDir dir;
  Other other(3);
  vgg::Adam adam;
  vgg::io::save_training_checkpoint(dir.path / "other.safetensors", other, adam,
                                    {.epoch = 0, .network_step = 0, .metadata = {}});
  Contents contents(dir.path / "other.safetensors");
  contents.metadata.clear();  // as after a conversion that dropped __metadata__
  contents.save(dir.path / "bare.safetensors");
  Net net(4);
  try {
    vgg::io::load_weights(dir.path / "bare.safetensors", net);
    FAIL("loaded a checkpoint of another width");
  } catch (const vgg::io::CheckpointError& e) {
    const std::string message = e.what();
    CHECK(message.find("has no architecture metadata and holds a network of another architecture than '" +
                       Net::architecture() + "'") != std::string::npos);
    CHECK(message.find("'vgg_block_1.0.weight' expected [4,1,3,3], found [8,1,3,3]") != std::string::npos);
    CHECK(message.find("unexpected tensors") == std::string::npos);
  }
  vgg::Adam fresh;
  CHECK_THROWS_WITH_AS(vgg::io::load_training_checkpoint(dir.path / "bare.safetensors", net, fresh),
                       doctest::Contains("another architecture"), vgg::io::CheckpointError);
}

TEST_CASE("saving refuses to replace a directory, FIFO, symbolic link or device node, and leaves it alone") {
  TempDir dir;
  Net net(1);
  vgg::Adam adam;
  auto refused = [&](const fs::path& target, const char* kind) {
    const std::string expected = "refusing to save checkpoint '" + target.string() + "': it is " + kind;
    CHECK_THROWS_WITH_AS(vgg::io::save_weights(target, net), doctest::Contains(expected.c_str()),
                         vgg::io::CheckpointError);
    CHECK_THROWS_WITH_AS(vgg::io::save_training_checkpoint(target, net, adam, {}), doctest::Contains(kind),
                         vgg::io::CheckpointError);
    CHECK_FALSE(fs::exists(fs::path(target.string() + ".tmp")));
  };
  fs::create_directory(dir.path / "directory");
  refused(dir.path / "directory", "a directory");
  CHECK(fs::is_directory(dir.path / "directory"));

  REQUIRE(::mkfifo((dir.path / "fifo").c_str(), 0600) == 0);
  refused(dir.path / "fifo", "a FIFO");
  CHECK(fs::is_fifo(dir.path / "fifo"));

  vgg::io::save_weights(dir.path / "target.safetensors", net);
  fs::create_symlink(dir.path / "target.safetensors", dir.path / "link");
  refused(dir.path / "link", "a symbolic link");
  CHECK(fs::is_symlink(dir.path / "link"));

  // A device node of our own (creating one needs root; the test reports when it cannot).
  if (::mknod((dir.path / "null").c_str(), S_IFCHR | 0600, makedev(1, 3)) == 0) {
    refused(dir.path / "null", "a character device");
    CHECK(fs::is_character_file(dir.path / "null"));
  } else {
    MESSAGE("skipped the device-node case: mknod needs root");
  }
  // The temporary file's path is checked too: a symbolic link there would have the save
  // truncate its target.
  vgg::io::save_weights(dir.path / "victim", net);
  const auto victim_size = fs::file_size(dir.path / "victim");
  fs::create_symlink(dir.path / "victim", dir.path / "w.safetensors.tmp");
  CHECK_THROWS_WITH_AS(vgg::io::save_weights(dir.path / "w.safetensors", net),
                       doctest::Contains("w.safetensors.tmp': it is a symbolic link"), vgg::io::CheckpointError);
  CHECK(fs::file_size(dir.path / "victim") == victim_size);
  CHECK_FALSE(fs::exists(dir.path / "w.safetensors"));
  // A regular file is replaced as before.
  CHECK_NOTHROW(vgg::io::save_weights(dir.path / "target.safetensors", net));
}
