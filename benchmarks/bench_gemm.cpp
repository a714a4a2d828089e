// Single-threaded GEMM on the shapes the layers use (the layers run one GEMM per thread): the
// AVX-512 kernel that vgg::cpu::gemm takes where it is built, against the plain path (Eigen 3.4's
// packed kernels, driven as gemm_eigen drives them), and the bf16 kernel (gemm_bf16.hpp) where the
// CPU has AVX512-BF16, registered beside each fp32 shape. Counter: GFLOP/s (2 m n k per product).
// Also full-width VGG-11's first classifier layer (25088 -> 4096) at 1-16 images, on 2 threads as
// the layer runs: the few-row kernel (W read row by row) against the GEMM, fp32 and bf16; counter
// GB/s of W read.
//
//   build/benchmarks/bench_gemm --benchmark_counters_tabular=true
//   build/benchmarks/bench_gemm --benchmark_filter=linear/
#include <benchmark/benchmark.h>

#include <vgg/cpu/gemm_amx.hpp>
#include <vgg/cpu/gemm_bf16.hpp>
#include <vgg/vgg.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "machine_context.hpp"

namespace {

struct Shape {
  const char* name;
  long m, n, k;
  bool trans_a, trans_b;
};

// The products of width/8 VGG-11 at 224x224 with 512 KiB bands, one of each kind per block size.
constexpr Shape kShapes[] = {
    {"forward/w8_block1", 8, 4032, 9, false, false},
    {"forward/w8_block2", 16, 1792, 72, false, false},
    {"forward/w8_block3_conv2", 32, 448, 288, false, false},
    {"forward/w8_block4_conv2", 64, 252, 576, false, false},
    {"forward/w8_block5", 64, 196, 576, false, false},
    {"forward/w1_conv6", 512, 252, 4608, false, false},
    {"input_grad/w8_block3_conv2", 288, 448, 32, true, false},
    {"input_grad/w8_block4_conv2", 576, 252, 64, true, false},
    {"weight_grad/w8_block2", 16, 72, 1792, false, true},
    {"weight_grad/w8_block3_conv2", 32, 288, 448, false, true},
    {"weight_grad/w8_block5", 64, 576, 196, false, true},
};

template <bool TransA, bool TransB, bool Plain>
void run(benchmark::State& state, Shape s) {
  const long lda = TransA ? s.m : s.k, ldb = TransB ? s.k : s.n;
  std::vector<float> a(std::size_t(s.m * s.k)), b(std::size_t(s.k * s.n)), c(std::size_t(s.m * s.n));
  vgg::Rng rng(5);
  for (float& v : a) v = rng.uniform(-1.0f, 1.0f);
  for (float& v : b) v = rng.uniform(-1.0f, 1.0f);
  vgg::cpu::GemmPlan plan;
  plan.reserve(s.m, s.n, s.k);
  for (auto _ : state) {
    if constexpr (Plain)
      vgg::cpu::gemm_eigen<TransA, TransB>(s.m, s.n, s.k, a.data(), lda, b.data(), ldb, c.data(), s.n, plan);
    else
      vgg::cpu::gemm<TransA, TransB>(s.m, s.n, s.k, a.data(), lda, b.data(), ldb, c.data(), s.n, plan);
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2e-9 * double(s.m) * double(s.n) * double(s.k), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(std::to_string(s.m) + "x" + std::to_string(s.n) + "x" + std::to_string(s.k));
}

#ifdef VGG_BF16_KERNELS
/// The same products with bf16 operands (rounded as packed) and fp32 sums: on the vdpbf16ps kernel,
/// or (Amx) on AMX tiles, gemm_amx.hpp's kernel, registered where amx_ready().
template <bool TransA, bool TransB, bool Amx = false>
void run_bf16(benchmark::State& state, Shape s) {
  namespace bf16 = vgg::cpu::bf16;
  const long lda = TransA ? s.m : s.k, ldb = TransB ? s.k : s.n;
  std::vector<float> a(std::size_t(s.m * s.k)), b(std::size_t(s.k * s.n)), c(std::size_t(s.m * s.n));
  vgg::Rng rng(5);
  for (float& v : a) v = rng.uniform(-1.0f, 1.0f);
  for (float& v : b) v = rng.uniform(-1.0f, 1.0f);
  namespace amx = vgg::cpu::amx;
  vgg::Buffer<std::uint32_t> a_pack(std::size_t(amx::bf16_a_pack_size(s.m))),
      b_pack(std::size_t(amx::bf16_b_pack_size()));
  const vgg::cpu::avx512::Epilogue plain{1.0f, false, nullptr, false};
  for (auto _ : state) {
    if constexpr (Amx) {
#ifdef VGG_AMX_KERNELS
      amx::HardwareTiles tiles;
      amx::gemm_on<TransA, TransB>(tiles, s.m, s.n, s.k, a.data(), lda, b.data(), ldb, c.data(), s.n, a_pack.data(),
                                   b_pack.data(), reinterpret_cast<float*>(b_pack.data() + bf16::packed_b_size()),
                                   plain);
#endif
    } else {
      bf16::gemm<TransA, TransB>(s.m, s.n, s.k, a.data(), lda, b.data(), ldb, c.data(), s.n, a_pack.data(),
                                 b_pack.data(), plain);
    }
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2e-9 * double(s.m) * double(s.n) * double(s.k), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(std::to_string(s.m) + "x" + std::to_string(s.n) + "x" + std::to_string(s.k));
}

/// The bf16 8 x 32 kernel alone on packed, cache-hot data, as kernel_only for fp32.
void kernel_only_bf16(benchmark::State& state) {
  namespace bf16 = vgg::cpu::bf16;
  constexpr long m = 64, n = 1024, k = bf16::kKc, pairs = k / 2;
  vgg::Buffer<std::uint32_t> a(std::size_t(m * pairs)), b(std::size_t(pairs * n));
  vgg::Buffer<float> c(std::size_t(m * n));
  for (long i = 0; i < m * pairs; ++i) a.data()[i] = bf16::pair(0.5f, -0.25f);
  for (long i = 0; i < pairs * n; ++i) b.data()[i] = bf16::pair(0.125f, 1.0f);
  const vgg::cpu::avx512::Epilogue e{};
  for (auto _ : state) {
    for (long j0 = 0; j0 < n; j0 += bf16::kNr)
      for (long i0 = 0; i0 < m; i0 += bf16::kMr)
        bf16::kernel_8x32(pairs, a.data() + i0 * pairs, b.data() + j0 * pairs, c.data() + i0 * n + j0, n, bf16::kMr,
                          bf16::kNr, e);
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2e-9 * m * n * k, benchmark::Counter::kIsIterationInvariantRate);
}

void register_bf16() {
  if (!vgg::cpu::bf16::bf16_gemm_available()) return;
  benchmark::RegisterBenchmark("kernel_8x32/packed/bf16", kernel_only_bf16);
  for (const Shape& s : kShapes) {
    const std::string name = std::string(s.name) + "/bf16";
    if (!s.trans_a && !s.trans_b) benchmark::RegisterBenchmark(name.c_str(), run_bf16<false, false>, s);
    if (s.trans_a && !s.trans_b) benchmark::RegisterBenchmark(name.c_str(), run_bf16<true, false>, s);
    if (!s.trans_a && s.trans_b) benchmark::RegisterBenchmark(name.c_str(), run_bf16<false, true>, s);
  }
  if (!vgg::cpu::amx::amx_ready()) return;
  for (const Shape& s : kShapes) {
    const std::string name = std::string(s.name) + "/amx";
    if (!s.trans_a && !s.trans_b) benchmark::RegisterBenchmark(name.c_str(), run_bf16<false, false, true>, s);
    if (s.trans_a && !s.trans_b) benchmark::RegisterBenchmark(name.c_str(), run_bf16<true, false, true>, s);
    if (!s.trans_a && s.trans_b) benchmark::RegisterBenchmark(name.c_str(), run_bf16<false, true, true>, s);
  }
}
#endif

template <bool Plain>
void register_path(const char* path) {
  for (const Shape& s : kShapes) {
    const std::string name = std::string(s.name) + "/" + path;
    if (!s.trans_a && !s.trans_b) benchmark::RegisterBenchmark(name.c_str(), run<false, false, Plain>, s);
    if (s.trans_a && !s.trans_b) benchmark::RegisterBenchmark(name.c_str(), run<true, false, Plain>, s);
    if (!s.trans_a && s.trans_b) benchmark::RegisterBenchmark(name.c_str(), run<false, true, Plain>, s);
  }
}

#ifdef VGG_FAST_KERNELS
/// The 8 x 32 kernel alone on data already packed and hot in L1/L2 (64 x 256 of A, 256 x 1024 of
/// B): what it does when nothing else costs, against one core's FMA peak (~260 GFLOP/s here).
void kernel_only(benchmark::State& state) {
  using namespace vgg::cpu::avx512;
  constexpr long m = 64, n = 1024, k = kKc;
  vgg::Buffer<float> a(std::size_t(m * k)), b(std::size_t(k * n)), c(std::size_t(m * n));
  vgg::Rng rng(6);
  for (long i = 0; i < m * k; ++i) a.data()[i] = rng.uniform(-1.0f, 1.0f);
  for (long i = 0; i < k * n; ++i) b.data()[i] = rng.uniform(-1.0f, 1.0f);
  const Epilogue e{};
  for (auto _ : state) {
    for (long j0 = 0; j0 < n; j0 += kNr)  // B panel j0 packed as [k][32]
      for (long i0 = 0; i0 < m; i0 += kMr)
        kernel_8x32<ALayout::interleaved>(k, a.data() + i0 * k, kMr, b.data() + j0 * k, kNr, c.data() + i0 * n + j0,
                                          n, kMr, kNr, e);
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2e-9 * m * n * k, benchmark::Counter::kIsIterationInvariantRate);
}
#endif

/// linear_forward of full-width VGG-11's first classifier layer for range(0) images, range(1) 1:
/// bf16 mode; label few_rows or gemm (LinearWorkspace::few_rows_max 0).
void linear_layer(benchmark::State& state, bool few_rows) {
  constexpr int in = 25088, out = 4096, threads = 2;
  const int n = int(state.range(0));
  const bool bf16 = state.range(1) != 0;
  vgg::Buffer<float> x(std::size_t(n) * in), w(std::size_t(out) * in), b(out), y(std::size_t(n) * out);
  vgg::Rng rng(8);
  for (long i = 0; i < long(n) * in; ++i) x.data()[i] = rng.uniform(-1.0f, 1.0f);
  for (long i = 0; i < long(out) * in; ++i) w.data()[i] = rng.uniform(-0.01f, 0.01f);
  for (int i = 0; i < out; ++i) b.data()[i] = 0.0f;
  vgg::cpu::LinearWorkspace ws;
  ws.reserve(n, in, out, threads);
  ws.set_bf16(bf16);
  ws.few_rows_max = few_rows ? vgg::cpu::few_rows::kMaxRows : 0;
  for (auto _ : state) {
    vgg::cpu::linear_forward(x.data(), w.data(), b.data(), y.data(), n, in, out, true, ws, threads);
    benchmark::ClobberMemory();
  }
  state.counters["GB/s"] = benchmark::Counter(4e-9 * double(in) * out, benchmark::Counter::kIsIterationInvariantRate);
}

void register_linear() {
  if (!vgg::cpu::kFastKernels) return;
  for (const bool bf16 : {false, true}) {
    if (bf16 && !vgg::cpu::bf16::bf16_gemm_available()) continue;
    const std::string precision = bf16 ? "bf16" : "fp32";
    for (const int n : {1, 4, 8, 16}) {
      if (n <= vgg::cpu::few_rows::kMaxRows)
        benchmark::RegisterBenchmark(("linear/fc1/" + precision + "/few_rows").c_str(), linear_layer, true)
            ->Args({n, bf16})
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
      benchmark::RegisterBenchmark(("linear/fc1/" + precision + "/gemm").c_str(), linear_layer, false)
          ->Args({n, bf16})
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_linear();
#ifdef VGG_FAST_KERNELS
  benchmark::RegisterBenchmark("kernel_8x32/packed", kernel_only);
#endif
  register_path<false>(vgg::cpu::kFastKernels ? "avx512" : "default (plain: no AVX-512 target)");
  register_path<true>("eigen");
#ifdef VGG_BF16_KERNELS
  register_bf16();
#endif
  bench::add_machine_context();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
