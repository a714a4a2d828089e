// Eval forward of torchvision's full-width VGG-16 and VGG-16-BN (vgg::torchvision::vgg16<>,
// vgg16_bn<>: 3 x 224 x 224, 1000 classes) at batch 1 and 8: the rows compare_pytorch.py
// --torchvision sets beside torchvision's own in PyTorch's fastest eval set-ups.
//
//   ./build/benchmarks/bench_torchvision --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <vgg/vgg.hpp>

#include <memory>
#include <vector>

#include "machine_context.hpp"

namespace {

template <class Net>
void eval_forward(benchmark::State& state) {
  const int n = int(state.range(0));
  auto net = std::make_unique<Net>(1);
  net->eval();
  std::vector<float> x(std::size_t(n) * Net::input_shape.size());
  vgg::Rng rng(1);
  for (float& v : x) v = rng.uniform(0.0f, 1.0f);
  (void)net->forward(x, n);  // warm-up: buffers are allocated (and batch norm folded) here
  for (auto _ : state) benchmark::DoNotOptimize(net->forward(x, n).data());
  state.counters["images/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] =
      benchmark::Counter(Net::flops_per_sample * n * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

using Vgg16 = vgg::torchvision::vgg16<>;
using Vgg16Bn = vgg::torchvision::vgg16_bn<>;

}  // namespace

// Names end in the batch so that compare_pytorch.py's keys (the two name parts before the
// argument) tell the rows apart.
BENCHMARK(eval_forward<Vgg16>)->Name("tv/vgg16/eval_forward_b1")->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(eval_forward<Vgg16>)->Name("tv/vgg16/eval_forward_b8")->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(eval_forward<Vgg16Bn>)->Name("tv/vgg16_bn/eval_forward_b1")->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(eval_forward<Vgg16Bn>)->Name("tv/vgg16_bn/eval_forward_b8")->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();

int main(int argc, char** argv) {
  bench::add_machine_context();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
