// libFuzzer target: the checkpoint loader (include/vgg/io/checkpoint.hpp) on untrusted files:
// training checkpoints (metadata, optimizer state, counters) for Adam and SGD, and plain weights.
// Only CheckpointError may escape a load; a failed load must leave the network and optimizer
// unchanged; a successful one must hold finite weights and counters in range.
//
// The network is a stand-in with the interface the loader uses (four tensors named like a VGG's),
// for two reasons: inputs stay small (a few hundred bytes of tensors), and clang-14, which builds
// the fuzzers, cannot compile vgg::Classifier (a double template argument) yet.
#include <vgg/io/checkpoint.hpp>

#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

namespace {
class Tiny {
 public:
  static constexpr long num_params = 18 + 2 + 24 + 3;
  explicit Tiny(std::uint64_t seed) : seed_(seed) {
    for (std::size_t i = 0; i < values_.size(); ++i) values_[i] = float(i) * 0.01f;
  }
  static std::string architecture() { return "Input<1,4,4> VggBlock<1,1,2> Classifier<3>"; }
  template <class F>
  void for_each_parameter(F&& f) {
    std::size_t offset = 0;
    auto visit = [&](const char* name, std::vector<std::int64_t> shape, std::size_t size) {
      f(vgg::ParameterView{name, std::move(shape), std::span<float>(values_).subspan(offset, size), {}});
      offset += size;
    };
    visit("vgg_block_1.0.weight", {2, 1, 3, 3}, 18);
    visit("vgg_block_1.0.bias", {2}, 2);
    visit("fc.1.weight", {3, 8}, 24);
    visit("fc.1.bias", {3}, 3);
  }
  // No state beyond the parameters (a batch-norm network has running statistics here).
  static constexpr long long num_state = 0;
  template <class F>
  void for_each_state(F&&) {}
  template <class F>
  void for_each_counter(F&&) {}
  // The seam a checkpoint crosses: host memory, so parameters are copied as they are.
  using backend = vgg::cpu::PlainBackend;
  backend::Context& context() { return context_; }
  void copy_parameters_to_host(std::span<float> host) { std::copy(values_.begin(), values_.end(), host.begin()); }
  void copy_parameters_from_host(std::span<const float> host) { std::copy(host.begin(), host.end(), values_.begin()); }
  std::uint64_t seed() const { return seed_; }
  std::uint64_t step() const { return step_; }
  void set_seed(std::uint64_t seed) { seed_ = seed; }
  void set_step(std::uint64_t step) { step_ = step; }

 private:
  std::vector<float> values_ = std::vector<float>(num_params);
  backend::Context context_;
  std::uint64_t seed_, step_ = 0;
};

void require(bool condition) {
  if (!condition) std::abort();
}

std::vector<float> weights(Tiny& net) {
  std::vector<float> v;
  net.for_each_parameter([&](const vgg::ParameterView& p) { v.insert(v.end(), p.value.begin(), p.value.end()); });
  return v;
}

const std::filesystem::path& scratch() {
  static const std::filesystem::path path =
      std::filesystem::temp_directory_path() / ("fuzz_checkpoint_" + std::to_string(::getpid()) + ".safetensors");
  return path;
}

template <class Optimizer>
void load_training(const std::filesystem::path& path, Tiny& net, Optimizer optimizer) {
  const auto before = weights(net);
  try {
    const auto state = vgg::io::load_training_checkpoint(path, net, optimizer);
    require(state.epoch >= 0 && state.epoch <= vgg::io::kMaxCheckpointEpoch && state.network_step >= 0);
    require(optimizer.steps() >= 0);
    for (float v : weights(net)) require(std::isfinite(v));
  } catch (const vgg::io::CheckpointError&) {
    require(weights(net) == before);
    require(optimizer.steps() == 0);
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (std::FILE* out = std::fopen(scratch().c_str(), "wb")) {
    const bool written = std::fwrite(data, 1, size, out) == size;
    std::fclose(out);
    if (!written) return 0;
  } else {
    return 0;
  }
  static Tiny net(1);
  load_training(scratch(), net, vgg::Adam({.lr = 1e-3f}));
  load_training(scratch(), net, vgg::Sgd({.lr = 0.1f, .momentum = 0.9f}));
  const auto before = weights(net);
  try {
    vgg::io::load_weights(scratch(), net);
    for (float v : weights(net)) require(std::isfinite(v));
  } catch (const vgg::io::CheckpointError&) {
    require(weights(net) == before);
  }
  return 0;
}
