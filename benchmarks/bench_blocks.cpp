// Forward and backward throughput of each of the five VGG-11 blocks at its real input size
// (224x224 input), width divisors 1 and 8, batch 8. Counters: images/s, GFLOP/s (useful FLOPs of
// direct convolution: 2 * Cout * Cin * 9 * H * W per image and conv; backward counts the weight
// gradient and, except for the network's first layer, the input gradient, each as much as the
// forward), and %peak, the fraction of the FMA peak probed at start-up on as many threads.
//
//   build/benchmarks/bench_blocks --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <vgg/vgg.hpp>

#include <cstdio>
#include <memory>
#include <utility>
#include <vector>

#include "peak.hpp"

namespace {

constexpr int kBatch = 8;
double g_peak_gflops = 0;

/// The layers of block `Group` of `Net`, with their own activation and gradient buffers.
template <class Net, int Group>
struct BlockRig {
  static constexpr auto span = [] {
    std::size_t first = Net::num_layers, count = 0;
    for (std::size_t i = 0; i < Net::num_layers; ++i)
      if (Net::layer_place(i).group == Group) {
        if (first == Net::num_layers) first = i;
        ++count;
      }
    return std::pair{first, count};
  }();
  static constexpr std::size_t first = span.first, count = span.second;
  template <std::size_t K>
  using layer_t = std::tuple_element_t<first + K, typename Net::layer_types>;

  std::unique_ptr<Net> net = std::make_unique<Net>(1);
  std::vector<vgg::Buffer<float>> acts = std::vector<vgg::Buffer<float>>(count + 1);
  std::vector<vgg::Buffer<float>> grads = std::vector<vgg::Buffer<float>>(count + 1);
  vgg::RunContext ctx{vgg::Mode::train, vgg::cpu::default_threads(), 1, 0, 0};
  double forward_flops = 0, backward_flops = 0;

  BlockRig() {
    [&]<std::size_t... K>(std::index_sequence<K...>) {
      ((reserve<K>()), ...);
    }(std::make_index_sequence<count>{});
    const std::size_t in = kBatch * layer_t<0>::input_shape.size();
    acts[0].reserve(in);
    grads[0].reserve(in);
    vgg::Rng rng(2);
    for (std::size_t i = 0; i < in; ++i) acts[0].data()[i] = rng.uniform(0.0f, 1.0f);
    forward();
  }
  template <std::size_t K>
  void reserve() {
    using L = layer_t<K>;
    auto& layer = net->template layer<first + K>();
    layer.reserve(kBatch, ctx.threads);
    layer.reserve_backward(kBatch, ctx.threads);
    acts[K + 1].reserve(kBatch * L::output_shape.size());
    grads[K + 1].reserve(kBatch * L::output_shape.size());
    forward_flops += L::flops_per_sample * kBatch;
    const bool needs_input_grad = first + K > 0;
    backward_flops += (L::num_params > 0 ? (needs_input_grad ? 2.0 : 1.0) : 1.0) * L::flops_per_sample * kBatch;
  }
  void forward() {
    [&]<std::size_t... K>(std::index_sequence<K...>) {
      (net->template layer<first + K>().forward(acts[K].data(), acts[K + 1].data(), kBatch, ctx), ...);
    }(std::make_index_sequence<count>{});
  }
  void backward() {
    const std::size_t out = kBatch * layer_t<count - 1>::output_shape.size();
    std::fill(grads[count].data(), grads[count].data() + out, 1e-3f);  // dy is overwritten in place
    [&]<std::size_t... K>(std::index_sequence<K...>) {
      (backward_layer<count - 1 - K>(), ...);
    }(std::make_index_sequence<count>{});
  }
  template <std::size_t K>
  void backward_layer() {
    float* dx = (first + K == 0) ? nullptr : grads[K].data();
    net->template layer<first + K>().backward(acts[K].data(), acts[K + 1].data(), grads[K + 1].data(), dx, kBatch,
                                              ctx);
  }
  void report(benchmark::State& state, double flops) const {
    const vgg::Shape in = layer_t<0>::input_shape, out = Net::block_output_shape(Group);
    state.counters["images/s"] = benchmark::Counter(double(kBatch), benchmark::Counter::kIsIterationInvariantRate);
    state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["%peak"] =
        benchmark::Counter(100.0 * flops * 1e-9 / g_peak_gflops, benchmark::Counter::kIsIterationInvariantRate);
    state.SetLabel(std::to_string(in.c) + "x" + std::to_string(in.h) + "x" + std::to_string(in.w) + " -> " +
                   std::to_string(out.c) + "x" + std::to_string(out.h) + "x" + std::to_string(out.w));
  }
};

template <class Net, int Group>
void block_forward(benchmark::State& state) {
  BlockRig<Net, Group> rig;
  for (auto _ : state) {
    rig.forward();
    benchmark::ClobberMemory();
  }
  rig.report(state, rig.forward_flops);
}

template <class Net, int Group>
void block_backward(benchmark::State& state) {
  BlockRig<Net, Group> rig;
  for (auto _ : state) {
    rig.backward();
    benchmark::ClobberMemory();
  }
  rig.report(state, rig.backward_flops);
}

using Wide = vgg::vgg11<vgg::Input<1, 224, 224>, 10, 1>;
using Narrow = vgg::vgg11<vgg::Input<1, 224, 224>, 10, 8>;

template <class Net, int... G>
void register_all(const char* width, std::integer_sequence<int, G...>) {
  ((benchmark::RegisterBenchmark((std::string(width) + "/block" + std::to_string(G + 1) + "/forward").c_str(),
                                 block_forward<Net, G>)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime(),
    benchmark::RegisterBenchmark((std::string(width) + "/block" + std::to_string(G + 1) + "/backward").c_str(),
                                 block_backward<Net, G>)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()),
   ...);
}

void fma_peak(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(bench::fma_peak_gflops(vgg::cpu::default_threads()));
  state.counters["GFLOP/s"] = g_peak_gflops;
}

}  // namespace

int main(int argc, char** argv) {
  g_peak_gflops = bench::fma_peak_gflops(vgg::cpu::default_threads());
  std::printf("FMA peak on %d threads: %.1f GFLOP/s\n", vgg::cpu::default_threads(), g_peak_gflops);
  benchmark::RegisterBenchmark("fma_peak", fma_peak)->Iterations(1)->Unit(benchmark::kMillisecond);
  register_all<Wide>("vgg11_w1", std::make_integer_sequence<int, 5>{});
  register_all<Narrow>("vgg11_w8", std::make_integer_sequence<int, 5>{});
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
