// Determinism: the same seed and thread count give bit-identical losses and weights over two runs
// of a short training (shuffled batches, dropout, Adam), as vgg-train's resume guarantee needs.
// Results may differ between thread counts: see docs/CHECKPOINTS.md, "Determinism".
#include <doctest/doctest.h>

#include <vgg/data/batcher.hpp>
#include <vgg/vgg.hpp>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace {
using Net = vgg::vgg11<vgg::Input<1, 32, 32>, 10, 16>;

vgg::data::Dataset synthetic(std::size_t n) {
  vgg::data::Dataset data;
  data.images.count = n;
  data.images.rows = data.images.cols = 28;
  data.images.pixels.resize(n * 784);
  vgg::Rng rng(42);
  for (auto& p : data.images.pixels) p = std::uint8_t(rng.below(256));
  for (std::size_t i = 0; i < n; ++i) data.labels.push_back(std::uint8_t(i % 10));
  return data;
}

struct Outcome {
  std::vector<double> losses;
  std::vector<float> weights;
};

Outcome train(const vgg::data::Dataset& data, std::uint64_t seed, int threads) {
  auto net = std::make_unique<Net>(seed);
  net->set_threads(threads);
  vgg::Adam adam({.lr = 1e-3f});
  vgg::data::Batcher batches(data, {.batch_size = 6, .output_size = 32, .seed = seed, .shuffle = true});
  Outcome out;
  for (std::uint64_t epoch = 0; epoch < 2; ++epoch) {
    batches.start_epoch(epoch);
    while (auto b = batches.next())
      out.losses.push_back(vgg::train_step(*net, adam, std::span<const float>(b->images), b->labels).loss);
  }
  net->for_each_parameter(
      [&](const vgg::ParameterView& p) { out.weights.insert(out.weights.end(), p.value.begin(), p.value.end()); });
  return out;
}

bool bit_identical(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}
}  // namespace

TEST_CASE("the same seed and thread count give bit-identical losses and weights") {
  const auto data = synthetic(24);
  Outcome one_thread, two_threads;
  for (int threads : {1, 2}) {
    const auto a = train(data, 5, threads);
    const auto b = train(data, 5, threads);
    REQUIRE(a.losses.size() == 8);
    CHECK(a.losses == b.losses);  // exact double equality, step by step
    CHECK(bit_identical(a.weights, b.weights));
    (threads == 1 ? one_thread : two_threads) = a;
  }
  // Reported, not asserted: across thread counts, results may differ in the last bits.
  const std::string first = one_thread.losses[0] == two_threads.losses[0] ? "equal" : "differs";
  const std::string losses = one_thread.losses == two_threads.losses ? "equal" : "differ";
  const std::string weights = bit_identical(one_thread.weights, two_threads.weights) ? "bit-identical" : "differ";
  MESSAGE("1 vs 2 threads: first loss " << first << ", all losses " << losses << ", weights " << weights);
  // The test can fail: another seed changes the initialisation, the order and the masks.
  const auto other_seed = train(data, 6, 2);
  CHECK(other_seed.losses != two_threads.losses);
  CHECK_FALSE(bit_identical(other_seed.weights, two_threads.weights));
}
