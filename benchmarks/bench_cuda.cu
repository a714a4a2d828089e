// The CUDA backend's throughput on VGG-11 (1 x 224 x 224 input, 10 classes), full width and width/8,
// batch 64 and 8: the forward pass (with each block's share, from CUDA events recorded between
// layers) and the backward pass (every gradient, the input's excepted), timed on the device; and a
// whole Adam training step in wall-clock time, with each batch given directly (a pageable copy on
// the compute stream) or staged one step ahead (pinned, uploaded on the copy stream while the step
// before computes), as vgg-train runs it.
//
//   build/benchmarks/bench_cuda --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <vgg/cuda.hpp>

#include <array>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace {

template <int Divisor>
using Net = vgg::vgg11<vgg::Input<1, 224, 224>, 10, Divisor>::template on<vgg::cuda::Backend>;

/// CUDA events on the network's stream, created once.
struct Events {
  std::array<cudaEvent_t, 8> e{};
  Events() {
    for (auto& x : e) VGG_CUDA_CHECK(cudaEventCreate(&x));
  }
  ~Events() {
    for (auto& x : e) (void)cudaEventDestroy(x);
  }
  static float ms(cudaEvent_t a, cudaEvent_t b) {
    float t = 0;
    VGG_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    return t;
  }
};

template <int Divisor>
struct Rig {
  using N = Net<Divisor>;
  std::unique_ptr<N> net = std::make_unique<N>(1);
  std::vector<float> x;
  std::vector<std::int32_t> labels;
  int batch;
  explicit Rig(int n) : batch(n) {
    vgg::Rng rng(2);
    x.resize(std::size_t(n) * N::input_shape.size());
    for (float& v : x) v = rng.uniform(0.0f, 1.0f);
    for (int i = 0; i < n; ++i) labels.push_back(i % 10);
    net->train();
    (void)net->forward(x, batch);  // allocation, cuDNN plans
    (void)net->loss(labels);
    net->backward();
    net->context().synchronize();
  }
};

void set_counters(benchmark::State& state, int batch, double flops) {
  state.counters["images/s"] = benchmark::Counter(double(batch), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["TFLOP/s"] = benchmark::Counter(flops * 1e-12, benchmark::Counter::kIsIterationInvariantRate);
}

template <int Divisor>
void BM_forward(benchmark::State& state) {
  Rig<Divisor> rig(int(state.range(0)));
  using N = typename Rig<Divisor>::N;
  Events ev;
  const cudaStream_t stream = rig.net->context().stream();
  std::array<double, N::num_blocks> block_ms{};
  for (auto _ : state) {
    VGG_CUDA_CHECK(cudaEventRecord(ev.e[0], stream));
    (void)rig.net->forward(rig.x, rig.batch, [&](std::size_t layer, int) {
      // The event after each block's last layer (its pool).
      const auto place = N::layer_place(layer);
      if (place.group < int(N::num_blocks) && (layer + 1 == N::num_layers || N::layer_place(layer + 1).group != place.group))
        VGG_CUDA_CHECK(cudaEventRecord(ev.e[std::size_t(place.group) + 1], stream));
    });  // ends with the logits' copy to the host: the whole pass is timed, head and copy included
    VGG_CUDA_CHECK(cudaEventRecord(ev.e[N::num_blocks + 1], stream));
    VGG_CUDA_CHECK(cudaEventSynchronize(ev.e[N::num_blocks + 1]));
    state.SetIterationTime(Events::ms(ev.e[0], ev.e[N::num_blocks + 1]) * 1e-3);
    for (std::size_t b = 0; b < N::num_blocks; ++b) block_ms[b] += Events::ms(ev.e[b], ev.e[b + 1]);
  }
  for (std::size_t b = 0; b < N::num_blocks; ++b)
    state.counters["block" + std::to_string(b + 1) + " ms"] = block_ms[b] / double(state.iterations());
  set_counters(state, rig.batch, N::flops_per_sample * rig.batch);
}

template <int Divisor>
void BM_backward(benchmark::State& state) {
  Rig<Divisor> rig(int(state.range(0)));
  using N = typename Rig<Divisor>::N;
  Events ev;
  const cudaStream_t stream = rig.net->context().stream();
  for (auto _ : state) {
    VGG_CUDA_CHECK(cudaEventRecord(ev.e[0], stream));
    rig.net->backward();  // repeatable: it reads the saved forward pass
    VGG_CUDA_CHECK(cudaEventRecord(ev.e[1], stream));
    VGG_CUDA_CHECK(cudaEventSynchronize(ev.e[1]));
    state.SetIterationTime(Events::ms(ev.e[0], ev.e[1]) * 1e-3);
  }
  // Weight gradients and input gradients (all but the first layer's): about twice the forward.
  set_counters(state, rig.batch, 2.0 * N::flops_per_sample * rig.batch);
}

/// state.range(1): 0 = batches given to train_step directly, 1 = staged one step ahead.
template <int Divisor>
void BM_train_step(benchmark::State& state) {
  Rig<Divisor> rig(int(state.range(0)));
  using N = typename Rig<Divisor>::N;
  const bool staged = state.range(1) != 0;
  vgg::Adam<vgg::cuda::Backend> adam({.lr = 1e-4f});
  std::array<std::vector<float>, 2> batches{rig.x, rig.x};
  for (float& v : batches[1]) v = 1.0f - v;
  vgg::StagedBatch next = rig.net->stage(batches[0], rig.labels);
  (void)vgg::train_step(*rig.net, adam, next);  // the optimizer's state, the staging slots
  next = rig.net->stage(batches[1], rig.labels);
  rig.net->context().synchronize();
  std::size_t k = 0;
  for (auto _ : state) {
    if (staged) {
      const vgg::StagedBatch current = next;
      (void)vgg::train_step(*rig.net, adam, current);
      next = rig.net->stage(batches[++k % 2], rig.labels);
    } else {
      (void)vgg::train_step(*rig.net, adam, batches[++k % 2], rig.labels);
    }
    rig.net->context().synchronize();
  }
  set_counters(state, rig.batch, 3.0 * N::flops_per_sample * rig.batch);
}

}  // namespace

BENCHMARK(BM_train_step<1>)->Args({64, 0})->Args({64, 1})->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_train_step<8>)->Args({64, 0})->Args({64, 1})->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_forward<1>)->Arg(64)->Arg(8)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_backward<1>)->Arg(64)->Arg(8)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_forward<8>)->Arg(64)->Arg(8)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_backward<8>)->Arg(64)->Arg(8)->UseManualTime()->Unit(benchmark::kMillisecond);

int main(int argc, char** argv) {
  if (const std::string problem = vgg::cuda::device_problem(); !problem.empty()) {
    std::fprintf(stderr, "bench_cuda: %s\n", problem.c_str());
    return 1;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
