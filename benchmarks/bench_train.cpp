// Whole-network throughput: training step (forward, loss, backward, Adam) and eval forward of the
// chapter's width / 8 VGG-11 at 224x224, batch 64 (the recipe), plus full-width forward at batch 8.
//
//   ./build/benchmarks/bench_train --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <vgg/vgg.hpp>

#include <memory>
#include <vector>

#include "machine_context.hpp"

namespace {

using Narrow = vgg::vgg11<vgg::Input<1, 224, 224>, 10, 8>;
using Wide = vgg::vgg11<vgg::Input<1, 224, 224>, 10, 1>;
using Half = vgg::vgg11<vgg::Input<1, 224, 224>, 10, 2>;
using Quarter = vgg::vgg11<vgg::Input<1, 224, 224>, 10, 4>;

long minor_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

std::vector<float> batch_data(int n) {
  std::vector<float> x(std::size_t(n) * 224 * 224);
  vgg::Rng rng(1);
  for (float& v : x) v = rng.uniform(0.0f, 1.0f);
  return x;
}

/// Puts the net's products in precision P; false (and the benchmark skipped) where that cannot run.
template <vgg::Precision P, class Net>
bool set_precision(benchmark::State& state, Net& net) {
  net.context().set_precision(P);
  if (net.context().precision_in_use() == P) return true;
  state.SkipWithError(net.context().precision_note().c_str());
  return false;
}

/// With Winograd false, every conv layer on the direct path (Context::set_winograd).
template <class Net, vgg::Precision P = vgg::Precision::fp32, bool Winograd = true>
void train_step(benchmark::State& state) {
  const int n = int(state.range(0));
  auto net = std::make_unique<Net>(1);
  if (!set_precision<P>(state, *net)) return;
  if constexpr (requires { net->context().set_winograd(Winograd); }) net->context().set_winograd(Winograd);
  vgg::Adam adam;
  const auto x = batch_data(n);
  std::vector<std::int32_t> labels(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) labels[std::size_t(i)] = i % 10;
  vgg::train_step(*net, adam, x, labels);  // warm-up: buffers are allocated here
  const long faults = minor_faults();
  for (auto _ : state) benchmark::DoNotOptimize(vgg::train_step(*net, adam, x, labels).loss);
  state.counters["images/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
  // forward + backward ~ 3x the forward FLOPs
  state.counters["GFLOP/s"] =
      benchmark::Counter(3.0 * Net::flops_per_sample * n * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["faults/step"] = double(minor_faults() - faults) / double(state.iterations());
}

/// With Winograd false, every conv layer on the direct path (Context::set_winograd), to measure what
/// the backend's Winograd rule gives.
template <class Net, vgg::Precision P = vgg::Precision::fp32, bool Winograd = true>
void eval_forward(benchmark::State& state) {
  const int n = int(state.range(0));
  auto net = std::make_unique<Net>(1);
  if (!set_precision<P>(state, *net)) return;
  if constexpr (requires { net->context().set_winograd(Winograd); }) net->context().set_winograd(Winograd);
  const auto x = batch_data(n);
  (void)net->forward(x, n);
  const long faults = minor_faults();
  for (auto _ : state) benchmark::DoNotOptimize(net->forward(x, n).data());
  state.counters["images/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] =
      benchmark::Counter(Net::flops_per_sample * n * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["faults/step"] = double(minor_faults() - faults) / double(state.iterations());
}

/// A fresh network's first training step: allocation and first touch of every buffer (what huge
/// pages and allocate-once buffers are about), then the step itself.
void first_step(benchmark::State& state) {
  const int n = int(state.range(0));
  const auto x = batch_data(n);
  std::vector<std::int32_t> labels(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) labels[std::size_t(i)] = i % 10;
  long faults = 0;
  for (auto _ : state) {
    const long before = minor_faults();
    auto net = std::make_unique<Narrow>(1);
    vgg::Adam adam;
    benchmark::DoNotOptimize(vgg::train_step(*net, adam, x, labels).loss);
    faults += minor_faults() - before;
  }
  state.counters["faults/step"] = double(faults) / double(state.iterations());
}

}  // namespace

// The recipe's sizes first (compare_pytorch.py reads these three); then how cost grows with the
// batch size and the width (filter with --benchmark_filter=scaling; plot_scaling.py plots them).
BENCHMARK(train_step<Narrow>)->Name("vgg11_w8/train_step")->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(eval_forward<Narrow>)->Name("vgg11_w8/eval_forward")->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();
// The same with every conv on the direct path: what Winograd gives the recipe's net.
BENCHMARK(train_step<Narrow, vgg::Precision::fp32, false>)->Name("direct/vgg11_w8/train_step")->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(eval_forward<Narrow, vgg::Precision::fp32, false>)->Name("direct/vgg11_w8/eval_forward")->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(eval_forward<Wide>)->Name("vgg11_w1/eval_forward")->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(eval_forward<Wide, vgg::Precision::fp32, false>)->Name("direct/vgg11_w1/eval_forward")->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();
// bf16 mixed precision (where the CPU has AVX512-BF16; skipped elsewhere), beside the fp32 rows.
BENCHMARK(train_step<Narrow, vgg::Precision::bf16>)->Name("bf16/vgg11_w8/train_step")->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(eval_forward<Narrow, vgg::Precision::bf16>)->Name("bf16/vgg11_w8/eval_forward")->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(eval_forward<Wide, vgg::Precision::bf16>)->Name("bf16/vgg11_w1/eval_forward")->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();
// bf16 with every conv direct (Winograd off): what bf16 mode ran before its Winograd had bf16 GEMMs.
BENCHMARK(train_step<Narrow, vgg::Precision::bf16, false>)->Name("direct/bf16/vgg11_w8/train_step")->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(eval_forward<Narrow, vgg::Precision::bf16, false>)->Name("direct/bf16/vgg11_w8/eval_forward")->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(eval_forward<Wide, vgg::Precision::bf16, false>)->Name("direct/bf16/vgg11_w1/eval_forward")->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(train_step<Narrow>)->Name("scaling/vgg11_w8/train_step")->Arg(8)->Arg(16)->Arg(32)->Arg(128)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(eval_forward<Narrow>)->Name("scaling/vgg11_w8/eval_forward")->Arg(1)->Arg(8)->Arg(16)->Arg(32)->Arg(128)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(eval_forward<Wide>)->Name("scaling/vgg11_w1/eval_forward")->Arg(1)->Arg(2)->Arg(4)->Unit(benchmark::kMillisecond)->UseRealTime();
// Width: every divisor at batch 8 (the width-8 figures come from the batch series above).
BENCHMARK(train_step<Quarter>)->Name("scaling/vgg11_w4/train_step")->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(train_step<Half>)->Name("scaling/vgg11_w2/train_step")->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(train_step<Wide>)->Name("scaling/vgg11_w1/train_step")->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(train_step<Wide, vgg::Precision::fp32, false>)->Name("direct/vgg11_w1/train_step")->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(eval_forward<Quarter>)->Name("scaling/vgg11_w4/eval_forward")->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(eval_forward<Half>)->Name("scaling/vgg11_w2/eval_forward")->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(first_step)->Name("setup/vgg11_w8/first_step")->Arg(64)->Iterations(3)->Unit(benchmark::kMillisecond)->UseRealTime();

int main(int argc, char** argv) {
  bench::add_machine_context();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
