// Eval forward of full-width VGG-16 and VGG-16-BN as torchvision builds them (3x224x224 input, 1000
// classes, classifier 25088-4096-4096-1000), at batch 1 and 8: the figures a torchvision user moving
// to C++ asks about first. compare_pytorch.py --torchvision runs them beside torchvision's own models.
// The chapter-layout presets are used: at 224x224 torchvision's AdaptiveAvgPool2d((7, 7)) is the
// identity, so the arithmetic is the same. Batch norm is folded into the convolutions in eval.
//
//   ./build/benchmarks/bench_torchvision --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <vgg/vgg.hpp>

#include <memory>
#include <vector>

#include "machine_context.hpp"

namespace {

using Vgg16 = vgg::vgg16<vgg::Input<3, 224, 224>, 1000>;
using Vgg16Bn = vgg::vgg16_bn<vgg::Input<3, 224, 224>, 1000>;

template <class Net>
void eval_forward(benchmark::State& state) {
  const int n = int(state.range(0));
  auto net = std::make_unique<Net>(1);
  std::vector<float> x(std::size_t(n) * Net::input_shape.size());
  vgg::Rng rng(1);
  for (float& v : x) v = rng.uniform(-2.0f, 2.0f);  // about the range of ImageNet-normalised pixels
  (void)net->forward(x, n);  // warm-up: buffers are allocated (and batch norm folded) here
  for (auto _ : state) benchmark::DoNotOptimize(net->forward(x, n).data());
  state.counters["images/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] =
      benchmark::Counter(Net::flops_per_sample * n * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

BENCHMARK(eval_forward<Vgg16>)->Name("tv/vgg16_b1/eval_forward")->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(eval_forward<Vgg16>)->Name("tv/vgg16_b8/eval_forward")->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(eval_forward<Vgg16Bn>)->Name("tv/vgg16_bn_b1/eval_forward")->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(eval_forward<Vgg16Bn>)->Name("tv/vgg16_bn_b8/eval_forward")->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();

int main(int argc, char** argv) {
  bench::add_machine_context();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
