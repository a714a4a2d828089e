// Forward and backward throughput of each of the five VGG-11 blocks at its real input size
// (224x224 input), width divisors 1 and 8, batch 8, run as the network runs them (the pool that
// ends a block computed inside the conv before it); and of each of the eight conv layers of the
// width-1 net alone (conv + bias + ReLU, no pool). Counters: images/s, GFLOP/s (useful FLOPs of
// direct convolution: 2 * Cout * Cin * 9 * H * W per image and conv; backward counts the weight
// gradient and, except for the network's first layer, the input gradient, each as much as the
// forward), and %peak, the fraction of the FMA peak probed at start-up on as many threads.
//
//   build/benchmarks/bench_blocks --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <vgg/vgg.hpp>

#include <cstdio>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "machine_context.hpp"
#include "peak.hpp"

namespace {

constexpr int kBatch = 8;
double g_peak_gflops = 0;

/// images/s, GFLOP/s and %peak of the probed FMA peak, for kBatch images and `flops` per iteration.
void set_counters(benchmark::State& state, double flops, const std::string& label) {
  state.counters["images/s"] = benchmark::Counter(double(kBatch), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["%peak"] =
      benchmark::Counter(100.0 * flops * 1e-9 / g_peak_gflops, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(label);
}

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
  typename Net::Context exec;  // the backend's context, default threads, as the network's
  vgg::RunContext ctx{vgg::Mode::train, 1, 0, 0};
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
    // The block's output gradient, set once: a block ends in a pool that runs inside its last conv,
    // whose backward leaves the pooled gradient as it is (a fill per iteration would be timed too).
    static_assert(pool_inside_previous<count - 1>(), "a VGG block ends in a 2x2 max-pool fused into its last conv");
    const std::size_t out = kBatch * layer_t<count - 1>::output_shape.size();
    std::fill(grads[count].data(), grads[count].data() + out, 1e-3f);
    forward();
  }
  /// Layer K of the block is a pool that layer K - 1 runs inside its own passes (as Vgg does).
  template <std::size_t K>
  static constexpr bool pool_inside_previous() {
    if constexpr (K == 0 || K >= count) {
      return false;
    } else {
      return vgg::pool_runs_inside<layer_t<K - 1>, layer_t<K>>;
    }
  }
  template <std::size_t K>
  void reserve() {
    using L = layer_t<K>;
    auto& layer = net->template layer<first + K>();
    if constexpr (pool_inside_previous<K + 1>()) {
      layer.reserve(exec, kBatch, /*pooled=*/true);
      layer.reserve_backward(exec, kBatch, /*pooled=*/true);
    } else {
      layer.reserve(exec, kBatch);
      layer.reserve_backward(exec, kBatch);
    }
    acts[K + 1].reserve(kBatch * L::output_shape.size());
    grads[K + 1].reserve(kBatch * L::output_shape.size());
    forward_flops += L::flops_per_sample * kBatch;
    const bool needs_input_grad = first + K > 0;
    backward_flops += (L::num_params > 0 ? (needs_input_grad ? 2.0 : 1.0) : 1.0) * L::flops_per_sample * kBatch;
  }
  void forward() {
    [&]<std::size_t... K>(std::index_sequence<K...>) {
      (forward_layer<K>(), ...);
    }(std::make_index_sequence<count>{});
  }
  template <std::size_t K>
  void forward_layer() {
    auto& layer = net->template layer<first + K>();
    if constexpr (pool_inside_previous<K>()) {
      // done by layer K - 1
    } else if constexpr (pool_inside_previous<K + 1>()) {
      layer.forward_pooled(exec, acts[K].data(), acts[K + 2].data(), kBatch, ctx);
    } else {
      layer.forward(exec, acts[K].data(), acts[K + 1].data(), kBatch, ctx);
    }
  }
  void backward() {
    [&]<std::size_t... K>(std::index_sequence<K...>) {
      (backward_layer<count - 1 - K>(), ...);
    }(std::make_index_sequence<count>{});
  }
  template <std::size_t K>
  void backward_layer() {
    float* dx = (first + K == 0) ? nullptr : grads[K].data();
    auto& layer = net->template layer<first + K>();
    if constexpr (pool_inside_previous<K>()) {
      // differentiated by layer K - 1 from the pooled gradient
    } else if constexpr (pool_inside_previous<K + 1>()) {
      layer.backward_pooled(exec, acts[K].data(), grads[K + 2].data(), dx, kBatch, ctx);
    } else {
      layer.backward(exec, acts[K].data(), acts[K + 1].data(), grads[K + 1].data(), dx, kBatch, ctx);
    }
  }
  void report(benchmark::State& state, double flops) const {
    const vgg::Shape in = layer_t<0>::input_shape, out = Net::block_output_shape(Group);
    set_counters(state, flops,
                 std::to_string(in.c) + "x" + std::to_string(in.h) + "x" + std::to_string(in.w) + " -> " +
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

/// One conv + bias + ReLU layer alone, through the kernels the layer calls; with `pool`, the 2x2
/// max-pool that follows it in the network runs fused in, as the network runs it.
struct ConvRig {
  vgg::cpu::Conv3x3Geometry g;
  bool input_gradient, pool;
  int threads = vgg::cpu::default_threads();
  vgg::cpu::Conv3x3Workspace ws;
  vgg::cpu::PoolState<vgg::cpu::fastest_path> state;
  vgg::Buffer<float> x, w, b, y, dy, dx, dw, db, pooled, dpooled;
  ConvRig(vgg::cpu::Conv3x3Geometry geometry, bool needs_dx, bool with_pool)
      : g(geometry), input_gradient(needs_dx), pool(with_pool) {
    ws.reserve_backward(g, threads, pool);
    if (pool) state.reserve(g, kBatch);
    const std::size_t in = std::size_t(kBatch) * g.cin * g.plane(), out = std::size_t(kBatch) * g.cout * g.plane();
    const std::size_t weights = std::size_t(g.cout) * std::size_t(g.depth());
    const std::size_t pooled_size = std::size_t(kBatch) * g.cout * (g.h / 2) * (g.w / 2);
    for (auto [buffer, size] : {std::pair{&x, in}, {&dx, in}, {&y, out}, {&dy, out}, {&w, weights}, {&dw, weights},
                                {&b, std::size_t(g.cout)}, {&db, std::size_t(g.cout)}, {&pooled, pooled_size},
                                {&dpooled, pooled_size}})
      buffer->reserve(size);
    vgg::Rng rng(3);
    for (std::size_t i = 0; i < in; ++i) x.data()[i] = rng.uniform(0.0f, 1.0f);
    for (std::size_t i = 0; i < weights; ++i) w.data()[i] = rng.uniform(-0.05f, 0.05f);
    for (std::size_t i = 0; i < pooled_size; ++i) dpooled.data()[i] = rng.uniform(-1e-3f, 1e-3f);
    for (int i = 0; i < g.cout; ++i) b.data()[i] = 0.01f;
    forward();
  }
  double flops() const { return 2.0 * kBatch * g.cout * double(g.depth()) * g.plane(); }
  void forward() {
    if (pool)
      vgg::cpu::conv3x3_relu_pool_forward(x.data(), w.data(), b.data(), pooled.data(), state, kBatch, g, ws, threads);
    else
      vgg::cpu::conv3x3_relu_forward(x.data(), w.data(), b.data(), y.data(), kBatch, g, ws, threads);
  }
  void backward() {
    float* input_grad = input_gradient ? dx.data() : nullptr;
    if (pool) {  // the pooled gradient is left as it is
      vgg::cpu::conv3x3_relu_pool_backward(x.data(), w.data(), state, dpooled.data(), input_grad, dw.data(), db.data(),
                                           kBatch, g, ws, threads);
      return;
    }
    std::fill(dy.data(), dy.data() + std::size_t(kBatch) * g.cout * g.plane(), 1e-3f);  // overwritten in place
    vgg::cpu::conv3x3_relu_backward(x.data(), w.data(), y.data(), dy.data(), input_grad, dw.data(), db.data(), kBatch,
                                    g, ws, threads);
  }
  void report(benchmark::State& state, double total) const {
    set_counters(state, total,
                 std::to_string(g.cin) + "->" + std::to_string(g.cout) + " at " + std::to_string(g.h) + "x" +
                     std::to_string(g.w) + (pool ? " + pool" : ""));
  }
};

void conv_forward(benchmark::State& state, vgg::cpu::Conv3x3Geometry g, bool needs_dx, bool pool) {
  ConvRig rig(g, needs_dx, pool);
  for (auto _ : state) {
    rig.forward();
    benchmark::ClobberMemory();
  }
  rig.report(state, rig.flops());
}

void conv_backward(benchmark::State& state, vgg::cpu::Conv3x3Geometry g, bool needs_dx, bool pool) {
  ConvRig rig(g, needs_dx, pool);
  for (auto _ : state) {
    rig.backward();
    benchmark::ClobberMemory();
  }
  rig.report(state, rig.flops() * (needs_dx ? 2.0 : 1.0));
}

/// The eight conv layers of full-width VGG-11 on 1x224x224: (C_in, C_out, H = W), each as the
/// network runs it: conv1, 2, 4, 6 and 8 end a block, so their pool runs fused in (the figures
/// count the conv's FLOPs only).
void register_wide_convs() {
  constexpr int layers[8][3] = {{1, 64, 224},   {64, 128, 112}, {128, 256, 56}, {256, 256, 56},
                                {256, 512, 28}, {512, 512, 28}, {512, 512, 14}, {512, 512, 14}};
  constexpr bool ends_block[8] = {true, true, false, true, false, true, false, true};
  for (int i = 0; i < 8; ++i) {
    const vgg::cpu::Conv3x3Geometry g{layers[i][0], layers[i][1], layers[i][2], layers[i][2]};
    const std::string name = "vgg11_w1/conv" + std::to_string(i + 1);
    benchmark::RegisterBenchmark((name + "/forward").c_str(), conv_forward, g, i > 0, ends_block[i])
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    benchmark::RegisterBenchmark((name + "/backward").c_str(), conv_backward, g, i > 0, ends_block[i])
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
}

/// Streaming write bandwidth on the same threads (a memset of 256 MiB, pre-touched, split across
/// threads): the ceiling of layers that write more bytes than they do FLOPs, like conv1.
void write_bandwidth(benchmark::State& state) {
  const std::size_t bytes = std::size_t(256) << 20;
  vgg::Buffer<char> buffer(bytes);
  std::memset(buffer.data(), 1, bytes);
  const int threads = vgg::cpu::default_threads();
  int value = 0;
  for (auto _ : state) {
    value = (value + 1) & 0x7f;
#pragma omp parallel num_threads(threads)
    {
      const vgg::cpu::Range mine = vgg::cpu::split(std::ptrdiff_t(bytes), omp_get_thread_num(), omp_get_num_threads());
      std::memset(buffer.data() + mine.begin, value, std::size_t(mine.end - mine.begin));
    }
    benchmark::ClobberMemory();
  }
  state.counters["GB/s"] = benchmark::Counter(double(bytes) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
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
  benchmark::RegisterBenchmark("write_bandwidth", write_bandwidth)->Unit(benchmark::kMillisecond)->UseRealTime();
  register_all<Wide>("vgg11_w1", std::make_integer_sequence<int, 5>{});
  register_all<Narrow>("vgg11_w8", std::make_integer_sequence<int, 5>{});
  register_wide_convs();
  bench::add_machine_context();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
