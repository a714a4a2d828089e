// Forward throughput of each of the five VGG-11 blocks at its real input size (224x224 input),
// width divisors 1 and 8, batch 8. Counters: images/s and GFLOP/s (useful FLOPs of direct
// convolution: 2 * Cout * Cin * 9 * H * W per image and conv, plus the pool's comparisons).
//
//   ./build/benchmarks/bench_blocks --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <vgg/vgg.hpp>

#include <memory>
#include <utility>
#include <vector>

namespace {

constexpr int kBatch = 8;

/// Runs the layers of block `Group` of `Net` on their own buffers.
template <class Net, int Group>
void block_forward(benchmark::State& state) {
  auto net = std::make_unique<Net>(1);
  constexpr auto indices = [] {
    std::array<std::size_t, Net::num_layers> idx{};
    std::size_t n = 0;
    for (std::size_t i = 0; i < Net::num_layers; ++i)
      if (Net::layer_place(i).group == Group) idx[n++] = i;
    return std::pair{idx, n};
  }();
  constexpr std::size_t first = indices.first[0], count = indices.second;
  const vgg::Shape in = std::tuple_element_t<first, typename Net::layer_types>::input_shape;
  const vgg::Shape out = Net::block_output_shape(Group);

  double flops = 0;
  std::vector<vgg::Buffer<float>> buffers(count + 1);
  buffers[0].reserve(kBatch * in.size());
  std::fill(buffers[0].data(), buffers[0].data() + kBatch * in.size(), 0.5f);
  const vgg::RunContext ctx{vgg::Mode::eval, vgg::cpu::default_threads(), 1, 0, 0};
  [&]<std::size_t... K>(std::index_sequence<K...>) {
    ((flops += std::tuple_element_t<first + K, typename Net::layer_types>::flops_per_sample,
      net->template layer<first + K>().reserve(kBatch, ctx.threads),
      buffers[K + 1].reserve(kBatch * std::tuple_element_t<first + K, typename Net::layer_types>::output_shape.size())),
     ...);
  }(std::make_index_sequence<count>{});

  for (auto _ : state) {
    [&]<std::size_t... K>(std::index_sequence<K...>) {
      (net->template layer<first + K>().forward(buffers[K].data(), buffers[K + 1].data(), kBatch, ctx), ...);
    }(std::make_index_sequence<count>{});
    benchmark::DoNotOptimize(buffers[count].data());
    benchmark::ClobberMemory();
  }
  state.counters["images/s"] = benchmark::Counter(double(kBatch), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops * kBatch * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel("in " + std::to_string(in.c) + "x" + std::to_string(in.h) + "x" + std::to_string(in.w) + " -> " +
                 std::to_string(out.c) + "x" + std::to_string(out.h) + "x" + std::to_string(out.w));
}

using Wide = vgg::vgg11<vgg::Input<1, 224, 224>, 10, 1>;
using Narrow = vgg::vgg11<vgg::Input<1, 224, 224>, 10, 8>;

}  // namespace

BENCHMARK(block_forward<Wide, 0>)->Name("vgg11_w1/block1")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(block_forward<Wide, 1>)->Name("vgg11_w1/block2")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(block_forward<Wide, 2>)->Name("vgg11_w1/block3")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(block_forward<Wide, 3>)->Name("vgg11_w1/block4")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(block_forward<Wide, 4>)->Name("vgg11_w1/block5")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(block_forward<Narrow, 0>)->Name("vgg11_w8/block1")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(block_forward<Narrow, 1>)->Name("vgg11_w8/block2")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(block_forward<Narrow, 2>)->Name("vgg11_w8/block3")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(block_forward<Narrow, 3>)->Name("vgg11_w8/block4")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(block_forward<Narrow, 4>)->Name("vgg11_w8/block5")->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
