// Winograd F(2x2, 3x3) (cpu/winograd.hpp) against the direct path (im2col + GEMM, cpu/conv3x3.hpp),
// forward with bias and ReLU, on the wide layers of full-width VGG-11 at batch 8 and the width/8
// recipe net's layers at batch 64, 2 threads (rows named w8_*).
// GFLOP/s counts the direct convolution's FLOPs for both (2 * 9 * cin * cout * h * w per image),
// so that the two rows of a layer compare by time. The Winograd filter transform is outside the
// timed loop (eval keeps it; training pays it once per step: the "filter" rows).
//   build/benchmarks/bench_winograd --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <vgg/cpu/conv3x3.hpp>
#include <vgg/cpu/winograd.hpp>

#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

constexpr int kThreads = 2;
struct Layer {
  const char* name;
  int cin, cout, hw;
  bool pooled;  // followed by a 2x2 max-pool in VGG-11
  int batch;
};
// Full-width VGG-11 at batch 8 (conv2 and conv3, narrower, were added to place the threshold of
// cpu::Backend's Winograd rule), then the width/8 recipe net's layers at its batch of 64.
constexpr Layer kLayers[] = {{"conv2_64-128_112", 64, 128, 112, true, 8},   {"conv3_128-256_56", 128, 256, 56, false, 8},
                             {"conv4_256-256_56", 256, 256, 56, true, 8},   {"conv5_256-512_28", 256, 512, 28, false, 8},
                             {"conv6_512-512_28", 512, 512, 28, true, 8},   {"conv7_512-512_14", 512, 512, 14, false, 8},
                             {"conv8_512-512_14", 512, 512, 14, true, 8},   {"w8_conv2_8-16_112", 8, 16, 112, true, 64},
                             {"w8_conv3_16-32_56", 16, 32, 56, false, 64},  {"w8_conv4_32-32_56", 32, 32, 56, true, 64},
                             {"w8_conv5_32-64_28", 32, 64, 28, false, 64},  {"w8_conv6_64-64_28", 64, 64, 28, true, 64},
                             {"w8_conv7_64-64_14", 64, 64, 14, false, 64},  {"w8_conv8_64-64_14", 64, 64, 14, true, 64}};

std::vector<float> random_vector(std::size_t n, unsigned seed, float scale) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (float& e : v) e = dist(gen);
  return v;
}

void set_counters(benchmark::State& state, const Layer& l) {
  const double flops = 2.0 * 9 * l.cin * l.cout * double(l.hw) * l.hw * l.batch;
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_direct(benchmark::State& state) {
  const Layer& l = kLayers[state.range(0)];
  const vgg::cpu::Conv3x3Geometry g{l.cin, l.cout, l.hw, l.hw};
  vgg::cpu::Conv3x3Workspace ws;
  ws.reserve(g, kThreads);
  ws.set_bf16(state.range(1) != 0);
  const auto x = random_vector(std::size_t(l.batch) * l.cin * l.hw * l.hw, 1, 1.0f);
  const auto w = random_vector(std::size_t(l.cout) * l.cin * 9, 2, 0.05f);
  const auto b = random_vector(std::size_t(l.cout), 3, 0.1f);
  std::vector<float> y(std::size_t(l.batch) * l.cout * l.hw * l.hw);
  for (auto _ : state) {
    vgg::cpu::conv3x3_relu_forward(x.data(), w.data(), b.data(), y.data(), l.batch, g, ws, kThreads);
    benchmark::DoNotOptimize(y.data());
  }
  set_counters(state, l);
  state.counters["chunk"] = 0;  // every row has the same counters (the CSV reporter requires it)
}

/// Where bf16 (range(2) for the forward, range(1) for the input gradient), bf16 mode's Winograd:
/// the filter's bf16 copy, the GEMMs on bf16 operands.
void use_bf16(vgg::cpu::WinogradFilter<>& u, vgg::cpu::WinogradWorkspace& ws, bool bf16) {
  if (!bf16) return;
#if defined(VGG_FAST_KERNELS) && defined(VGG_BF16_KERNELS)
  vgg::cpu::winograd_filter_to_bf16(u, kThreads);
  ws.bf16 = true;
#endif
}

/// range(1): tiles per chunk (0: from the L2 size).
void BM_winograd(benchmark::State& state) {
  const Layer& l = kLayers[state.range(0)];
  const vgg::cpu::WinogradGeometry g{l.cin, l.cout, l.hw, l.hw, long(state.range(1))};
  vgg::cpu::WinogradFilter<> u;
  u.reserve(l.cin, l.cout);
  vgg::cpu::WinogradWorkspace ws;
  ws.reserve(g, kThreads);
  const auto x = random_vector(std::size_t(l.batch) * l.cin * l.hw * l.hw, 1, 1.0f);
  const auto w = random_vector(std::size_t(l.cout) * l.cin * 9, 2, 0.05f);
  const auto b = random_vector(std::size_t(l.cout), 3, 0.1f);
  std::vector<float> y(std::size_t(l.batch) * l.cout * l.hw * l.hw);
  vgg::cpu::winograd_transform_filter(w.data(), u, kThreads);
  use_bf16(u, ws, state.range(2) != 0);
  for (auto _ : state) {
    vgg::cpu::winograd_conv3x3_forward(x.data(), u, b.data(), y.data(), l.batch, g, ws, kThreads, true);
    benchmark::DoNotOptimize(y.data());
  }
  set_counters(state, l);
  state.counters["chunk"] = double(g.max_chunk());
}

/// Conv + ReLU + 2x2 max-pool, as the net runs its pooled layers (conv4, conv6, conv8): the direct
/// path's fused pool (winner masks kept for a backward pass) against Winograd's (the pool taken per
/// output tile; nothing kept: eval only).
void BM_direct_pooled(benchmark::State& state) {
  const Layer& l = kLayers[state.range(0)];
  const vgg::cpu::Conv3x3Geometry g{l.cin, l.cout, l.hw, l.hw};
  vgg::cpu::Conv3x3Workspace ws;
  ws.reserve(g, kThreads);
  vgg::cpu::PoolState<vgg::cpu::fastest_path> pool_state;
  pool_state.reserve(g, l.batch);
  const auto x = random_vector(std::size_t(l.batch) * l.cin * l.hw * l.hw, 1, 1.0f);
  const auto w = random_vector(std::size_t(l.cout) * l.cin * 9, 2, 0.05f);
  const auto b = random_vector(std::size_t(l.cout), 3, 0.1f);
  std::vector<float> pooled(std::size_t(l.batch) * l.cout * (l.hw / 2) * (l.hw / 2));
  for (auto _ : state) {
    vgg::cpu::conv3x3_relu_pool_forward(x.data(), w.data(), b.data(), pooled.data(), pool_state, l.batch, g, ws,
                                        kThreads);
    benchmark::DoNotOptimize(pooled.data());
  }
  set_counters(state, l);
  state.counters["chunk"] = 0;
}

/// Train: the pool's winner masks written as well (for the direct fused backward), as in training.
template <bool Train>
void BM_winograd_pooled(benchmark::State& state) {
  const Layer& l = kLayers[state.range(0)];
  const vgg::cpu::WinogradGeometry g{l.cin, l.cout, l.hw, l.hw};
  vgg::cpu::WinogradFilter<> u;
  u.reserve(l.cin, l.cout);
  vgg::cpu::WinogradWorkspace ws;
  ws.reserve(g, kThreads);
  vgg::cpu::PoolState<vgg::cpu::fastest_path> pool_state;
  if (Train) pool_state.reserve(vgg::cpu::Conv3x3Geometry{l.cin, l.cout, l.hw, l.hw}, l.batch);
  const auto x = random_vector(std::size_t(l.batch) * l.cin * l.hw * l.hw, 1, 1.0f);
  const auto w = random_vector(std::size_t(l.cout) * l.cin * 9, 2, 0.05f);
  const auto b = random_vector(std::size_t(l.cout), 3, 0.1f);
  std::vector<float> pooled(std::size_t(l.batch) * l.cout * (l.hw / 2) * (l.hw / 2));
  vgg::cpu::winograd_transform_filter(w.data(), u, kThreads);
  for (auto _ : state) {
    vgg::cpu::winograd_conv3x3_forward(x.data(), u, b.data(), nullptr, l.batch, g, ws, kThreads, true, pooled.data(),
                                       Train ? pool_state.winners() : nullptr);
    benchmark::DoNotOptimize(pooled.data());
  }
  set_counters(state, l);
  state.counters["chunk"] = double(g.max_chunk());
}

/// A pooled layer's backward from its winner masks: range(1) = 0, the direct fused backward without
/// dx; 1, with dx (the difference is what dx costs there); 2, the whole dz rebuilt and left in a
/// buffer with the direct weight and bias gradients, then dx by Winograd from it (filter transform
/// outside the loop; cpu::Backend's way where its weight gradient stays direct); 3, dz rebuilt from
/// the winners, then the weight, bias and input gradients by Winograd (its fp32 way elsewhere).
void BM_pooled_backward(benchmark::State& state) {
  const Layer& l = kLayers[state.range(0)];
  const vgg::cpu::Conv3x3Geometry g{l.cin, l.cout, l.hw, l.hw};
  const vgg::cpu::WinogradGeometry wg{l.cin, l.cout, l.hw, l.hw};
  vgg::cpu::Conv3x3Workspace ws;
  ws.reserve_backward(g, kThreads, /*pooled=*/true);
  vgg::cpu::PoolState<vgg::cpu::fastest_path> pool_state;
  pool_state.reserve(g, l.batch);
  vgg::cpu::WinogradFilter<> u;
  u.reserve(l.cout, l.cin);
  vgg::cpu::WinogradWorkspace wws;
  wws.reserve(vgg::cpu::winograd_input_grad_geometry(wg), kThreads);
  wws.reserve_weight_grad(wg, kThreads);
  const auto x = random_vector(std::size_t(l.batch) * l.cin * l.hw * l.hw, 1, 1.0f);
  const auto w = random_vector(std::size_t(l.cout) * l.cin * 9, 2, 0.05f);
  const auto b = random_vector(std::size_t(l.cout), 3, 0.1f);
  const std::size_t pooled_size = std::size_t(l.batch) * l.cout * (l.hw / 2) * (l.hw / 2);
  std::vector<float> pooled(pooled_size), dz(std::size_t(l.batch) * l.cout * l.hw * l.hw);
  const auto dy = random_vector(pooled_size, 4, 1.0f);
  std::vector<float> dx(x.size()), dw(w.size()), db(static_cast<std::size_t>(l.cout));
  vgg::cpu::conv3x3_relu_pool_forward(x.data(), w.data(), b.data(), pooled.data(), pool_state, l.batch, g, ws, kThreads);
  vgg::cpu::winograd_transform_filter_input_grad(w.data(), u, kThreads);
  const long mode = state.range(1);
  for (auto _ : state) {
    if (mode < 2) {
      vgg::cpu::conv3x3_relu_pool_backward(x.data(), w.data(), pool_state, dy.data(), mode ? dx.data() : nullptr,
                                           dw.data(), db.data(), l.batch, g, ws, kThreads);
    } else if (mode == 2) {
      vgg::cpu::conv3x3_relu_pool_backward_dz(x.data(), w.data(), pool_state, dy.data(), dz.data(), dw.data(),
                                              db.data(), l.batch, g, ws, kThreads);
      vgg::cpu::winograd_conv3x3_input_grad(dz.data(), u, dx.data(), l.batch, wg, wws, kThreads);
    } else {  // every gradient by Winograd (the network's fp32 path): dz from the winners first
#ifdef VGG_FAST_KERNELS  // (winner masks: the AVX-512 path's pool state; mode 3 is registered there only)
      vgg::cpu::conv3x3_relu_pool_unpool(pool_state, dy.data(), dz.data(), l.batch, g, kThreads);
      vgg::cpu::winograd_conv3x3_weight_grad(x.data(), nullptr, dz.data(), dw.data(), db.data(), l.batch, wg, wws,
                                             kThreads);
      vgg::cpu::winograd_conv3x3_input_grad(dz.data(), u, dx.data(), l.batch, wg, wws, kThreads);
#endif
    }
    benchmark::DoNotOptimize(dw.data());
  }
  set_counters(state, l);
  state.counters["chunk"] = 0;
}

/// Input gradient: the direct backward with dx (range(1) = 1) and without (0), whose difference is
/// what dx costs there (its GEMM and col2im; the weight gradient's GEMM shares the im2col), against
/// Winograd's input gradient (filter transform outside the loop).
void BM_direct_backward(benchmark::State& state) {
  const Layer& l = kLayers[state.range(0)];
  const vgg::cpu::Conv3x3Geometry g{l.cin, l.cout, l.hw, l.hw};
  vgg::cpu::Conv3x3Workspace ws;
  ws.reserve_backward(g, kThreads);
  ws.set_bf16(state.range(2) != 0);
  const auto x = random_vector(std::size_t(l.batch) * l.cin * l.hw * l.hw, 1, 1.0f);
  const auto w = random_vector(std::size_t(l.cout) * l.cin * 9, 2, 0.05f);
  auto dz = random_vector(std::size_t(l.batch) * l.cout * l.hw * l.hw, 4, 1.0f);
  std::vector<float> dx(x.size()), dw(w.size()), db(static_cast<std::size_t>(l.cout));
  for (auto _ : state) {
    vgg::cpu::conv3x3_backward(x.data(), w.data(), dz.data(), state.range(1) ? dx.data() : nullptr, dw.data(),
                               db.data(), l.batch, g, ws, kThreads);
    benchmark::DoNotOptimize(dw.data());
  }
  set_counters(state, l);
  state.counters["chunk"] = 0;
}

void BM_winograd_input_grad(benchmark::State& state) {
  const Layer& l = kLayers[state.range(0)];
  const vgg::cpu::WinogradGeometry g{l.cin, l.cout, l.hw, l.hw};
  vgg::cpu::WinogradFilter<> u;
  u.reserve(l.cout, l.cin);
  vgg::cpu::WinogradWorkspace ws;
  ws.reserve(vgg::cpu::winograd_input_grad_geometry(g), kThreads);
  const auto w = random_vector(std::size_t(l.cout) * l.cin * 9, 2, 0.05f);
  const auto dz = random_vector(std::size_t(l.batch) * l.cout * l.hw * l.hw, 4, 1.0f);
  std::vector<float> dx(std::size_t(l.batch) * l.cin * l.hw * l.hw);
  vgg::cpu::winograd_transform_filter_input_grad(w.data(), u, kThreads);
  use_bf16(u, ws, state.range(1) != 0);
  for (auto _ : state) {
    vgg::cpu::winograd_conv3x3_input_grad(dz.data(), u, dx.data(), l.batch, g, ws, kThreads);
    benchmark::DoNotOptimize(dx.data());
  }
  set_counters(state, l);
  state.counters["chunk"] = double(vgg::cpu::winograd_input_grad_geometry(g).max_chunk());
}

void BM_winograd_filter(benchmark::State& state) {
  const Layer& l = kLayers[state.range(0)];
  vgg::cpu::WinogradFilter<> u;
  u.reserve(l.cin, l.cout);
  const auto w = random_vector(std::size_t(l.cout) * l.cin * 9, 2, 0.05f);
  for (auto _ : state) {
    vgg::cpu::winograd_transform_filter(w.data(), u, kThreads);
#if defined(VGG_FAST_KERNELS) && defined(VGG_BF16_KERNELS)
    if (state.range(1)) vgg::cpu::winograd_filter_to_bf16(u, kThreads);  // bf16 mode: its bf16 copy too
#endif
    benchmark::DoNotOptimize(u.data());
  }
}

/// What the layers pay per eval forward to know the cached filter is current: the weights compared
/// with the copy it was made from (cpu::Backend's ConvWorkspace::winograd_filter).
void BM_weights_compare(benchmark::State& state) {
  const Layer& l = kLayers[state.range(0)];
  const auto w = random_vector(std::size_t(l.cout) * l.cin * 9, 2, 0.05f);
  const std::vector<float> copy = w;
  for (auto _ : state) {
    benchmark::DoNotOptimize(std::memcmp(w.data(), copy.data(), w.size() * sizeof(float)));
  }
}

void register_all() {
  for (int i = 0; i < int(std::size(kLayers)); ++i) {
    const std::string name = kLayers[i].name;
    benchmark::RegisterBenchmark(("direct/" + name).c_str(), BM_direct)->Args({i, 0})->Unit(benchmark::kMillisecond)->UseRealTime();
    for (int chunk : {0, 32, 64, 128, 256})
      benchmark::RegisterBenchmark(("winograd/" + name).c_str(), BM_winograd)
          ->Args({i, chunk, 0})
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    if (kLayers[i].pooled) {
      benchmark::RegisterBenchmark(("direct_pooled/" + name).c_str(), BM_direct_pooled)
          ->Arg(i)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
      benchmark::RegisterBenchmark(("winograd_pooled/" + name).c_str(), BM_winograd_pooled<false>)
          ->Arg(i)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
      benchmark::RegisterBenchmark(("winograd_pooled_train/" + name).c_str(), BM_winograd_pooled<true>)
          ->Arg(i)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
      for (int mode : {0, 1, 2, 3})
        if (mode < 3 || vgg::cpu::kFastKernels)
          benchmark::RegisterBenchmark(("pooled_backward/" + name).c_str(), BM_pooled_backward)
              ->Args({i, mode})
              ->Unit(benchmark::kMillisecond)
              ->UseRealTime();
    }
    for (int with_dx : {0, 1})
      benchmark::RegisterBenchmark(("direct_backward/" + name).c_str(), BM_direct_backward)
          ->Args({i, with_dx, 0})
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    benchmark::RegisterBenchmark(("winograd_input_grad/" + name).c_str(), BM_winograd_input_grad)
        ->Args({i, 0})
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    // bf16 mode's rows (AVX512-BF16 CPUs): the direct path and Winograd, each with bf16 GEMMs.
    if (vgg::cpu::bf16::bf16_gemm_available()) {
      benchmark::RegisterBenchmark(("bf16_direct/" + name).c_str(), BM_direct)->Args({i, 1})->Unit(benchmark::kMillisecond)->UseRealTime();
      benchmark::RegisterBenchmark(("bf16_winograd/" + name).c_str(), BM_winograd)
          ->Args({i, 0, 1})
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
      benchmark::RegisterBenchmark(("bf16_winograd_input_grad/" + name).c_str(), BM_winograd_input_grad)
          ->Args({i, 1})
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
      benchmark::RegisterBenchmark(("bf16_winograd_filter/" + name).c_str(), BM_winograd_filter)
          ->Args({i, 1})
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
      for (int with_dx : {0, 1})
        benchmark::RegisterBenchmark(("bf16_direct_backward/" + name).c_str(), BM_direct_backward)
            ->Args({i, with_dx, 1})
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
    }
    benchmark::RegisterBenchmark(("winograd_filter/" + name).c_str(), BM_winograd_filter)
        ->Args({i, 0})
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    benchmark::RegisterBenchmark(("weights_compare/" + name).c_str(), BM_weights_compare)
        ->Arg(i)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
